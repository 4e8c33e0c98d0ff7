"""Bad inputs fail before training, with one line naming the key or file, and overwrite nothing.

Every case runs against a copy of a completed run's directory (or an interrupted or empty one
where the case is about resuming) and checks that no file there changed. A few cases go through
``train.py`` to check the exit status 2 and the single stderr line. The README's "Guarantees" section lists them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from conftest import ARCHS, FUSIONS, ROOT, SCALES, SPLITS, compose_train
from hydra.errors import MissingConfigException
from test_reliability import train_cfg, train_py

from flowhn.errors import ConfigError
from flowhn.perf.hardware import peak_tflops
from flowhn.training.run import run

# (case, overrides, key the message starts with, run dir it is tried in). "{files}" is the folder
# of bad data files made by the ``files`` fixture.
CASES = [
    ("heads-not-dividing-width", ["model.n_heads=3"], "model.n_heads", "completed"),
    ("kv-heads-not-dividing-heads", ["model.n_kv_heads=3"], "model.n_kv_heads", "completed"),
    ("split-ratio-above-1", ["split.ratio=1.5"], "split.ratio", "completed"),
    ("split-ratio-zero", ["split.ratio=0"], "split.ratio", "completed"),
    ("split-on-non-parallel-arch", ["model=llama", "split=fac_split"], "split", "completed"),
    ("seq-len-too-short-for-split", ["data.seq_len=1"], "data.seq_len", "completed"),
    ("window-not-below-seq-len", ["model=hymba", "model.window=32"], "model.window", "completed"),
    ("fac-window-cannot-cover-sequence", ["split.ratio=0.05", "data.seq_len=64"], "model.n_layers", "completed"),
    ("jamba-period-above-layers", ["model=jamba", "model.attn_period=16"], "model.attn_period", "completed"),
    ("experts-fewer-than-top-k", ["model=jamba", "model.num_experts=1"], "model.top_k", "completed"),
    ("empty-data-file", ["data=local", "data.sources={files}/empty.jsonl"], "data.sources", "completed"),
    ("corrupt-jsonl", ["data=local", "data.sources={files}/corrupt.jsonl"], "data.sources", "completed"),
    ("corrupt-parquet", ["data=local", "data.sources={files}/corrupt.parquet"], "data.sources", "completed"),
    ("data-dir-without-matching-files", ["data=local", "data.sources={files}/no_text"], "data.sources", "completed"),
    ("data-file-missing", ["data=local", "data.sources={files}/absent.jsonl"], "data.sources", "completed"),
    ("tokenizer-path-missing", ["data.tokenizer={files}/no_tokenizer"], "data.tokenizer", "completed"),
    ("vocab-smaller-than-tokenizer", ["scale.vocab_size=1000", "data.vocab_size=4096"], "scale.vocab_size",
     "completed"),
    ("batch-size-zero", ["data.batch_size=0"], "data.batch_size", "completed"),
    ("batch-larger-than-corpus", ["data.batch_size=100000"], "data.batch_size", "completed"),
    ("max-steps-zero", ["trainer.max_steps=0"], "trainer.max_steps", "completed"),
    ("compile-scope-unknown", ["compile_scope=layers"], "compile_scope", "completed"),
    ("compile-not-a-switch", ["compile=maybe"], "compile", "completed"),
    ("peak-tflops-negative", ["hardware.peak_tflops=-1"], "hardware.peak_tflops", "completed"),
    ("debug-step-negative", ["debug.kill_at_step=-1"], "debug.kill_at_step", "completed"),
    ("completed-run-dir-of-another-config", ["optim.lr=0.01"], "hydra.run.dir", "completed"),
    ("resume-with-another-config", ["optim.lr=0.01"], "ckpt_path", "interrupted"),
    ("resume-last-without-checkpoint", ["ckpt_path=last"], "ckpt_path", "empty"),
    ("resume-from-missing-file", ["ckpt_path={files}/absent.ckpt"], "ckpt_path", "empty"),
    ("resume-from-corrupt-checkpoint", ["ckpt_path={files}/corrupt.ckpt"], "ckpt_path", "empty"),
]
QUICK = ("trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1")


@pytest.fixture(scope="module")
def completed(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("completed")
    summary = run(train_cfg(run_dir, *QUICK), run_dir)
    assert summary["status"] == "completed"
    assert summary["mfu"] is None  # CPU, hardware.peak_tflops=null: no MFU, and no error
    return run_dir


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad_files")
    (folder / "empty.jsonl").write_text("")
    (folder / "corrupt.jsonl").write_text('{"text": "a chapter"}\n{"text": "cut off\n')
    (folder / "corrupt.parquet").write_bytes(b"PAR1 these bytes are no parquet file")
    (folder / "no_text").mkdir()
    (folder / "no_text" / "table.csv").write_text("a,b\n1,2\n")
    (folder / "corrupt.ckpt").write_bytes(b"PK\x03\x04 truncated checkpoint")
    return folder


def run_dir_of(kind: str, completed: Path, dest: Path) -> Path:
    """A copy of the completed run, the same run as if killed mid-way, or a new directory."""
    if kind == "empty":
        dest.mkdir()
        return dest
    shutil.copytree(completed, dest)
    if kind == "interrupted":
        summary = json.loads((dest / "summary.json").read_text())
        (dest / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    return dest


def snapshot(run_dir: Path) -> dict[str, str]:
    """Content hash of every file a run writes (Hydra's own .hydra/ and train.log left out)."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.relative_to(run_dir).parts[0] not in (".hydra", "train.log")}


@pytest.mark.parametrize(("case", "overrides", "key", "kind"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_first_with_one_line_naming_the_key(case, overrides, key, kind, completed, files, tmp_path):
    run_dir = run_dir_of(kind, completed, tmp_path / "run")
    before = snapshot(run_dir)
    cfg = train_cfg(run_dir, *QUICK, *(o.format(files=files) for o in overrides))
    with pytest.raises(ConfigError) as err:
        run(cfg, run_dir)
    message = str(err.value)
    assert message.startswith(f"{key}: ") and "\n" not in message, message
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("kind", ["interrupted", "completed"])
def test_another_config_in_an_existing_run_dir_names_the_differing_key(kind, completed, tmp_path):
    run_dir = run_dir_of(kind, completed, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.001 -> 0\.01"):
        run(train_cfg(run_dir, *QUICK, "optim.lr=0.01"), run_dir)


def test_gpu_devices_that_are_not_there(completed, tmp_path):
    run_dir = run_dir_of("completed", completed, tmp_path / "run")
    before = snapshot(run_dir)
    visible = torch.cuda.device_count()
    cfg = train_cfg(run_dir, *QUICK, "trainer.accelerator=gpu", f"trainer.devices={visible + 1}")
    key = "trainer.devices" if visible else "trainer.accelerator"
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        run(cfg, run_dir)
    assert snapshot(run_dir) == before


def test_zero_shot_without_lm_eval_names_the_key_and_the_install(completed, tmp_path, monkeypatch):
    """A GPU image without lm-eval: eval.tasks set, so the run stops before its data or model."""
    run_dir = run_dir_of("completed", completed, tmp_path / "run")
    before = snapshot(run_dir)
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith(("lm_eval.", "flowhn.evaluation"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ModuleNotFoundError
    with pytest.raises(ConfigError, match=r"^eval\.tasks: .*'lm_eval' does not import: pip install lm-eval"):
        run(train_cfg(run_dir, *QUICK, "eval=fixtures"), run_dir)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(("group", "choices"), [("model", ARCHS), ("split", SPLITS), ("fusion", FUSIONS),
                                                ("scale", SCALES)])
def test_unknown_group_choice_lists_the_choices(group, choices):
    with pytest.raises(MissingConfigException) as err:
        compose_train(f"{group}=no_such_{group}")
    message = str(err.value)
    assert f"Could not find '{group}/no_such_{group}'" in message
    assert all(choice in message for choice in choices)


def test_completed_run_of_the_same_config_is_not_run_again(completed, tmp_path):
    run_dir = run_dir_of("completed", completed, tmp_path / "run")
    before = snapshot(run_dir)
    summary = run(train_cfg(run_dir, *QUICK), run_dir)
    assert summary == json.loads((completed / "summary.json").read_text())
    assert snapshot(run_dir) == before


def test_unknown_gpu_has_no_peak_and_warns_once(caplog):
    name = f"Some Unknown GPU {uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.WARNING, logger="flowhn.perf.hardware"):
        assert peak_tflops(name, "bf16") is None
        assert peak_tflops(name, "bf16") is None
    warnings = [r for r in caplog.records if name in r.getMessage()]
    assert len(warnings) == 1 and "hardware.peak_tflops" in warnings[0].getMessage()


# ---------------------------------------------------------------- through train.py


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "key"), [
    (["model.n_heads=3"], "model.n_heads"),
    (["data=local", "data.sources={files}/empty.jsonl"], "data.sources"),
    pytest.param(["trainer.accelerator=gpu"], "trainer.accelerator",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")),
], ids=["heads", "empty-data-file", "gpu-on-cpu"])
def test_train_py_exits_2_with_one_stderr_line(overrides, key, completed, files, tmp_path):
    run_dir = run_dir_of("completed", completed, tmp_path / "run")
    before = snapshot(run_dir)
    proc = subprocess.run(train_py(run_dir, *QUICK, *(o.format(files=files) for o in overrides)),
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"config error: {key}: ")
    assert snapshot(run_dir) == before


@pytest.mark.slow
def test_train_py_unknown_arch_lists_the_choices(completed, tmp_path):
    run_dir = run_dir_of("completed", completed, tmp_path / "run")
    before = snapshot(run_dir)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}", "model=nope"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Could not find 'model/nope'" in proc.stderr and all(a in proc.stderr for a in ARCHS)
    assert snapshot(run_dir) == before
