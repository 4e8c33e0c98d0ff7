"""The data pipeline on real text: the shipped Austen corpus, a real BPE, real Lightning runs."""

from __future__ import annotations

import gzip
import json
import shutil
import warnings
from pathlib import Path

import datasets
import lightning as L
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf.errors import MissingMandatoryValue

from conftest import compose_train
from flowhn.data import (
    EMBEDDED_CORPUS,
    IGNORE_INDEX,
    DataConfigError,
    LMDataModule,
    PackedWindows,
    check_vocab,
    iter_documents,
    open_stream,
    resolve_sources,
    train_bpe,
)
from flowhn.data.datamodule import _hub_texts
from flowhn.data.windows import split_documents
from flowhn.errors import ConfigError

warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def _austen() -> list[dict]:
    with gzip.open(EMBEDDED_CORPUS, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


AUSTEN = _austen()
# Short real documents keep tokenizer training and Lightning runs to a fraction of a second:
# the first paragraphs of the first 24 chapters.
DOCS = ["\n\n".join(d["text"].split("\n\n")[:4]) for d in AUSTEN[:24]]


def write_jsonl(path: Path, texts: list[str], column: str = "text", compress: bool = False) -> Path:
    lines = "".join(json.dumps({column: t, "n": i}) + "\n" for i, t in enumerate(texts)).encode()
    path.write_bytes(gzip.compress(lines, mtime=0) if compress else lines)
    return path


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    write_jsonl(d / "docs.jsonl", DOCS)
    return d


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(DOCS, vocab_size=512)


def make_dm(sources, cache: Path, **kwargs) -> LMDataModule:
    args = dict(seq_len=16, batch_size=4, val_fraction=0.1, vocab_size=512, cache_dir=str(cache))
    args.update(kwargs)
    return LMDataModule(sources=[str(s) for s in sources] if isinstance(sources, list) else str(sources), **args)


def encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# ---- the shipped corpus -------------------------------------------------------------------------


def test_embedded_corpus_is_real_documented_text():
    folder = EMBEDDED_CORPUS.parent
    assert EMBEDDED_CORPUS.stat().st_size < 3 * 2**20
    assert (folder / "README.md").is_file() and "public domain" in (folder / "README.md").read_text()
    import hashlib

    sha = hashlib.sha256(EMBEDDED_CORPUS.read_bytes()).hexdigest()
    assert sha in (folder / "SOURCE").read_text()
    docs = list(iter_documents(resolve_sources(None)))
    assert len(docs) == 270 and docs == [d["text"] for d in AUSTEN]
    assert sum(map(len, docs)) > 3_000_000
    assert any(d.startswith("Chapter 1\n\nIt is a truth universally acknowledged") for d in docs)


# ---- tokenizer ----------------------------------------------------------------------------------


def test_bpe_is_deterministic_and_round_trips(tokenizer):
    again = train_bpe(DOCS, vocab_size=512)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert len(tokenizer) == 512
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id is not None
    for text in [DOCS[3], "Naïve café — “quoted” 😀\n\n  two  spaces\tand a tab", "Mr. Darcy's 10,000 a year!"]:
        ids = encode(tokenizer, text)
        assert tokenizer.decode(ids) == text
        assert tokenizer.eos_token_id not in ids
    # Merges learnt from the corpus: its frequent words are single tokens.
    assert len(encode(tokenizer, " the")) == 1


def test_bpe_cache_is_keyed_by_corpus_content_and_vocab(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "a.jsonl", DOCS[:8])
    cache = tmp_path / "cache"
    first = make_dm(tmp_path / "a.jsonl", cache).prepare()
    trained = sorted(p.name for p in (cache / "tokenizers").iterdir() if p.is_dir())
    assert len(trained) == 1 and trained[0].startswith("bpe-v512-")

    import flowhn.data.tokenizer as tokmod

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been reused")

    monkeypatch.setattr(tokmod, "train_bpe", no_training)
    reused = make_dm(tmp_path / "a.jsonl", cache).prepare()
    assert reused.backend_tokenizer.to_str() == first.backend_tokenizer.to_str()
    monkeypatch.undo()

    write_jsonl(tmp_path / "a.jsonl", DOCS[:9])  # changed content, same path
    retrained = make_dm(tmp_path / "a.jsonl", cache).prepare()
    make_dm(tmp_path / "a.jsonl", cache, vocab_size=400).prepare()
    assert len([p for p in (cache / "tokenizers").iterdir() if p.is_dir()]) == 3
    assert retrained.backend_tokenizer.to_str() != first.backend_tokenizer.to_str()


def test_check_vocab(tokenizer):
    check_vocab(tokenizer, len(tokenizer))
    check_vocab(tokenizer, len(tokenizer) + 64)
    with pytest.raises(ConfigError, match=r"scale\.vocab_size: 511 is smaller .* \(512 ids\)"):
        check_vocab(tokenizer, len(tokenizer) - 1)


# ---- examples -----------------------------------------------------------------------------------


def test_packed_windows_by_hand():
    tokens = torch.arange(11, dtype=torch.int32)
    ds = PackedWindows(tokens, seq_len=4, pad_id=99)
    assert len(ds) == 2
    assert ds[0]["input_ids"].tolist() == [0, 1, 2, 3] and ds[0]["labels"].tolist() == [1, 2, 3, 4]
    assert ds[1]["input_ids"].tolist() == [4, 5, 6, 7] and ds[1]["labels"].tolist() == [5, 6, 7, 8]
    tail = PackedWindows(tokens, seq_len=4, pad_id=99, keep_tail=True)
    assert len(tail) == 3
    assert tail[2]["input_ids"].tolist() == [8, 9, 99, 99] and tail[2]["labels"].tolist() == [9, 10, -100, -100]
    assert ds[0]["input_ids"].dtype == torch.long


def test_packing_joins_documents_with_eos_and_shifts_labels(corpus_dir, cache):
    dm = make_dm(corpus_dir / "docs.jsonl", cache, val_fraction=0.0)
    dm.setup()
    tok = dm.tokenizer
    stream = [t for doc in DOCS for t in encode(tok, doc) + [tok.eos_token_id]]
    ds = dm.train_dataset
    assert len(ds) == (len(stream) - 1) // 16
    for i in range(len(ds)):
        window = stream[i * 16 : i * 16 + 17]
        assert ds[i]["input_ids"].tolist() == window[:-1]
        assert ds[i]["labels"].tolist() == window[1:]
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == batch["labels"].shape == (4, 16)
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    assert (batch["labels"] != IGNORE_INDEX).all()


def test_pad_mode_masks_padding_and_counts_only_real_tokens(tmp_path, cache):
    texts = ["Emma smiled.", "He said nothing at all, and she said less.", DOCS[0]]
    write_jsonl(tmp_path / "short.jsonl", texts)
    dm = make_dm(tmp_path / "short.jsonl", cache, packing=False, val_fraction=0.0, seq_len=32, batch_size=3)
    dm.setup()
    tok, pad = dm.tokenizer, dm.pad_id
    expected_real = 0
    for i, text in enumerate(texts):
        ids = (encode(tok, text) + [tok.eos_token_id])[:33]
        n = len(ids) - 1  # real targets
        ex = dm.train_dataset[i]
        assert ex["input_ids"][:n].tolist() == ids[:-1]
        assert ex["labels"][:n].tolist() == ids[1:]
        assert (ex["labels"][n:] == IGNORE_INDEX).all() and (ex["input_ids"][n:] == pad).all()
        expected_real += n
    assert len(encode(tok, DOCS[0])) > 32  # the long document was truncated
    batch = next(iter(dm.train_dataloader()))
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == expected_real < 3 * 32


# ---- sources ------------------------------------------------------------------------------------


def test_every_format_reads_the_same_documents_through_streaming(tmp_path):
    texts = DOCS[:6]
    write_jsonl(tmp_path / "a.jsonl", texts)
    write_jsonl(tmp_path / "b.jsonl.gz", texts, compress=True)
    pq.write_table(pa.table({"text": texts, "n": list(range(6))}), tmp_path / "c.parquet")
    (tmp_path / "txt").mkdir()
    for i, t in enumerate(texts):
        (tmp_path / "txt" / f"{i:02d}.txt").write_text(t)
    (tmp_path / "txt" / "notes.csv").write_text("ignored,by,the,directory,scan\n")
    (tmp_path / "para.txt").write_text("\n\n".join(t.replace("\n\n", " ") for t in texts) + "\n")

    cases = {
        "jsonl": resolve_sources(str(tmp_path / "a.jsonl")),
        "jsonl.gz": resolve_sources(str(tmp_path / "b.jsonl.gz")),
        "parquet": resolve_sources([str(tmp_path / "c.parquet")]),
        "text dir": resolve_sources(str(tmp_path / "txt")),
        "glob": resolve_sources(str(tmp_path / "txt" / "*.txt"), fmt="text"),
    }
    assert [f for f, _ in cases["text dir"].files] == [str(tmp_path / "txt" / f"{i:02d}.txt") for i in range(6)]
    for name, spec in cases.items():
        assert list(iter_documents(spec)) == texts, name
    paragraphs = resolve_sources(str(tmp_path / "para.txt"), text_sample_by="paragraph")
    assert [d.strip() for d in iter_documents(paragraphs)] == [t.replace("\n\n", " ") for t in texts]
    # Every source is opened by the streaming loader, the call a hub name goes through too.
    assert isinstance(open_stream("json", data_files=[str(tmp_path / "a.jsonl")]), datasets.IterableDataset)
    two = resolve_sources([str(tmp_path / "a.jsonl"), str(tmp_path / "c.parquet")])
    assert list(iter_documents(two)) == texts + texts


def test_hub_path_streams_a_dataset_folder(tmp_path, tokenizer):
    """``format: hub`` on a local folder with train/validation files: the same
    ``load_dataset(name, streaming=True, split=...)`` call that reads DKYoon/SlimPajama-6B."""
    data = tmp_path / "slimpajama-like"
    data.mkdir()
    write_jsonl(data / "train.jsonl", DOCS[:16])
    write_jsonl(data / "validation.jsonl", DOCS[16:20])
    tokenizer.save_pretrained(str(tmp_path / "tok"))

    ranks = [list(_hub_texts(str(data), "train", r, 2, seed=0, shuffle_buffer=0, text_column="text",
                             max_documents=None)) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and sorted(ranks[0] + ranks[1]) == sorted(DOCS[:16])

    def dm(**kwargs):
        return LMDataModule(sources=str(data), format="hub", tokenizer=str(tmp_path / "tok"), seq_len=16,
                            batch_size=4, shuffle_buffer=8, seed=3, **kwargs)

    first = dm()
    first.setup()
    batches = [b for _, b in zip(range(5), first.train_dataloader())]
    for b in batches:
        assert b["input_ids"].shape == (4, 16)
        assert torch.equal(b["labels"][:, :-1], b["input_ids"][:, 1:])
    assert first.stats["val_examples"] == len(first.val_dataset) > 0
    val = next(iter(first.val_dataloader()))
    assert val["input_ids"].shape[1] == 16

    resumed = dm()
    resumed.load_state_dict({"epoch": 0, "batches": 2})
    again = [b for _, b in zip(range(3), resumed.train_dataloader())]
    for a, b in zip(again, batches[2:]):
        assert torch.equal(a["input_ids"], b["input_ids"])


# ---- splits, shards, order ----------------------------------------------------------------------


def test_validation_split_is_disjoint_and_seeded(corpus_dir, cache):
    train, val = split_documents(100, 0.1, None, seed=3)
    assert len(val) == 10 and not set(train) & set(val) and sorted(train + val) == list(range(100))
    assert split_documents(100, 0.1, None, seed=3) == (train, val)
    assert split_documents(100, 0.1, None, seed=4)[1] != val
    assert len(split_documents(100, 0.1, 7, seed=3)[1]) == 7

    dm = make_dm(corpus_dir / "docs.jsonl", cache, val_documents=3)
    dm.setup()
    tok = dm.tokenizer
    s = dm.stats
    assert (s["train_documents"], s["val_documents"]) == (21, 3)
    total = sum(len(encode(tok, d)) + 1 for d in DOCS)
    assert s["train_tokens"] + s["val_tokens"] == total
    val_stream = torch.cat([dm.val_dataset[i]["input_ids"] for i in range(len(dm.val_dataset))])
    train_ids, val_ids = split_documents(len(DOCS), 0.0, 3, seed=dm.split_seed)
    assert val_stream[:20].tolist() == encode(tok, DOCS[val_ids[0]])[:20]


def test_ranks_read_disjoint_shards_in_seeded_order(corpus_dir, cache):
    dm = make_dm(corpus_dir / "docs.jsonl", cache, max_train_windows=40)
    dm.setup()
    assert len(dm.train_dataset) == 40
    shards = [list(dm.train_loader(rank, 2).sampler) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 20
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(40))
    assert shards[0] == list(dm.train_loader(0, 2).sampler)  # same seed, same order
    loader = dm.train_loader(0, 1)
    loader.sampler.set_epoch(1)
    assert list(loader.sampler) != list(dm.train_loader(0, 1).sampler)  # reshuffled each epoch
    other_seed = make_dm(corpus_dir / "docs.jsonl", cache, max_train_windows=40, seed=99)
    assert list(other_seed.train_loader(0, 1).sampler) != list(dm.train_loader(0, 1).sampler)
    rows = [tuple(r.tolist()) for rank in (0, 1) for b in dm.train_loader(rank, 2) for r in b["input_ids"]]
    assert len(rows) == len(set(rows)) == 40


def test_state_dict_restores_the_next_batches(corpus_dir, cache):
    dm = make_dm(corpus_dir / "docs.jsonl", cache)
    fresh = [b["input_ids"] for b in dm.train_dataloader()]
    state = {**dm.state_dict(), "batches": 3}
    resumed = make_dm(corpus_dir / "docs.jsonl", cache)
    resumed.load_state_dict(state)
    loader = resumed.train_dataloader()
    assert len(loader) == len(fresh)  # Lightning counts progress against the full epoch
    rest = [b["input_ids"] for b in loader]
    assert len(rest) == len(fresh) - 3 and all(torch.equal(a, b) for a, b in zip(rest, fresh[3:], strict=True))
    changed = make_dm(corpus_dir / "docs.jsonl", cache, batch_size=2)
    changed.load_state_dict(state)
    with pytest.raises(ConfigError, match=r"data\.batch_size: the checkpoint was trained with 4, this run has 2"):
        changed.train_dataloader()


class _Recorder(L.LightningModule):
    """A bigram model that records every training batch it is given."""

    def __init__(self, vocab: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, vocab)
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"].clone())
        logits = self.emb(batch["input_ids"])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(dm, max_steps: int, ckpt_dir: Path | None = None, ckpt_path: str | None = None) -> list[torch.Tensor]:
    model = _Recorder(512)
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, filename="{step}", every_n_train_steps=1, save_top_k=-1)] if ckpt_dir else []
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                        enable_checkpointing=bool(ckpt_dir), enable_progress_bar=False, enable_model_summary=False,
                        val_check_interval=3, num_sanity_val_steps=1)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_lightning_resume_continues_the_exact_batch_order(corpus_dir, cache, tmp_path):
    # 16 windows / batch 4 = 4 batches an epoch: 10 steps cross two epoch boundaries.
    def dm():
        return make_dm(corpus_dir / "docs.jsonl", cache, max_train_windows=16)

    straight = _fit(dm(), max_steps=10, ckpt_dir=tmp_path)
    assert len(straight) == 10
    for step in (4, 5):  # at an epoch boundary, and part-way through the second epoch
        resumed = _fit(dm(), max_steps=10, ckpt_path=str(tmp_path / f"step={step}.ckpt"))
        assert len(resumed) == 10 - step
        for a, b in zip(resumed, straight[step:], strict=True):
            assert torch.equal(a, b), f"resume from step {step} diverged"
    ckpt = torch.load(tmp_path / "step=5.ckpt", weights_only=False)
    assert ckpt["LMDataModule"]["epoch"] == 1 and ckpt["LMDataModule"]["batches"] == 1


