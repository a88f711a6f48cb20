"""Shared helpers of the trainer tests: a character-level tokenizer, tiny GPT-2 configs, synthetic samples."""

from __future__ import annotations

import string

import numpy as np

CHARS = string.ascii_lowercase + string.digits + " #->.,?:'\"\n" + string.ascii_uppercase


def char_tokenizer():
    """An HF fast tokenizer with one token per character (id 0 pad, 1 eos, 2 unk); no hub access needed."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def tiny_gpt2_config(vocab_size: int = 80, n_positions: int = 256, n_embd: int = 32, n_layer: int = 2,
                     n_head: int = 4) -> dict:
    return {"model_type": "gpt2", "vocab_size": vocab_size, "n_positions": n_positions, "n_embd": n_embd,
            "n_layer": n_layer, "n_head": n_head, "bos_token_id": 1, "eos_token_id": 1, "pad_token_id": 0}


def last_letter_samples(n: int, seed: int = 0, method: str = "ft", letters: str = "abcdef"):
    """Synthetic last-letter concatenation: question = two 3-letter words, answer = their last letters."""
    from ftcot_jax.samples import FinetuneSample

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = ["".join(rng.choice(list(letters), 3)) for _ in range(2)]
        answer = "".join(w[-1] for w in words)
        rationale = " ".join(f"{w} ends with {w[-1]}." for w in words) if method == "ft_cot" else ""
        out.append(FinetuneSample(task="last_letter_concatenation", sample_index=i, completion_index=0,
                                  question=" ".join(words), answer=answer, rationale=rationale, method=method))
    return out
