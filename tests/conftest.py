"""Test setup and the shared fixtures.

8 virtual CPU devices so sharded code paths run without accelerators. XLA_FLAGS must be set before jax is
imported anywhere, hence at the top of conftest; the fixtures import what they build lazily.
FTCOT_TEST_PLATFORM (default cpu) names the JAX platform the tests run on: `auto` leaves JAX_PLATFORMS to
JAX (the GPU where there is one; scripts/device_check.py runs its GPU tests so), another name sets it.

Shared objects (session-scoped, built once): the character tokenizer and its saved directory, the torch
parity pairs, the tiny random models the decode tests share, the train-step tests' encoded samples.
Tests must not modify them.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
_platform = os.environ.get("FTCOT_TEST_PLATFORM", "cpu")
if _platform != "auto":
    os.environ.setdefault("JAX_PLATFORMS", _platform)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("FTCOT_COMPILATION_CACHE", "off")  # tests compile afresh and write nothing under ~/.cache

import pytest  # noqa: E402


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items):
    for item in items:  # tests that use the torch parity pairs need the torch extra
        if "torch_pair" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.torch)


@pytest.fixture(scope="session")
def char_tokenizer():
    """THE test tokenizer: toy_tokenizers.char_tokenizer() (one token per character, 0 pad, 1 eos, 2 unk)."""
    from tests.helpers.toy_tokenizers import char_tokenizer

    return char_tokenizer()


@pytest.fixture(scope="session")
def char_tokenizer_dir(tmp_path_factory, char_tokenizer):
    """The char tokenizer saved with save_pretrained, for configs' `tokenizer` key."""
    path = tmp_path_factory.mktemp("char_tokenizer")
    char_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def torch_pair():
    """torch_pair(family) -> (random-init transformers model of models.TINY[family], our model with its
    weights), each built once per session; skips without torch."""
    from tests.helpers.models import TINY
    from tests.helpers.torch_parity import ours_from_torch, torch_model

    built = {}

    def get(family: str):
        if family not in built:
            tm = torch_model(TINY[family])
            built[family] = (tm, ours_from_torch(tm, TINY[family]))
        return built[family]

    return get


@pytest.fixture(scope="session")
def letter_gpt2():
    """A random 30-token GPT-2 (models.LETTER_GPT2, seed 0) for toy_tokenizers.LetterTokenizer."""
    from ftcot_jax import models
    from tests.helpers.models import LETTER_GPT2

    return models.from_config(LETTER_GPT2, seed=0)


@pytest.fixture(scope="session")
def tiny_t5():
    """A random models.TINY_T5 (seed 0)."""
    from ftcot_jax import models
    from tests.helpers.models import TINY_T5

    return models.from_config(TINY_T5, seed=0)


@pytest.fixture(scope="session")
def step_samples(char_tokenizer):
    """The train-step tests' data: 8 encoded ft_cot samples whose labels vary a lot in length, so that
    micro-batches carry different label-token counts."""
    import dataclasses

    from ftcot_jax.train import batches
    from tests.helpers.data import last_letter_samples

    samples = [
        s if i % 2 else dataclasses.replace(s, rationale=s.rationale[:4])
        for i, s in enumerate(last_letter_samples(8, seed=1, method="ft_cot"))
    ]
    return batches.encode_samples(samples, char_tokenizer, model_type="decoder", max_length=128)


@pytest.fixture(scope="session")
def gcs():
    """A GCS API server on 127.0.0.1 (tests/helpers/gcs.py) that this process's clients (gcsfs, tensorstore)
    talk to; `gcs.env` points subprocesses at it. Skips when gcp-storage-emulator or gcsfs is missing."""
    from tests.helpers import gcs as gcs_helper

    emulator = gcs_helper.start() if not gcs_helper.missing_packages() else None
    if emulator is None:
        pytest.skip(f"gs:// tests need {', '.join(gcs_helper.missing_packages())} (pip install -e '.[dev]')")
    old = gcs_helper.use(emulator)
    yield emulator
    gcs_helper.restore(old)
    emulator.stop()


@pytest.fixture
def gcs_dir(gcs, request):
    """A fresh gs:// prefix in the emulator's bucket for one test."""
    import uuid

    return f"gs://{gcs.bucket}/{request.node.name.replace('[', '_').replace(']', '')}-{uuid.uuid4().hex[:6]}"
