"""The sweep report and results.csv, on job folders written in train.py's formats."""

import csv

import pandas as pd
import pytest

from flowhn import report
from flowhn.sweeping import write_json, write_results
from flowhn.sweeping.paper import table1

SIX = ("arc_e", "arc_c", "wino", "piqa", "hella", "boolq")


def make_job(sweep_dir, name, axes, status="completed", metrics=None, **summary):
    """A job folder as the launcher and train.py leave it: job.json, summary.json, CSV metrics."""
    job = sweep_dir / name
    job.mkdir(parents=True)
    write_json(job / "job.json", {"name": name, "axes": axes, "identity": [f"{k}={v}" for k, v in axes.items()]})
    write_json(job / "summary.json", {"status": status, "error": None, "run_dir": str(job), **summary})
    for version, rows in (metrics or {}).items():
        path = job / "csv" / version / "metrics.csv"
        path.parent.mkdir(parents=True)
        columns = sorted({k for row in rows for k in row})
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    return job


def evals(*accs, norm=None):
    return {task: {"acc": acc, "acc_norm": norm} for task, acc in zip(SIX, accs)}


@pytest.fixture
def sweep_dir(tmp_path):
    d = tmp_path / "table1_smoke"
    curve = [{"step": s, "epoch": 0, "train/loss": 9.0 - s, "perf/tps": 1000.0 + s, "perf/mfu": 0.2} for s in range(1, 5)]
    curve.append({"step": 4, "epoch": 0, "val/loss": 5.5})
    make_job(d, "model=flowhn,scale=135m,split=fac_split", {"model": "flowhn", "scale": "135m", "split": "fac_split"},
             arch="flowhn", scale="135m", split="fac_split", tps=30000.0, mfu=0.25, val_loss=3.25,
             eval=evals(0.3, 0.2, 0.5, 0.6, 0.25, 0.4), eval_avg=0.375, metrics={"version_0": curve})
    make_job(d, "model=llama,scale=135m", {"model": "llama", "scale": "135m"}, arch="llama", scale="135m",
             tps=20000.0, mfu=0.2, val_loss=3.5, eval=evals(0.28, 0.22, 0.48, 0.52, 0.25, 0.41), eval_avg=0.36)
    make_job(d, "model=flowhn,scale=135m,split=no_split", {"model": "flowhn", "scale": "135m", "split": "no_split"},
             arch="flowhn", scale="135m", split="no_split", tps=25000.0, mfu=None, val_loss=3.0)
    make_job(d, "model=mamba,scale=1b", {"model": "mamba", "scale": "1b"}, status="failed",
             arch="mamba", scale="1b", error="torch.OutOfMemoryError: CUDA out of memory")
    make_job(d, "model=flowhn,scale=tiny,split=fac_split", {"model": "flowhn", "scale": "tiny", "split": "fac_split"},
             arch="flowhn", scale="tiny", split="fac_split", tps=200.0, mfu=None, val_loss=7.7)
    return d


def test_table_follows_the_papers_rows_and_units(sweep_dir):
    df = report.table(report.local_runs(sweep_dir))
    assert list(zip(df["scale"], df["model"])) == [
        ("tiny", "FAC_Split"), ("135m", "LLaMA"), ("135m", "No_Split"), ("135m", "FAC_Split"), ("1b", "Mamba-1"),
    ]
    fac = df[(df["model"] == "FAC_Split") & (df["scale"] == "135m")].iloc[0]
    assert fac["TPS"] == 30000.0 and fac["MFU"] == pytest.approx(25.0)
    assert [fac[c] for c in SIX] == pytest.approx([30.0, 20.0, 50.0, 60.0, 25.0, 40.0])
    assert fac["Avg"] == pytest.approx(37.5) and fac["val_loss"] == 3.25
    paper = table1()[("135m", "FAC_Split")]
    assert (fac["paper_TPS"], fac["paper_MFU"], fac["paper_Avg"]) == (paper["TPS"], paper["MFU"], paper["Avg"]) == (
        34430.0, 23.07, 37.41)
    assert pd.isna(df[df["model"] == "No_Split"].iloc[0]["MFU"])  # unknown peak: blank, not 0
    assert pd.isna(df[df["model"] == "Mamba-1"].iloc[0]["paper_TPS"])  # only in the paper's chart


