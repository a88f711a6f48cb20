"""Tokenizers for tests, built in code (no hub access).

`char_tokenizer()` is THE test tokenizer: an HF fast tokenizer with one token per character. `bpe_tokenizer()`
is a small GPT-2-style byte-level BPE for the server's tests and benchmark. Two minimal non-HF variants remain
for decode tests whose assertions were pinned on their exact id schemes.
"""

from __future__ import annotations

import string

# one token per character; ids 0 pad, 1 eos, 2 unk, then these characters in this order
CHARS = string.ascii_lowercase + string.digits + " #->.,?:'\"\n" + string.ascii_uppercase + "()"
CHAR_VOCAB = 3 + len(CHARS)


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


def bpe_tokenizer():
    """A small byte-level BPE tokenizer trained here (GPT-2 style, EOS <|endoftext|>, no chat template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        'Q: Take the last letters of each word in "Elon Musk" and concatenate them.',
        "A: Let's think step by step. The last letter of Elon is n. Therefore, the answer is nk.",
        "System: You are helpful. User: What is 2 + 3? Assistant: 2 plus 3 is 5.",
        "Question 7: How many apples are left if you eat three of the twelve apples? END",
    ] * 10
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )


class LetterTokenizer:
    """'a'..'z' and ' ' as ids 3..29, 2 = EOS, 0 = pad: every id of a 30-token model but 0..2 is one letter.

    The text-level decode tests and the multi-host decode worker run random 30-token GPT-2s whose seeds were
    chosen for this scheme (a row that runs its whole budget, a row that meets its stop string)."""

    eos_token_id, pad_token_id = 2, 0
    chars = "abcdefghijklmnopqrstuvwxyz "

    def __call__(self, text, **kw):
        return {"input_ids": [3 + self.chars.index(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.chars[i - 3] if 3 <= i < 3 + len(self.chars) else "" for i in ids)


class ModuloLetterTokenizer:
    """Any character -> an id in [2, vocab), EOS (1) appended, pad 0 (T5's special ids); every id >= 2 decodes
    to exactly one letter, so each token a random T5 emits is one character of text (test_t5 relies on it)."""

    def __init__(self, vocab: int):
        self.vocab_size = vocab

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [2 + (ord(c) % (self.vocab_size - 2)) for c in text] + ([1] if add_special_tokens else [])}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + (i - 2) % 26) for i in ids if i > 1 or not skip_special_tokens)