# ---- configs ------------------------------------------------------------------------------------


def test_hydra_configs_instantiate(tmp_path, corpus_dir):
    cfg = compose_train("data=embedded", f"data.cache_dir={tmp_path}")
    dm = instantiate(cfg.data)
    assert isinstance(dm, LMDataModule) and dm.spec.files == ((str(EMBEDDED_CORPUS), "json"),)
    assert (dm.seq_len, dm.packing, dm.tokenizer_spec, dm.vocab_size_target) == (cfg.data.seq_len, True, None, 4096)
    cfg = compose_train("data=local", f"data.sources=[{corpus_dir / 'docs.jsonl'}]", f"data.cache_dir={tmp_path}")
    assert instantiate(cfg.data).spec.files == ((str(corpus_dir / "docs.jsonl"), "json"),)
    with pytest.raises(MissingMandatoryValue, match="data.sources"):
        instantiate(compose_train("data=local").data)
    with pytest.raises(InstantiationException) as info:
        instantiate(compose_train("data=local", "data.sources=/no/such/file.jsonl").data)
    assert isinstance(info.value.__cause__, ConfigError)
    cfg = compose_train("data=slimpajama")
    assert (cfg.data.format, cfg.data.sources, cfg.data.hub_split) == ("hub", "DKYoon/SlimPajama-6B", "train")


