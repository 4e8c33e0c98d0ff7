"""From tokenized documents to training examples, and the order they are read in.

An example is ``{"input_ids": (T,), "labels": (T,)}`` with ``labels[t]`` the token after
``input_ids[t]`` and -100 where there is no real target. It is cut from T + 1 consecutive tokens.

- Packing (default): every document's tokens followed by EOS, all documents concatenated, cut
  into windows that start every T tokens, so each token after the first is a target exactly once.
- Padding (the paper's mode): each document on its own, truncated to T + 1 tokens and padded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, DistributedSampler, IterableDataset

from flowhn.errors import ConfigError

IGNORE_INDEX = -100


@dataclass
class TokenizedCorpus:
    """Documents as one flat token tensor; document i is ``tokens[offsets[i]:offsets[i+1]]``
    and ends with EOS."""

    tokens: torch.Tensor  # int32 (n_tokens,)
    offsets: torch.Tensor  # int64 (n_docs + 1,)

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    def document(self, i: int) -> torch.Tensor:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def select(self, doc_ids: Sequence[int]) -> TokenizedCorpus:
        parts = [self.document(i) for i in doc_ids]
        lengths = torch.tensor([0] + [len(p) for p in parts], dtype=torch.int64)
        tokens = torch.cat(parts) if parts else self.tokens[:0]
        return TokenizedCorpus(tokens=tokens, offsets=lengths.cumsum(0))

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "offsets": self.offsets}


def tokenize_documents(documents: Iterable[str], tokenizer, chunk: int = 512) -> TokenizedCorpus:
    """Encode documents without special tokens and append EOS to each one."""
    eos = tokenizer.eos_token_id
    # The backend encoder skips transformers' max-length warning (documents are longer than any
    # model context; they are cut into windows later) and batches over threads.
    backend = tokenizer.backend_tokenizer
    pieces, lengths, batch = [], [0], []

    def flush():
        for enc in backend.encode_batch(batch, add_special_tokens=False):
            ids = enc.ids + [eos]
            pieces.append(torch.tensor(ids, dtype=torch.int32))
            lengths.append(len(ids))
        batch.clear()

    for doc in documents:
        batch.append(doc)
        if len(batch) == chunk:
            flush()
    flush()
    tokens = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int32)
    return TokenizedCorpus(tokens=tokens, offsets=torch.tensor(lengths, dtype=torch.int64).cumsum(0))


def split_documents(n_docs: int, val_fraction: float, val_documents: int | None, seed: int) -> tuple[list[int], list[int]]:
    """Seeded document-level train/validation split; both lists in corpus order."""
    if val_documents is not None:
        n_val = val_documents
    else:
        n_val = max(1, round(n_docs * val_fraction)) if val_fraction > 0 else 0
    if n_val >= n_docs:
        key = "data.val_documents" if val_documents is not None else "data.val_fraction"
        raise ConfigError(f"{key}: {n_val} validation documents leave none of the corpus's {n_docs} for training")
    perm = torch.randperm(n_docs, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def make_example(chunk: torch.Tensor, seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Inputs and next-token labels from up to ``seq_len + 1`` tokens, padded to ``seq_len``."""
    chunk = chunk.long()
    inputs, labels = chunk[:-1], chunk[1:]
    missing = seq_len - len(inputs)
    if missing > 0:
        inputs = torch.cat([inputs, inputs.new_full((missing,), pad_id)])
        labels = torch.cat([labels, labels.new_full((missing,), IGNORE_INDEX)])
    return {"input_ids": inputs, "labels": labels}


class PackedWindows(Dataset):
    """Windows of ``seq_len + 1`` tokens starting every ``seq_len`` tokens of one token stream.

    ``keep_tail`` adds the last partial window (padded; used for validation so that no
    held-out token is dropped). ``limit`` keeps only the first windows.
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int, pad_id: int, keep_tail: bool = False,
                 limit: int | None = None):
        self.tokens, self.seq_len, self.pad_id = tokens, seq_len, pad_id
        full = max(0, (len(tokens) - 1) // seq_len)
        tail = keep_tail and len(tokens) - full * seq_len >= 2
        self.length = full + int(tail)
        if limit is not None:
            self.length = min(self.length, limit)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        start = i * self.seq_len
        return make_example(self.tokens[start : start + self.seq_len + 1], self.seq_len, self.pad_id)


class PaddedDocuments(Dataset):
    """One example per document: its first ``seq_len + 1`` tokens, padded (the paper's mode)."""

    def __init__(self, corpus: TokenizedCorpus, seq_len: int, pad_id: int, limit: int | None = None):
        self.corpus, self.seq_len, self.pad_id = corpus, seq_len, pad_id
        self.length = corpus.num_documents if limit is None else min(corpus.num_documents, limit)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        return make_example(self.corpus.document(i)[: self.seq_len + 1], self.seq_len, self.pad_id)


@dataclass
class TrainPosition:
    """How far training has read: ``batches`` training batches of epoch ``epoch`` (per rank)."""

    epoch: int = 0
    batches: int = 0

    def advance(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.batches = epoch, 0
        self.batches += 1


class ResumableShardSampler(DistributedSampler):
    """This rank's share of a seeded shuffle, able to start an epoch part-way.

    A ``DistributedSampler`` (rank and world size passed explicitly, so no process group is
    needed): ranks get disjoint indices, the order depends only on seed and epoch, and Lightning
    leaves it in place instead of injecting its own. ``drop_last`` trims the shuffled indices to a
    multiple of the world size so that no window is read twice in an epoch.

    When the epoch set by Lightning is the one ``position`` recorded, iteration skips the
    ``position.batches * batch_size`` indices that were already trained on. ``len()`` stays the
    full epoch length, which is what Lightning's progress counters expect after a restart.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, batch_size: int,
                 position: TrainPosition):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.position = position

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip = self.position.batches * self.batch_size if self.position.epoch == self.epoch else 0
        return iter(indices[skip:])


class StreamingWindows(IterableDataset):
    """Examples made on the fly from a stream of texts (the hub path).

    ``make_stream()`` returns this rank's stream (already split by node and shuffled);
    ``skip_examples`` examples are dropped first, which is how a restarted run continues where
    the checkpoint was taken (it re-reads, but does not train on, the skipped part).
    """

    def __init__(self, make_stream, tokenizer, seq_len: int, pad_id: int, packing: bool, chunk: int = 64):
        self.make_stream, self.tokenizer = make_stream, tokenizer
        self.seq_len, self.pad_id, self.packing, self.chunk = seq_len, pad_id, packing, chunk
        self.skip_examples = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        skip = self.skip_examples
        for example in self._examples():
            if skip:
                skip -= 1
                continue
            yield example

    def _examples(self) -> Iterator[dict[str, torch.Tensor]]:
        span = self.seq_len + 1
        buffer = torch.zeros(0, dtype=torch.int32)
        for docs in _chunks(self.make_stream(), self.chunk):
            corpus = tokenize_documents(docs, self.tokenizer)
            if not self.packing:
                for i in range(corpus.num_documents):
                    yield make_example(corpus.document(i)[:span], self.seq_len, self.pad_id)
                continue
            buffer = torch.cat([buffer, corpus.tokens])
            n = (len(buffer) - 1) // self.seq_len
            for i in range(n):
                yield make_example(buffer[i * self.seq_len : i * self.seq_len + span], self.seq_len, self.pad_id)
            # The last target of one window is the first input of the next, as in PackedWindows.
            buffer = buffer[n * self.seq_len :]


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
