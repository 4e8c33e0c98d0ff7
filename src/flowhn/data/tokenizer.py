"""Tokenizers: any HF tokenizer by name or path, or a byte-level BPE trained on the corpus.

The trained BPE is cached under ``<cache_dir>/tokenizers/bpe-v<vocab>-<corpus hash>/`` and loaded
back with ``transformers.AutoTokenizer``, so a changed corpus or vocab size trains a new one and
an unchanged one is reused by every run and every DDP rank.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from flowhn.data.cache import build_once
from flowhn.errors import ConfigError

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)
# Byte-level BPE starts from all 256 bytes, so it can encode any text; merges come on top.
MIN_BPE_VOCAB = 256 + len(SPECIAL_TOKENS)


def is_local_path(spec: str) -> bool:
    """A tokenizer spec that can only mean a local path (hub names look like ``org/name``)."""
    return os.path.exists(os.path.expanduser(spec)) or spec.startswith(("/", "./", "../", "~"))


def load_pretrained(spec: str):
    """``AutoTokenizer.from_pretrained(spec)``, as a fast tokenizer that has an EOS token."""
    from transformers import AutoTokenizer

    path = os.path.expanduser(spec)
    if is_local_path(spec) and not os.path.exists(path):
        raise ConfigError(f"data.tokenizer: path not found: {spec}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
    except Exception as exc:  # OSError for missing files, HTTP errors for hub names
        where = "local path" if os.path.exists(path) else "hub name (needs network and maybe a login)"
        raise ConfigError(f"data.tokenizer: cannot load {spec!r} as a {where}: {str(exc).splitlines()[0]}") from exc
    if not tokenizer.is_fast:
        raise ConfigError(f"data.tokenizer: {spec!r} has no fast (tokenizers-backed) version")
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"data.tokenizer: {spec!r} has no EOS token, which separates packed documents")
    return tokenizer


def train_bpe(documents: Iterable[str], vocab_size: int):
    """A byte-level BPE with ``vocab_size`` tokens at most, as a ``PreTrainedTokenizerFast``.

    Deterministic: the same documents in the same order give the same merges (the trainer
    breaks count ties by token order, not by hash order).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_BPE_VOCAB:
        raise ConfigError(f"data.vocab_size: a byte-level BPE needs at least {MIN_BPE_VOCAB}, got {vocab_size}")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(documents, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)


def cached_bpe(documents, corpus_hash: str, vocab_size: int, cache_dir: Path):
    """The BPE for this corpus and vocab size, trained once and then read from ``cache_dir``.

    ``documents`` is called only when the cache misses (it may read the whole corpus).
    """
    from transformers import AutoTokenizer

    target = Path(cache_dir) / "tokenizers" / f"bpe-v{vocab_size}-{corpus_hash[:20]}"

    def build(tmp: Path) -> None:
        docs = documents()
        log.info("training a byte-level BPE (vocab %d) on %d documents", vocab_size, len(docs))
        train_bpe(docs, vocab_size).save_pretrained(str(tmp))

    build_once(target, build)
    return AutoTokenizer.from_pretrained(str(target))


def fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's full definition (vocab, merges, normalizer, special tokens)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


def pad_id(tokenizer) -> int:
    """Id written into padded input positions; their labels are -100, so any valid id works."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def check_vocab(tokenizer, model_vocab_size: int, key: str = "scale.vocab_size") -> None:
    """Raise ``ConfigError`` if the model's embedding has fewer rows than the tokenizer has ids."""
    needed = len(tokenizer)
    if not isinstance(model_vocab_size, int) or model_vocab_size < needed:
        raise ConfigError(
            f"{key}: {model_vocab_size!r} is smaller than the tokenizer's vocabulary ({needed} ids); "
            f"set {key} >= {needed} or lower data.vocab_size"
        )
