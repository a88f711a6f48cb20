"""transformers PyTorch references for the parity tests: random-init models, their tensors and logits, and
our model loaded with the same weights. Every function here needs the torch extra (skips without it)."""

from __future__ import annotations

import copy

import jax.numpy as jnp
import numpy as np
import pytest

from ftcot_jax import models


def torch_model(hf_config: dict, seed: int = 0):
    """A random-init transformers PyTorch model (a causal LM, or a seq2seq LM for an encoder-decoder config) in
    fp32 eval mode (biases and norms randomized so they are tested)."""
    torch = pytest.importorskip("torch")
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.AutoConfig.for_model(**copy.deepcopy(hf_config))  # transformers edits rope dicts in place
    auto = transformers.AutoModelForSeq2SeqLM if cfg.is_encoder_decoder else transformers.AutoModelForCausalLM
    model = auto.from_config(cfg, attn_implementation="eager").float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def torch_tensors(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def torch_logits(model, ids, mask, dec=None, dmask=None):
    """Logits of a left-padded batch, positions counted from each row's first real token (as ours); an
    encoder-decoder also takes teacher-forced decoder ids `dec` and their mask `dmask`."""
    import torch

    with torch.no_grad():
        if dec is not None:
            out = model(
                input_ids=torch.tensor(ids),
                attention_mask=torch.tensor(mask),
                decoder_input_ids=torch.tensor(dec),
                decoder_attention_mask=torch.tensor(dmask),
            )
        else:
            pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
            out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos))
    return out.logits.float().numpy()


def ours_from_torch(tmodel, hf_config: dict, dtype=jnp.float32):
    """Our model of `hf_config` holding the torch model's weights."""
    ours = models.from_config(hf_config, seed=1, dtype=dtype)
    models.load_params_from_hf(ours, torch_tensors(tmodel))
    return ours