# ---- bad input ----------------------------------------------------------------------------------


def _bad_files(d: Path) -> dict[str, tuple[dict, str]]:
    """name -> (LMDataModule kwargs, regex the one-line error must match)."""
    (d / "empty.jsonl").write_bytes(b"")
    (d / "blank.txt").write_text("\n\n  \n")
    (d / "corrupt.jsonl").write_text('{"text": "fine"}\n{"text": "broken\n')
    (d / "garbage.jsonl").write_text("this is not json\n")
    (d / "notext.jsonl").write_text('{"body": "wrong column"}\n')
    (d / "corrupt.parquet").write_bytes(b"PAR1" + bytes(range(200)))
    (d / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (d / "data.bin").write_bytes(b"\x00\x01")
    (d / "only_csv").mkdir()
    (d / "only_csv" / "a.csv").write_text("a,b\n")
    write_jsonl(d / "ok.jsonl", DOCS[:2])
    ok = [str(d / "ok.jsonl")]
    return {
        "missing file": ({"sources": str(d / "nope.jsonl")}, r"data\.sources: file not found: .*nope\.jsonl"),
        "empty file": ({"sources": str(d / "empty.jsonl")}, r"data\.sources: file is empty: .*empty\.jsonl"),
        "blank text": ({"sources": str(d / "blank.txt")}, r"data\.sources: file is empty: .*blank\.txt"),
        "garbage jsonl": ({"sources": str(d / "garbage.jsonl")}, r"data\.sources: .*garbage\.jsonl is not valid JSON lines"),
        "corrupt jsonl": ({"sources": str(d / "corrupt.jsonl")}, r"data\.sources: cannot read .*corrupt\.jsonl as json"),
        "wrong column": ({"sources": str(d / "notext.jsonl")}, r"data\.text_column: 'text' is not a field of .*notext\.jsonl"),
        "corrupt parquet": ({"sources": str(d / "corrupt.parquet")}, r"data\.sources: .*corrupt\.parquet is not a readable parquet"),
        "not utf-8": ({"sources": str(d / "latin1.txt")}, r"data\.sources: .*latin1\.txt is not UTF-8"),
        "unknown extension": ({"sources": str(d / "data.bin")}, r"data\.format: cannot tell the format of .*data\.bin"),
        "dir without matches": ({"sources": str(d / "only_csv")}, r"data\.sources: directory .*only_csv has no files"),
        "glob without matches": ({"sources": str(d / "*.xml")}, r"data\.sources: glob .*\*\.xml.* matches no files"),
        "tokenizer path missing": ({"sources": ok, "tokenizer": str(d / "no_tok")}, r"data\.tokenizer: path not found: .*no_tok"),
        "batch_size 0": ({"sources": ok, "batch_size": 0}, r"data\.batch_size: must be an integer >= 1, got 0"),
        "seq_len 1": ({"sources": ok, "seq_len": 1}, r"data\.seq_len: must be an integer >= 2, got 1"),
        "bpe vocab too small": ({"sources": ok, "vocab_size": 100}, r"data\.vocab_size: must be an integer >= 258"),
        "val_fraction 1": ({"sources": ok, "val_fraction": 1.0}, r"data\.val_fraction: must be in \[0, 1\)"),
        "packing not bool": ({"sources": ok, "packing": "yes"}, r"data\.packing: must be true or false"),
        "bad format": ({"sources": ok, "format": "csv"}, r"data\.format: must be one of"),
        "hub without tokenizer": ({"sources": "DKYoon/SlimPajama-6B", "format": "hub"}, r"data\.tokenizer: a hub dataset needs"),
        "val takes everything": ({"sources": ok, "val_documents": 2}, r"data\.val_documents: 2 validation documents leave none"),
        "batch larger than data": ({"sources": ok, "batch_size": 10_000, "val_fraction": 0.0},
                                   r"data\.batch_size: 10000 per device needs at least 10000 training examples"),
    }


BAD_NAMES = [
    "missing file", "empty file", "blank text", "garbage jsonl", "corrupt jsonl", "wrong column", "corrupt parquet",
    "not utf-8", "unknown extension", "dir without matches", "glob without matches", "tokenizer path missing",
    "batch_size 0", "seq_len 1", "bpe vocab too small", "val_fraction 1", "packing not bool", "bad format",
    "hub without tokenizer", "val takes everything", "batch larger than data",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_input_fails_with_one_line_naming_it(name, tmp_path):
    kwargs, pattern = _bad_files(tmp_path)[name]
    with pytest.raises(DataConfigError, match=pattern) as info:
        dm = LMDataModule(cache_dir=str(tmp_path / "cache"), **{"seq_len": 16, "batch_size": 2, **kwargs})
        dm.prepare()  # reading the documents (tokenizer training) is where late corruption shows
        dm.train_dataloader()
    assert "\n" not in str(info.value)
    # Only the checks that need the corpus's size come after its tokenization.
    late = name in ("val takes everything", "batch larger than data")
    assert late or not (tmp_path / "cache" / "tokens").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)


class _ShardRecorder(_Recorder):
    """Writes the batches each DDP rank trained on to ``<out>/rank<r>.pt``."""

    def __init__(self, vocab: int, out: str):
        super().__init__(vocab)
        self.out = out

    def on_train_end(self):
        torch.save(torch.cat(self.seen), Path(self.out) / f"rank{self.global_rank}.pt")


@pytest.mark.slow
def test_ddp_ranks_train_on_disjoint_shards(corpus_dir, cache, tmp_path):
    dm = make_dm(corpus_dir / "docs.jsonl", cache, max_train_windows=32)
    dm.prepare_data()  # as Lightning would on local rank 0, before spawning
    # Two real DDP ranks (gloo), forked from this process as in test_perf (ddp_spawn's two fresh interpreters
    # imported this module and Lightning again, ~15 s of the test); a process that set up CUDA cannot fork.
    strategy = "ddp_spawn" if torch.cuda.is_initialized() else "ddp_fork"
    trainer = L.Trainer(max_steps=4, accelerator="cpu", devices=2, strategy=strategy, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(_ShardRecorder(512, str(tmp_path)), datamodule=dm)
    rows = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert rows[0].shape == rows[1].shape == (16, 16)  # 4 steps x batch 4 on each rank
    seen = [{tuple(r.tolist()) for r in rank} for rank in rows]
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 32
    dm.setup()
    assert seen[0] | seen[1] == {tuple(dm.train_dataset[i]["input_ids"].tolist()) for i in range(32)}
