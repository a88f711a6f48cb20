"""The "New model family" checklist of docs/architecture.md, kept honest: every family in the registry
(`models.FAMILIES`) keeps its facts in its own file, has a tiny config in tests/helpers/models.py, and matches
transformers PyTorch on it. Adding a family to the registry without them fails here."""

import inspect

import jax.numpy as jnp
import pytest

from ftcot_jax import models
from ftcot_jax.models import api
from tests.helpers.models import TINY, decoder_batch, forward, forward_seq2seq, max_diff_on_real, padded_batch
from tests.helpers.torch_parity import ours_from_torch, torch_logits, torch_model

FAMILIES = {f.name: f for f in models.FAMILIES}


def tiny_configs(family: api.Family) -> list[dict]:
    """The tests' tiny HF configs of a family's model types."""
    return [c for c in TINY.values() if c["model_type"] in family.hf_model_types]


def test_registry_lists_each_family_once_and_every_model_type():
    assert len(FAMILIES) == len(models.FAMILIES)
    assert sorted(models.REGISTRY) == sorted(mt for f in models.FAMILIES for mt in f.hf_model_types)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_facts_live_in_its_family_file(name):
    family = FAMILIES[name]
    home = inspect.getmodule(family.model_cls)
    assert home.FAMILY is family
    for fact in (family.config_cls, family.hf_names):
        assert inspect.getmodule(fact) is home, f"{name}: {fact.__qualname__} is not in {home.__name__}"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_has_a_tiny_config_whose_name_table_covers_the_model(name):
    family = FAMILIES[name]
    configs = tiny_configs(family)
    assert configs, f"tests/helpers/models.py TINY has no config of family {name} ({', '.join(family.hf_model_types)})"
    for hf_config in configs:
        model = models.from_config(hf_config)
        assert models.model_type_of(model) == hf_config["model_type"]
        assert set(models.params_to_hf(model))  # every param has an HF name (params_to_hf raises otherwise)


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_logits_match_transformers_on_its_tiny_config(name):
    hf_config = tiny_configs(FAMILIES[name])[0]
    tm = torch_model(hf_config)
    ours = ours_from_torch(tm, hf_config)
    ids, mask = padded_batch(hf_config["vocab_size"])
    if isinstance(ours, api.Seq2SeqLM):
        dec, dmask = decoder_batch(hf_config["vocab_size"], ours.config.decoder_start_token_id)
        ref, got, real = torch_logits(tm, ids, mask, dec, dmask), forward_seq2seq(ours, ids, mask, dec, dmask), dmask
    else:
        ref, got, real = torch_logits(tm, ids, mask), forward(ours, ids, mask), mask
    assert got.dtype == jnp.float32 and got.shape == ref.shape
    assert max_diff_on_real(got, ref, real) <= 1e-4
