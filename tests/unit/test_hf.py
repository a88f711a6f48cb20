"""HF import/export (models/hf.py): torch checkpoint -> ours -> save_hf -> torch loads it with the same logits;
errors; the `generate` and `export-hf` commands."""

import json

import numpy as np
import pytest

from ftcot_jax import models
from tests.helpers.models import TINY, TINY_GPT2, TINY_LLAMA, forward, max_diff_on_real, padded_batch
from tests.helpers.torch_parity import torch_logits


def tiny_tokenizer():
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tm
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "[UNK]": 3, "hello": 4, "world": 5}
    tok = Tokenizer(tm.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]"
    )


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_round_trip_hf_ours_hf(torch_pair, family, tmp_path):
    import transformers

    hf_config = TINY[family]
    tm, _ = torch_pair(family)
    tm.save_pretrained(tmp_path / "src")
    tiny_tokenizer().save_pretrained(tmp_path / "src")
    ours, tok = models.load(str(tmp_path / "src"))
    assert tok is not None and tok.convert_tokens_to_ids("world") == 5
    ids, mask = padded_batch(hf_config["vocab_size"], lengths=(9, 3))
    ref = torch_logits(tm, ids, mask)
    assert max_diff_on_real(forward(ours, ids, mask), ref, mask) <= 1e-4

    models.save_hf(ours, tok, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert type(back) is type(tm)
    assert max_diff_on_real(torch_logits(back, ids, mask), ref, mask) <= 1e-5
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "out").convert_tokens_to_ids("hello") == 4


def test_pytorch_bin_checkpoint_loads(torch_pair, tmp_path):
    import torch

    tm, _ = torch_pair("gpt2")
    tm.config.save_pretrained(tmp_path)
    torch.save(tm.state_dict(), tmp_path / "pytorch_model.bin")
    ours, tok = models.load(str(tmp_path))
    assert tok is None
    ids, mask = padded_batch(TINY_GPT2["vocab_size"])
    got = forward(ours, ids, mask)
    assert max_diff_on_real(got, torch_logits(tm, ids, mask), mask) <= 1e-4


def _write_dir(path, config, tensors):
    from safetensors.numpy import save_file

    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(path / "model.safetensors"))


def test_bad_checkpoints_name_the_problem(tmp_path):
    _write_dir(tmp_path / "bert", {"model_type": "bert"}, {"x": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match=r"model_type 'bert'.*gpt2.*llama.*qwen2"):
        models.load(str(tmp_path / "bert"))

    tensors = models.params_to_hf(models.from_config(TINY_LLAMA))
    missing = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}
    _write_dir(tmp_path / "missing", TINY_LLAMA, missing)
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        models.load(str(tmp_path / "missing"))

    shaped = dict(tensors, **{"model.norm.weight": np.ones(7, np.float32)})
    _write_dir(tmp_path / "shape", TINY_LLAMA, shaped)
    with pytest.raises(ValueError, match=r"model\.norm\.weight.*\(7,\).*\(48,\)"):
        models.load(str(tmp_path / "shape"))

    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.load_dir(tmp_path)


def test_cli_generate_and_export(torch_pair, tmp_path, capsys):
    from ftcot_jax.cli import main

    tm, _ = torch_pair("gpt2")
    tm.save_pretrained(tmp_path / "src")
    tiny_tokenizer().save_pretrained(tmp_path / "src")
    assert main(["generate", str(tmp_path / "src"), "hello world", "world", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("### ") == 2 and "tokens]" in out
    assert main(["export-hf", str(tmp_path / "src"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "tokenizer.json").is_file()
    assert main(["generate", str(tmp_path / "nope"), "x"]) == 2