def test_markdown_has_a_table_per_scale_and_lists_failures(sweep_dir):
    md = report.markdown(report.table(report.local_runs(sweep_dir)), "t")
    assert md.index("## tiny") < md.index("## 135m") < md.index("## Not completed")
    assert "| FAC_Split | 30,000 | 25.00 | 30.00 | 20.00 | 50.00 | 60.00 | 25.00 | 40.00 | 37.50 | 3.2500 | 34,430 |" in md
    assert "| No_Split | 25,000 | – | – |" in md
    assert "- `model=mamba,scale=1b` (failed): torch.OutOfMemoryError: CUDA out of memory" in md
    assert "## 1b" not in md  # no completed job there


def test_other_axes_label_rows_and_sort_numerically(tmp_path):
    for n in (4096, 512, 1024):
        for split in ("no_split", "fac_split"):
            make_job(tmp_path, f"data.seq_len={n},split={split}", {"data.seq_len": str(n), "split": split},
                     arch="flowhn", scale="135m", split=split, val_loss=3.0)
    labels = list(report.table(report.local_runs(tmp_path))["model"])
    assert labels == [f"{s} (seq_len={n})" for s in ("No_Split", "FAC_Split") for n in (512, 1024, 4096)]


def test_lm_eval_and_fixture_task_names_fill_the_papers_columns(tmp_path):
    names = ["arc_easy", "arc_challenge", "winogrande", "piqa", "hellaswag", "boolq"]
    make_job(tmp_path, "a", {"split": "fac_split"}, arch="flowhn", scale="tiny", split="fac_split",
             eval={f"fixture_{t}": {"acc": 0.5, "acc_norm": 0.6} for t in names}, eval_avg=0.5)
    row = report.table(report.local_runs(tmp_path)).iloc[0]
    assert [row[c] for c in SIX] == [50.0] * 6
    with open(write_results(tmp_path), newline="") as f:
        result = next(csv.DictReader(f))
    assert [result[c] for c in SIX] == ["0.5"] * 6 and result["arc_e_acc_norm"] == "0.6"


def test_results_csv_keeps_blank_columns_for_missing_values(sweep_dir):
    with open(write_results(sweep_dir), newline="") as f:
        reader = csv.DictReader(f)
        rows = {r["job"]: r for r in reader}
        columns = reader.fieldnames
    assert columns[:4] == ["job", "model", "scale", "split"]
    assert {"status", "error", "params", "tps", "mfu", "val_loss", *SIX, "eval_avg"} <= set(columns)
    failed = rows["model=mamba,scale=1b"]
    assert failed["status"] == "failed" and failed["split"] == "" and failed["tps"] == "" and failed["eval_avg"] == ""
    assert "OutOfMemoryError" in failed["error"]
    assert rows["model=flowhn,scale=135m,split=fac_split"]["eval_avg"] == "0.375"


def test_metrics_of_a_resumed_run_are_joined(tmp_path):
    first = [{"step": s, "train/loss": 10.0 - s} for s in (1, 2, 3)]
    second = [{"step": s, "train/loss": 10.0 - s} for s in (3, 4, 5)] + [{"step": 5, "val/loss": 4.0}]
    job = make_job(tmp_path, "j", {}, metrics={"version_0": first, "version_1": second})
    m = report.read_metrics(job)
    assert list(m["step"]) == [1, 2, 3, 4, 5]
    assert list(m["train/loss"]) == [9.0, 8.0, 7.0, 6.0, 5.0] and m["val/loss"].iloc[-1] == 4.0


def test_cli_writes_tables_and_figures(sweep_dir, capsys):
    assert report.main([str(sweep_dir)]) == 0
    out = sweep_dir / "report"
    for name in ("tps_mfu.png", "perf_curves.png", "loss_curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    with open(out / "table.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 5
    assert (out / "table.md").read_text().startswith("# table1_smoke")
    assert "Report of 5 jobs (4 completed)" in capsys.readouterr().out


def test_cli_refuses_bad_input_in_one_line(tmp_path, monkeypatch, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    assert "no such sweep folder" in capsys.readouterr().err
    assert report.main([str(tmp_path)]) == 2
    assert "no job folders" in capsys.readouterr().err
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert report.main([str(tmp_path), "--wandb-group", "g"]) == 2
    err = capsys.readouterr().err
    assert "WANDB_MODE=offline" in err and len(err.strip().splitlines()) == 1
