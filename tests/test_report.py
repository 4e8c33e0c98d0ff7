"""The sweep report and results.csv, on job folders written in train.py's formats."""

import csv
import html
import json
import re

import pandas as pd
import plotly.graph_objects
import plotly.offline
import pytest

from flowhn import report
from flowhn.report.html import pareto_front
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
    m = report.read_metrics(job, final_step=5)  # val/loss at the final step: train.py's post-fit validation
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
    # Not swept over seeds: no seed table
    assert not (out / "seeds.md").exists() and 'id="seeds"' not in (out / "index.html").read_text()


def test_two_rows_over_seeds_are_compared_seed_for_seed(tmp_path):
    """experiment=kernel_parity's reading: two rows (backends) over two seeds; seeds.md gives, per seed,
    the largest gap between the rows' curves, next to the gap between the seeds of each row."""
    d = tmp_path / "kernel_parity"
    for backend, offset in (("triton", 0.0), ("torch", 0.002)):
        for seed in (0, 1):
            train = [{"step": s, "train/loss": 7.0 - s / 10 + 0.3 * seed + offset * s / 4} for s in range(4, 24, 4)]
            val = [{"step": s, "val/loss": 6.0 - s / 20 + 0.1 * seed + offset} for s in (7, 15, 23)]
            make_job(d, f"model.ssm_backend={backend},seed={seed}", {"model.ssm_backend": backend, "seed": str(seed)},
                     arch="flowhn", scale="135m", split="fac_split", val_loss=val[-1]["val/loss"],
                     metrics={"version_0": train + val})
    assert report.main([str(d), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "seeds.md").read_text()
    section = text[text.index("### Seed for seed"):]
    rows = [line for line in section.splitlines() if line.startswith("| FAC_Split")]
    # training loss: the rows differ by 0.002 * s / 4 (largest at step 20: 0.01), the seeds by 0.3
    torch_vs_triton = [r for r in rows if " vs FAC_Split" in r and "training loss" in r]
    assert [r.split(" | ")[1:5] for r in torch_vs_triton] == [["0", "training loss", "0.0100", "0.0100"],
                                                              ["1", "training loss", "0.0100", "0.0100"]]
    assert any("seed vs seed | 0 vs 1 | training loss | 0.3000 | 0.3000 | 5 |" in r for r in rows)
    assert any("seed vs seed | 0 vs 1 | validation loss | 0.1000 | 0.1000 | 3 |" in r for r in rows)
    # not for more than two rows (the split ablation's four): its table is enough there
    assert "Seed for seed" not in seeds_markdown_of_four_rows(tmp_path)


def seeds_markdown_of_four_rows(tmp_path) -> str:
    d = tmp_path / "four"
    for split in ("no_split", "ae_split", "fa_split", "fac_split"):
        for seed in (0, 1):
            make_job(d, f"seed={seed},split={split}", {"seed": str(seed), "split": split}, arch="flowhn", scale="135m",
                     split=split, val_loss=5.0, metrics={"version_0": [{"step": 4, "train/loss": 6.0 + seed}]})
    assert report.main([str(d), "--out", str(tmp_path / "four_out")]) == 0
    return (tmp_path / "four_out" / "seeds.md").read_text()


def test_seeded_sweep_gives_mean_and_spread_per_row_and_where_validation_loss_turns(tmp_path):
    """A split x seed sweep: each split once, its numbers over the completed seeds; a run that did
    not complete is named and left out; a run whose validation loss turns up is flagged."""
    d = tmp_path / "split_ablation"
    val = {"no_split": [6.0, 5.5, 5.2], "fa_split": [6.2, 5.9, 6.0]}  # fa_split turns up after step 16
    for split, curve in val.items():
        for seed in (0, 1, 2):
            points = [v + 0.01 * seed for v in curve]
            # Lightning logs in-loop validation one step early; train.py's post-fit one (step 24) at 24.
            rows = [{"step": 8 * (i + 1) - 1, "val/loss": v} for i, v in enumerate(points[:-1])]
            rows += [{"step": 24, "val/loss": points[-1]}] + [{"step": s, "train/loss": 7.0 - s / 10} for s in range(1, 25)]
            make_job(d, f"seed={seed},split={split}", {"seed": str(seed), "split": split}, arch="flowhn", scale="135m",
                     split=split, steps=24, val_loss=points[-1], mfu=0.15 + 0.01 * seed, eval_avg=0.3 + 0.01 * seed,
                     tps=200_000 + 1_000 * seed + (0 if split == "no_split" else 40_000), metrics={"version_0": rows})
    make_job(d, "seed=3,split=no_split", {"seed": "3", "split": "no_split"}, status="stopped", arch="flowhn",
             scale="135m", split="no_split", val_loss=9.0, tps=1.0)
    assert report.main([str(d), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "seeds.md").read_text()
    # no_split: final val 5.20, 5.21, 5.22 -> mean 5.210, sample std 0.010; TPS 200k, 201k, 202k; the stopped seed left out
    assert ("| No_Split | 3/4 | 5.210 ± 0.010 (5.200–5.220, n=3) | 201.0k ± 1.0 (200.0k–202.0k, n=3) | "
            "16.0 ± 1.0 (15.0–17.0, n=3) | 31.0 ± 1.0 (30.0–32.0, n=3) | 24, 24, 24 |") in text
    assert "| FA_Split | 3/3 | 6.010 ± 0.010" in text and "| 16 (then rises), 16 (then rises), 16 (then rises) |" in text
    assert "- validation loss: the seed ranges do not overlap for No_Split/FA_Split" in text
    assert "- zero-shot Avg: the seed ranges of every pair overlap." in text
    assert "seed=0,split=fa_split (lowest at step 16)" in text
    assert "`seed=3,split=no_split` (stopped)" in text
    with open(tmp_path / "out" / "seeds.csv", newline="") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert rows["No_Split"]["completed"] == "3" and rows["No_Split"]["runs"] == "4"
    assert float(rows["FA_Split"]["TPS_mean"]) == 241_000.0 and rows["FA_Split"]["lowest_val_steps"] == "16 16 16"
    assert (tmp_path / "out" / "seed_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = html.unescape((tmp_path / "out" / "index.html").read_text())
    seeds_table = page[page.index('<table id="seeds"'):]
    assert "<td>No_Split</td><td>135m</td><td>3/4</td><td>5.210 ± 0.010 (5.200–5.220, n=3)</td>" in seeds_table


def test_cli_refuses_bad_input_in_one_line(tmp_path, monkeypatch, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    assert "no such sweep folder" in capsys.readouterr().err
    assert report.main([str(tmp_path)]) == 2
    assert "no job folders" in capsys.readouterr().err
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert report.main([str(tmp_path), "--wandb-group", "g"]) == 2
    err = capsys.readouterr().err
    assert "WANDB_MODE=offline" in err and len(err.strip().splitlines()) == 1


# -- metrics: validation steps, tokens and time ------------------------------------------------


def test_validation_after_the_last_step_is_one_point_at_that_step(tmp_path):
    """train.py's logging, for real: Lightning fit with in-loop validation every 2 of 4 steps, then
    the post-fit trainer.validate. Lightning logs the in-loop validations at steps 1 and 3 and the
    post-fit one at 4, so the last weights were drawn twice (at 3 and 4); the report puts each
    validation at the steps behind its weights, once."""
    import lightning as L
    import torch

    from flowhn.training.loggers import ResumableCSVLogger

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            loss = (self.w(batch) - 3.0).pow(2).mean()
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val/loss", (self.w(batch) - 3.0).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.ones(64, 1), batch_size=4)
    trainer = L.Trainer(max_steps=4, val_check_interval=2, limit_val_batches=1, log_every_n_steps=1,
                        logger=ResumableCSVLogger(str(tmp_path), name="csv", version=""), accelerator="cpu",
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    model = Tiny()
    trainer.fit(model, data, data)
    final = trainer.validate(model, data, verbose=False)[0]["val/loss"]
    trainer.loggers[0].save()

    raw = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    logged = raw[raw["val/loss"].notna()]
    assert list(logged["step"]) == [1, 3, 4]  # what Lightning does; if this changes, align_steps must too
    assert logged["val/loss"].iloc[1] == pytest.approx(final)  # steps 3 and 4 hold the same weights
    m = report.read_metrics(tmp_path, final_step=trainer.global_step)
    val = m[["step", "val/loss"]].dropna()
    assert list(val["step"]) == [2, 4]
    assert val["val/loss"].iloc[-1] == pytest.approx(final)
    assert list(m[["step", "train/loss"]].dropna()["step"]) == [0, 1, 2, 3]  # training rows stay


def test_tokens_and_training_time_axes():
    metrics = pd.DataFrame({"step": [0, 2, 4, 6, 8], "perf/step_time_ms": [None, None, 1000.0, 2000.0, None]})
    out = report.runs.with_axes(metrics, per_step=512.0)
    assert list(out["tokens"]) == [0, 1024, 2048, 3072, 4096]
    # steps 1-4 at the first window's 1 s, 5-6 at 2 s, after the last window its 2 s
    assert list(out["time_s"]) == [0.0, 2.0, 4.0, 8.0, 12.0]
    no_perf = report.runs.with_axes(pd.DataFrame({"step": [1, 2]}), per_step=None)
    assert no_perf["time_s"].isna().all() and no_perf["tokens"].isna().all()


def test_tokens_per_step_from_the_summary_or_the_config():
    assert report.runs.tokens_per_step({"tokens": 3072, "steps": 12}, {}) == 256
    config = {"data.batch_size": 4, "data.seq_len": 64, "trainer.devices": 2, "trainer.accumulate_grad_batches": 2}
    assert report.runs.tokens_per_step({}, config) == 4 * 64 * 2 * 2
    assert report.runs.tokens_per_step({}, {}) is None


# -- per run: config, command, peak, status --------------------------------------------------------


def test_run_details_command_differing_keys_and_mfu_peak(tmp_path):
    import yaml

    for split, lr in (("fac_split", 0.001), ("no_split", 0.002)):
        job = make_job(tmp_path, f"split={split}", {"split": split}, arch="flowhn", scale="tiny", split=split,
                       tps=30000.0, flops_per_token=1e9, mfu=0.25, num_devices=2)
        config = {"split": {"name": split}, "optim": {"lr": lr}, "data": {"seq_len": 64},
                  "paths": {"output_dir": str(job)}, "callbacks": {"ckpt": {"dirpath": f"{job}/checkpoints"}}}
        (job / "config.yaml").write_text(yaml.safe_dump(config))
        write_json(job / "job.json", {"name": job.name, "axes": {"split": split},
                                      "identity": ["experiment=x", f"split={split}"]})  # fmt: skip
    runs = {r.name: r for r in report.local_runs(tmp_path)}
    fac = runs["split=fac_split"]
    assert fac.command == "python train.py experiment=x split=fac_split"
    # MFU = TPS × FLOPs/token / (peak × devices), so the peak it used is 30000 × 1e9 / (0.25 × 2) / 1e12
    assert fac.peak_tflops == pytest.approx(60.0)
    diff = report.runs.differing_config(runs.values())
    # the checkpoint folder is each run's own folder: not a difference between them
    assert diff["split=fac_split"] == {"optim.lr": 0.001, "split.name": "fac_split"}


def test_stopped_running_and_unlaunched_jobs_are_listed_not_dropped(sweep_dir):
    make_job(sweep_dir, "model=hymba,scale=135m", {"model": "hymba", "scale": "135m"}, status="stopped",
             arch="hymba", scale="135m", error="SIGTERMException: stopped by SIGTERM at step 7")
    make_job(sweep_dir, "model=shm,scale=135m", {"model": "shm", "scale": "135m"}, status="running",
             arch="shm", scale="135m")
    unlaunched = sweep_dir / "model=jamba,scale=135m"
    unlaunched.mkdir()
    write_json(unlaunched / "job.json", {"name": unlaunched.name, "axes": {"model": "jamba", "scale": "135m"}})
    df = report.table(report.local_runs(sweep_dir))
    assert dict(zip(df["job"], df["status"]))["model=jamba,scale=135m"] == "missing"
    md = report.markdown(df, "t")
    for line in ("- `model=hymba,scale=135m` (stopped): SIGTERMException: stopped by SIGTERM at step 7",
                 "- `model=shm,scale=135m` (running): no error recorded",
                 "- `model=jamba,scale=135m` (missing): no error recorded"):
        assert line in md


# -- the HTML page ----------------------------------------------------------------------------


def figures_of(page: str) -> dict:
    start = page.index("const FIGURES = ") + len("const FIGURES = ")
    return json.loads(page[start : page.index(";\n", start)])


def test_index_html_is_one_self_contained_page(sweep_dir):
    make_job(sweep_dir, "model=hymba,scale=135m", {"model": "hymba", "scale": "135m"}, status="stopped",
             arch="hymba", scale="135m", error="SIGTERMException: stopped by SIGTERM at step 7",
             metrics={"version_0": [{"step": s, "train/loss": 9.0, "perf/tps": 900.0} for s in (1, 2)]})
    assert report.main([str(sweep_dir)]) == 0
    page = (sweep_dir / "report" / "index.html").read_text()
    # plotly.js inlined, and nothing else to fetch: no external script, stylesheet or image
    library = plotly.offline.get_plotlyjs()
    assert f"<script>{library}</script>" in page
    ours = page.replace(library, "")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", ours) and "<link" not in ours
    figs = figures_of(page)
    assert set(figs) == {"curves", "tradeoff"}
    for fig in figs.values():
        plotly.graph_objects.Figure(fig)  # plotly's own schema: raises on any property it does not know
    curves = figs["curves"]["data"]
    tps = [t for t in curves if t["yaxis"] == "y"]
    assert sorted(t["name"] for t in tps) == ["FAC_Split [135m]", "Hymba [135m] (stopped)"]
    fac = next(t for t in tps if t["name"] == "FAC_Split [135m]")
    assert fac["x"] == [1, 2, 3, 4] and fac["y"] == [1001.0, 1002.0, 1003.0, 1004.0]
    # the x-axis buttons carry one x list per trace, in trace order
    buttons = figs["curves"]["layout"]["updatemenus"][0]["buttons"]
    assert [b["label"] for b in buttons] == ["x: step", "x: tokens", "x: time"]
    assert all(len(b["args"][0]["x"]) == len(curves) for b in buttons)
    # trade-off: every run with a TPS and a quality; the stopped run from its logged windows
    points = {t["name"]: (t["x"][0], t["y"][0]) for t in figs["tradeoff"]["data"] if t["mode"] == "markers"
              and t["yaxis"] == "y"}  # fmt: skip
    assert points["FAC_Split [135m]"] == (30000.0, 3.25) and points["No_Split [135m]"] == (25000.0, 3.0)
    assert "Hymba [135m] (stopped)" not in points  # no validation yet: named below the chart instead
    assert "Hymba [135m] (stopped): no validation loss" in page
    front = next(t for t in figs["tradeoff"]["data"] if t["name"] == "Pareto front" and t["yaxis"] == "y")
    # LLaMA (20k, 3.5) and tiny FAC (200, 7.7) are beaten by No_Split (25k, 3.0) on both
    assert list(zip(front["x"], front["y"])) == [(25000.0, 3.0), (30000.0, 3.25)]
    # table: paper numbers beside ours, every job, unfinished ones marked
    assert '<td data-sort="34430.0" class="paper">34,430</td>' in page
    for job in ("model=mamba,scale=1b", "model=hymba,scale=135m"):
        assert f"<code>{html.escape(job)}</code>" in page
    assert page.count('<tr class="status-failed">') == 1 and page.count('<tr class="status-stopped">') == 1


def test_pareto_front_keeps_the_points_nothing_beats():
    pts = [(1.0, 3.0), (2.0, 3.5), (3.0, 3.2), (4.0, 4.0)]
    assert pareto_front(pts, lower_is_better=True) == [(1.0, 3.0), (3.0, 3.2), (4.0, 4.0)]
    acc = [(1.0, 40.0), (2.0, 38.0), (3.0, 39.0), (4.0, 35.0)]
    assert pareto_front(acc, lower_is_better=False) == [(1.0, 40.0), (3.0, 39.0), (4.0, 35.0)]


# -- the sequence-length ladder -----------------------------------------------------------------

LADDER = """model,seq_len,batch_size,tok_s,mfu,fa_ratio,status
FAC_Split,512,32,201000.0,0.3100,0.4500,ok
FAC_Split,1024,16,190000.5,0.3000,0.5500,ok
FAC_Split,4096,4,120000.0,0.2500,0.3300,ok
LLaMA,512,32,250000.0,0.4000,,ok
LLaMA,1024,16,230000.0,0.3900,,ok
LLaMA,4096,4,,,,OOM
"""


def test_seqlen_ladder_gives_a_png_a_table_and_a_chart(tmp_path, sweep_dir, capsys):
    ladder = tmp_path / "ladder.csv"
    ladder.write_text(LADDER)
    assert report.main(["--seqlen", str(ladder), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert (out / "seqlen.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "seqlen.md").read_text()
    assert "| model | 512 | 1,024 | 4,096 |" in md
    assert "| FAC_Split | 201,000 (31.0 %) | 190,000 (30.0 %) | 120,000 (25.0 %) |" in md
    assert "| LLaMA | 250,000 (40.0 %) | 230,000 (39.0 %) | OOM |" in md
    # beside a sweep's jobs it is found by name and drawn in the page, log2 lengths
    (sweep_dir / "seqlen.csv").write_text(LADDER)
    assert report.main([str(sweep_dir)]) == 0
    fig = figures_of((sweep_dir / "report" / "index.html").read_text())["seqlen"]
    plotly.graph_objects.Figure(fig)
    assert fig["layout"]["xaxis"]["type"] == "log" and fig["layout"]["xaxis"]["tickvals"] == [512, 1024, 4096]
    lines = {t["name"]: (t["x"], t["y"]) for t in fig["data"]}
    assert lines["LLaMA"] == ([512, 1024], [250000.0, 230000.0])  # the OOM length has no point
    assert (sweep_dir / "report" / "seqlen.png").exists()


def test_seqlen_csv_of_other_columns_is_refused_in_one_line(tmp_path, capsys):
    bad = tmp_path / "seqlen.csv"
    bad.write_text("model,seq_len,tps\nx,512,1\n")
    assert report.main(["--seqlen", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "expected ['model', 'seq_len'" in err
    assert report.main(["--seqlen", str(tmp_path / "absent.csv")]) == 2
    assert "absent.csv: no such file" in capsys.readouterr().err


def test_run_folders_side_by_side_keep_apart_and_report_into_their_parent(tmp_path, capsys):
    """train.py's own folders (logs/runs/<name>/<time>): two with the same time stamp stay apart."""
    a = make_job(tmp_path / "runs" / "flowhn-tiny", "2026-11-28_10-00-00", {}, arch="flowhn", scale="tiny",
                 split="fac_split", tps=100.0, val_loss=6.0)  # fmt: skip
    b = make_job(tmp_path / "runs" / "llama-tiny", "2026-11-28_10-00-00", {}, arch="llama", scale="tiny",
                 tps=120.0, val_loss=6.5)  # fmt: skip
    runs = report.local_runs([a, b])
    assert sorted(r.name for r in runs) == ["flowhn-tiny/2026-11-28_10-00-00", "llama-tiny/2026-11-28_10-00-00"]
    assert report.main([str(a), str(b)]) == 0
    assert (tmp_path / "runs" / "report" / "index.html").exists()
    assert "Report of 2 jobs (2 completed)" in capsys.readouterr().out
    assert report.main([]) == 2
    assert "give a sweep folder, run folders, or --seqlen" in capsys.readouterr().err


def test_the_benchs_ladder_csv_is_the_format_the_report_reads(tmp_path):
    """The two sides of the CSV agree: what ``python -m flowhn.bench`` writes in ladder mode."""
    from flowhn.bench import LADDER_COLUMNS, write_ladder_csv

    assert tuple(LADDER_COLUMNS) == report.seqlen.COLUMNS
    rows = {
        ("FAC_Split", 1024): {"model": "FAC_Split", "seq_len": 1024, "batch_size": 16, "tok_s": "190000.5",
                              "mfu": "0.3000", "fa_ratio": "0.5500", "status": "ok"},
        ("LLaMA", 4096): {"model": "LLaMA", "seq_len": 4096, "batch_size": 4, "tok_s": "", "mfu": "",
                          "fa_ratio": "", "status": "OOM"},
    }  # fmt: skip
    write_ladder_csv(tmp_path / "seqlen_ladder.csv", rows)
    df = report.seqlen.read(report.seqlen.find(tmp_path))
    assert list(df["model"]) == ["FAC_Split", "LLaMA"] and list(df["status"]) == ["ok", "OOM"]
    assert df["tok_s"].iloc[0] == 190000.5 and df["mfu"].iloc[0] == 0.3 and pd.isna(df["tok_s"].iloc[1])


def test_long_curves_are_thinned_keeping_the_ends():
    from flowhn.report.html import thin

    points = pd.DataFrame({"step": range(10_001)})
    kept = thin(points, limit=2000)
    assert len(kept) <= 2000 and kept["step"].iloc[0] == 0 and kept["step"].iloc[-1] == 10_000
    assert thin(points.iloc[:50], limit=2000).equals(points.iloc[:50])


def test_a_job_that_has_only_just_started_is_read_without_metrics(tmp_path):
    job = make_job(tmp_path, "j", {}, status="running", arch="llama", scale="tiny")
    (job / "csv").mkdir()
    (job / "csv" / "metrics.csv").write_text("")  # created, nothing written yet
    (run,) = report.local_runs(tmp_path)
    assert run.status == "running" and run.metrics.empty
