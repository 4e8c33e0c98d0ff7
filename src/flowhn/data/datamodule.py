"""The Lightning DataModule of every run: documents -> tokenizer -> examples -> batches.

Local files (the default; the shipped corpus included) are tokenized once into a cached tensor
``<cache_dir>/tokens/<corpus hash + tokenizer hash>.pt`` and served as a map-style dataset.
A hub dataset (``format: hub``) is streamed, tokenized on the fly, and never cached.

DDP: each rank reads a disjoint share. Map-style data uses :class:`ResumableShardSampler`, a
``DistributedSampler`` built with ``trainer.global_rank`` / ``trainer.world_size``, so Lightning
keeps it instead of injecting its own. Streams are split with
``datasets.distributed.split_dataset_by_node``. ``prepare_data`` (local rank 0) trains the
tokenizer and fills the token cache; ``setup`` on every rank reads them (and builds them itself
under a file lock if ``prepare_data`` did not run).

Exact resume: the DataModule counts the training batches the loop has taken
(``on_before_batch_transfer``, which sees a batch only when it is used, unlike the loader, which
runs ahead) and saves ``{epoch, batches}`` through ``state_dict()``. After a restart the sampler
skips what was already trained on in that epoch, so the batches that follow are the ones the
uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict
from functools import partial
from itertools import islice
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from flowhn.data import sources as src
from flowhn.data.cache import build_once, default_cache_dir
from flowhn.data.tokenizer import (
    MIN_BPE_VOCAB,
    cached_bpe,
    fingerprint,
    is_local_path,
    load_pretrained,
    pad_id,
)
from flowhn.data.windows import (
    PackedWindows,
    PaddedDocuments,
    ResumableShardSampler,
    StreamingWindows,
    TokenizedCorpus,
    TrainPosition,
    split_documents,
    tokenize_documents,
)
from flowhn.errors import ConfigError

log = logging.getLogger(__name__)


class LMDataModule(L.LightningDataModule):
    """Batches ``{"input_ids": (B, T), "labels": (B, T)}`` of a causal language-modelling corpus.

    Args (the keys of ``conf/data/*.yaml``):
        sources: path, glob, directory, or list of them; None = the shipped corpus; with
            ``format: hub`` a dataset name for ``datasets.load_dataset``.
        format: auto (from file extensions), text, json (JSON lines), parquet, or hub.
        text_column: field holding the text (json, parquet, hub).
        text_sample_by: what one document of a text file is: the whole file, a paragraph
            (blank-line separated), or a line.
        tokenizer: HF tokenizer name or path; None = byte-level BPE trained on the corpus.
        vocab_size: size of the trained BPE (ignored with a pretrained tokenizer).
        seq_len: tokens per example T (each example is cut from T + 1 tokens).
        batch_size / eval_batch_size: per-device batch sizes (eval defaults to batch_size).
        val_fraction / val_documents: held-out documents, as a fraction or a count (the count wins).
        split_seed: seed of the train/validation split (None = ``seed``); fix it to compare
            runs with different ``seed`` on the same validation set.
        packing: True = concatenate documents with EOS and cut windows; False = one truncated,
            padded document per example (the paper's mode; pads are -100 in labels).
        num_workers: DataLoader workers (the hub stream uses at most one, to keep order exact).
        seed: seed of the training order.
        cache_dir: where tokenizers and token tensors are cached (None = $FLOWHN_CACHE/data or
            ~/.cache/flowhn/data).
        max_documents: read only the first documents (of local files; of the hub training stream).
        max_train_windows: keep only the first training examples.
        hub_split / hub_val_split: the hub dataset's training and validation splits.
        hub_val_documents: documents of ``hub_val_split`` used for validation (0 = none).
        shuffle_buffer: buffer of the hub stream's seeded shuffle (0 = stream order).
    """

    def __init__(
        self,
        sources=None,
        format: str = "auto",
        text_column: str = "text",
        text_sample_by: str = "document",
        tokenizer: str | None = None,
        vocab_size: int = 4096,
        seq_len: int = 256,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.05,
        val_documents: int | None = None,
        split_seed: int | None = None,
        packing: bool = True,
        num_workers: int = 0,
        seed: int = 1234,
        cache_dir: str | None = None,
        max_documents: int | None = None,
        max_train_windows: int | None = None,
        hub_split: str = "train",
        hub_val_split: str | None = "validation",
        hub_val_documents: int = 1000,
        shuffle_buffer: int = 10_000,
    ):
        super().__init__()
        _int("data.seq_len", seq_len, minimum=2)
        _int("data.batch_size", batch_size, minimum=1)
        _int("data.eval_batch_size", eval_batch_size, minimum=1, optional=True)
        _int("data.num_workers", num_workers, minimum=0)
        _int("data.seed", seed, minimum=None)
        _int("data.split_seed", split_seed, minimum=None, optional=True)
        _int("data.val_documents", val_documents, minimum=0, optional=True)
        _int("data.max_documents", max_documents, minimum=1, optional=True)
        _int("data.max_train_windows", max_train_windows, minimum=1, optional=True)
        _int("data.hub_val_documents", hub_val_documents, minimum=0)
        _int("data.shuffle_buffer", shuffle_buffer, minimum=0)
        if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool) or not 0 <= val_fraction < 1:
            raise ConfigError(f"data.val_fraction: must be in [0, 1), got {val_fraction!r}")
        if not isinstance(packing, bool):
            raise ConfigError(f"data.packing: must be true or false, got {packing!r}")
        if tokenizer is None:
            _int("data.vocab_size", vocab_size, minimum=MIN_BPE_VOCAB)
        elif not isinstance(tokenizer, str) or not tokenizer:
            raise ConfigError(f"data.tokenizer: must be a name, a path or null, got {tokenizer!r}")
        elif is_local_path(tokenizer) and not Path(tokenizer).expanduser().exists():
            raise ConfigError(f"data.tokenizer: path not found: {tokenizer}")

        self.spec = src.resolve_sources(sources, format, text_column, text_sample_by)
        if self.spec.is_hub and tokenizer is None:
            raise ConfigError(
                "data.tokenizer: a hub dataset needs a pretrained tokenizer name or path "
                "(a BPE is trained only on local files)"
            )
        self.tokenizer_spec = tokenizer
        self.vocab_size_target = vocab_size
        self.seq_len, self.batch_size = seq_len, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction, self.val_documents = float(val_fraction), val_documents
        self.split_seed = seed if split_seed is None else split_seed
        self.packing, self.num_workers, self.seed = packing, num_workers, seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.max_documents, self.max_train_windows = max_documents, max_train_windows
        self.hub_split, self.hub_val_split = hub_split, hub_val_split
        self.hub_val_documents, self.shuffle_buffer = hub_val_documents, shuffle_buffer

        self._tokenizer = None
        self._tokenizer_hash: str | None = None
        self._documents_cache: list[str] | None = None
        self._corpus_hash: str | None = None
        self.train_dataset = None
        self.val_dataset = None
        self.stats: dict = {}
        self._position = TrainPosition()
        self._restored_order: dict | None = None

    # ---- tokenizer -------------------------------------------------------------------------

    def prepare(self):
        """Load or train the tokenizer and return it; idempotent. Call it before building the
        model so that ``check_vocab(dm.tokenizer, model_vocab)`` can run first."""
        if self._tokenizer is None:
            if self.tokenizer_spec is not None:
                self._tokenizer = load_pretrained(self.tokenizer_spec)
            else:
                self._tokenizer = cached_bpe(self._documents, self.corpus_hash, self.vocab_size_target, self.cache_dir)
        return self._tokenizer

    @property
    def tokenizer(self):
        return self.prepare()

    @property
    def vocab_size(self) -> int:
        """Number of token ids the model must embed (``len(tokenizer)``, special tokens included)."""
        return len(self.tokenizer)

    @property
    def pad_id(self) -> int:
        return pad_id(self.tokenizer)

    @property
    def tokenizer_hash(self) -> str:
        if self._tokenizer_hash is None:
            self._tokenizer_hash = fingerprint(self.tokenizer)
        return self._tokenizer_hash

    @property
    def corpus_hash(self) -> str:
        if self._corpus_hash is None:
            self._corpus_hash = (
                hashlib.sha256(f"hub:{self.spec.hub_name}".encode()).hexdigest()
                if self.spec.is_hub else src.fingerprint(self.spec, self.max_documents)
            )
        return self._corpus_hash

    def _documents(self) -> list[str]:
        # The tokenizer is trained on every document, validation included, so that it depends on
        # the corpus alone: runs with different split seeds share it and their losses compare.
        if self._documents_cache is None:
            self._documents_cache = list(islice(src.iter_documents(self.spec), self.max_documents))
        return self._documents_cache

    # ---- Lightning hooks -------------------------------------------------------------------

    def prepare_data(self) -> None:
        self.prepare()
        if not self.spec.is_hub:
            self._load_corpus()

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None or self.stats:
            return  # fit, then validate, both call setup
        self.prepare()
        if self.spec.is_hub:
            self._setup_hub()
        else:
            self._setup_local()
        log.info("data: %s", ", ".join(f"{k}={v}" for k, v in self.stats.items()))

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        return self.train_loader(rank, world)

    def val_dataloader(self):
        rank, world = self._rank_and_world()
        return self.val_loader(rank, world)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        trainer = self.trainer
        if trainer is not None and trainer.training:
            self._position.advance(trainer.current_epoch)
        return batch

    def state_dict(self) -> dict:
        return {**asdict(self._position), "order": self._order()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._position.epoch = int(state_dict["epoch"])
        self._position.batches = int(state_dict["batches"])
        self._restored_order = state_dict.get("order")

    # ---- loaders (rank and world size explicit, so tests can ask for any shard) -------------

    def train_loader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        self.setup()
        self._check_restored_order(world_size)
        common = dict(batch_size=self.batch_size, drop_last=True, pin_memory=torch.cuda.is_available(),
                      position=self._position, current_epoch=self._current_epoch)
        if self.spec.is_hub:
            stream = partial(
                _hub_texts, self.spec.hub_name, self.hub_split, rank, world_size, self.seed,
                self.shuffle_buffer, self.spec.text_column, self.max_documents,
            )
            dataset = StreamingWindows(stream, self.tokenizer, self.seq_len, self.pad_id, self.packing)
            # One worker at most: with several, batches interleave across workers and a restart
            # could not tell which worker had produced how much.
            return _TrainLoader(dataset, num_workers=min(self.num_workers, 1), **common)
        per_rank = len(self.train_dataset) // world_size
        if per_rank < self.batch_size:
            raise ConfigError(
                f"data.batch_size: {self.batch_size} per device needs at least {self.batch_size * world_size} "
                f"training examples on {world_size} device(s), the corpus gives {len(self.train_dataset)}; "
                "lower data.batch_size or data.seq_len, or add data"
            )
        sampler = ResumableShardSampler(self.train_dataset, world_size, rank, self.seed, self.batch_size, self._position)
        return _TrainLoader(self.train_dataset, sampler=sampler, num_workers=self.num_workers,
                            persistent_workers=self.num_workers > 0, **common)

    def val_loader(self, rank: int = 0, world_size: int = 1):
        self.setup()
        if self.val_dataset is None or len(self.val_dataset) == 0:
            return []
        sampler = DistributedSampler(self.val_dataset, num_replicas=world_size, rank=rank, shuffle=False)
        return DataLoader(self.val_dataset, batch_size=self.eval_batch_size, sampler=sampler,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0)

    # ---- internals --------------------------------------------------------------------------

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else self._position.epoch

    def _load_corpus(self) -> TokenizedCorpus:
        tokenizer = self.prepare()
        key = hashlib.sha256(f"{self.corpus_hash}:{self.tokenizer_hash}".encode()).hexdigest()[:20]
        path = self.cache_dir / "tokens" / f"{key}.pt"

        def build(tmp: Path) -> None:
            docs = self._documents()
            log.info("tokenizing %d documents", len(docs))
            torch.save(tokenize_documents(docs, tokenizer).to_dict(), tmp)

        build_once(path, build)
        self._documents_cache = None  # tokenizer and tokens are cached now; the texts are not needed
        return TokenizedCorpus(**torch.load(path, weights_only=True))

    def _setup_local(self) -> None:
        corpus = self._load_corpus()
        train_ids, val_ids = split_documents(corpus.num_documents, self.val_fraction, self.val_documents, self.split_seed)
        train, val = corpus.select(train_ids), corpus.select(val_ids)
        self.train_dataset = self._examples(train, limit=self.max_train_windows)
        self.val_dataset = self._examples(val, keep_tail=True) if val_ids else None
        self.stats = {
            "documents": corpus.num_documents, "train_documents": len(train_ids), "val_documents": len(val_ids),
            "train_tokens": len(train.tokens), "val_tokens": len(val.tokens),
            "train_examples": len(self.train_dataset), "val_examples": len(self.val_dataset or ()),
            "vocab_size": self.vocab_size,
        }

    def _setup_hub(self) -> None:
        where = f"data.sources={self.spec.hub_name}"
        try:
            src.open_stream(self.spec.hub_name, split=self.hub_split)
        except Exception as exc:
            raise ConfigError(f"data.hub_split: cannot open split {self.hub_split!r} of {self.spec.hub_name}: "
                              f"{src.error_line(exc)}") from exc
        self.train_dataset = None
        self.val_dataset = None
        if self.hub_val_split and self.hub_val_documents:
            try:
                stream = src.open_stream(self.spec.hub_name, split=self.hub_val_split)
                texts = list(islice(src.iter_stream_texts(stream, self.spec.text_column, where), self.hub_val_documents))
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(f"data.hub_val_split: cannot read split {self.hub_val_split!r} of "
                                  f"{self.spec.hub_name}: {src.error_line(exc)}") from exc
            self.val_dataset = self._examples(tokenize_documents(texts, self.tokenizer), keep_tail=True)
        self.stats = {"dataset": self.spec.hub_name, "val_examples": len(self.val_dataset or ()),
                      "vocab_size": self.vocab_size}

    def _examples(self, corpus: TokenizedCorpus, keep_tail: bool = False, limit: int | None = None):
        if self.packing:
            return PackedWindows(corpus.tokens, self.seq_len, self.pad_id, keep_tail=keep_tail, limit=limit)
        return PaddedDocuments(corpus, self.seq_len, self.pad_id, limit=limit)

    def _order(self, world_size: int | None = None) -> dict:
        """Everything that fixes which example comes at which step; a resume needs it unchanged."""
        if world_size is None:
            world_size = self._rank_and_world()[1]
        return {
            "sources": self.corpus_hash[:16], "tokenizer": self.tokenizer_hash[:16],
            "seq_len": self.seq_len, "packing": self.packing, "batch_size": self.batch_size,
            "seed": self.seed, "split_seed": self.split_seed, "max_train_windows": self.max_train_windows,
            "max_documents": self.max_documents, "world_size": world_size,
        }

    def _check_restored_order(self, world_size: int) -> None:
        if self._restored_order is None:
            return
        now = self._order(world_size)
        for key, old in self._restored_order.items():
            if now.get(key) != old:
                name = "world size (trainer.devices x trainer.num_nodes)" if key == "world_size" else f"data.{key}"
                raise ConfigError(
                    f"{name}: the checkpoint was trained with {old!r}, this run has {now.get(key)!r}; "
                    "an exact resume needs the same data order (use the old value or start a new run)"
                )
        self._restored_order = None


class _TrainLoader(DataLoader):
    """The training DataLoader, whose state is the DataModule's :class:`TrainPosition`.

    Lightning treats a loader with ``state_dict``/``load_state_dict`` as resumable (and warns on
    a mid-epoch restart otherwise); it saves the same position the DataModule does.
    """

    def __init__(self, *args, position: TrainPosition, current_epoch, **kwargs):
        super().__init__(*args, **kwargs)
        self.position = position
        self.current_epoch = current_epoch

    def state_dict(self) -> dict:
        return asdict(self.position)

    def load_state_dict(self, state_dict: dict) -> None:
        self.position.epoch, self.position.batches = int(state_dict["epoch"]), int(state_dict["batches"])

    def __iter__(self):
        if isinstance(self.dataset, StreamingWindows):
            # Set before the worker is started, so the worker's copy of the dataset has it.
            same_epoch = self.position.epoch == self.current_epoch()
            self.dataset.skip_examples = self.position.batches * self.batch_size if same_epoch else 0
        return super().__iter__()


def _hub_texts(name, split, rank, world_size, seed, shuffle_buffer, text_column, max_documents):
    """This rank's texts of a hub split: split by node, then a seeded buffered shuffle."""
    from datasets.distributed import split_dataset_by_node

    stream = split_dataset_by_node(src.open_stream(name, split=split), rank=rank, world_size=world_size)
    if shuffle_buffer:
        stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
    return islice(src.iter_stream_texts(stream, text_column, f"data.sources={name}"), max_documents)


def _int(key: str, value, minimum: int | None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{key}: must be an integer{bound}, got {value!r}")
