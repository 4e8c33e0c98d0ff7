"""The command line of ``python -m flowhn.report`` (see the package docstring)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from flowhn.errors import ConfigError
from flowhn.report import figures, seeds, seqlen
from flowhn.report.runs import Run, local_runs, wandb_runs
from flowhn.report.table import markdown, table


def write_report(runs: list[Run], out_dir: Path, title: str, ladder: pd.DataFrame | None = None,
                 ladder_source: Path | None = None) -> dict[str, Path]:
    """Write every output of the report into ``out_dir``; returns them by name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    df = table(runs)
    if runs:
        paths |= {
            "table_csv": out_dir / "table.csv",
            "table_md": out_dir / "table.md",
            "tps_mfu": out_dir / "tps_mfu.png",
            "perf_curves": out_dir / "perf_curves.png",
            "loss_curves": out_dir / "loss_curves.png",
        }
        df.to_csv(paths["table_csv"], index=False)
        paths["table_md"].write_text(markdown(df, title))
        figures.plot_tps_mfu(df, paths["tps_mfu"])
        figures.plot_curves(runs, [("perf/tps", "TPS (tokens/s)", 1.0), ("perf/mfu", "MFU (%)", 100.0)],
                            paths["perf_curves"])  # fmt: skip
        figures.plot_curves(runs, [("train/loss", "training loss", 1.0), ("val/loss", "validation loss", 1.0)],
                            paths["loss_curves"])  # fmt: skip
        groups = seeds.seed_groups(runs)
        if groups:  # a sweep over seeds: each configuration once, as mean ± spread
            paths |= {"seeds_md": out_dir / "seeds.md", "seeds_csv": out_dir / "seeds.csv",
                      "seed_curves": out_dir / "seed_curves.png"}
            paths["seeds_md"].write_text(seeds.seeds_markdown(groups, title))
            seeds.seeds_table(groups).to_csv(paths["seeds_csv"], index=False)
            figures.plot_seed_curves(groups, paths["seed_curves"])
    if ladder is not None:
        paths["seqlen_png"], paths["seqlen_md"] = out_dir / "seqlen.png", out_dir / "seqlen.md"
        paths["seqlen_md"].write_text(seqlen.markdown(ladder, ladder_source or Path("seqlen.csv")))
        figures.plot_seqlen(ladder, paths["seqlen_png"], "Throughput vs sequence length")
    try:
        from flowhn.report.html import write_html

        paths["html"] = write_html(runs, df, out_dir / "index.html", title, ladder)
    except ImportError as exc:  # plotly is a dependency; a bare GPU image may still lack it
        print(f"report: index.html not written ({exc}; pip install plotly)", file=sys.stderr)
    return paths


def _default_out(paths: list[Path], ladder: Path | None) -> Path:
    if len(paths) == 1:
        return paths[0] / "report"
    if paths:
        return Path(os.path.commonpath([str(p.resolve()) for p in paths])) / "report"
    return Path(ladder).parent / "report"


def main(argv: list[str] | None = None) -> int:
    from flowhn.report import __doc__ as doc

    parser = argparse.ArgumentParser(prog="python -m flowhn.report", description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("paths", type=Path, nargs="*", help="a sweep folder, or run folders (summary.json inside)")
    parser.add_argument("--out", type=Path, help="output folder (default: <sweep folder>/report)")
    parser.add_argument("--seqlen", type=Path, help="a bench seqlen-ladder CSV (found by itself as seqlen.csv "
                        "or seqlen_ladder.csv in the sweep folder)")  # fmt: skip
    parser.add_argument("--wandb-group", help="read the runs of this W&B group instead of the job folders")
    parser.add_argument("--wandb-project", default="flowhn-lab", help="W&B project of --wandb-group")
    parser.add_argument("--wandb-entity", default=None, help="W&B entity (default: your default entity)")
    args = parser.parse_args(argv)
    try:
        if not args.paths and not args.seqlen:
            raise ConfigError("paths: give a sweep folder, run folders, or --seqlen <csv>")
        if args.wandb_group:
            if len(args.paths) != 1:
                raise ConfigError("--wandb-group: give one folder for the report to go in")
            runs = wandb_runs(args.wandb_group, args.wandb_project, args.wandb_entity)
        else:
            runs = local_runs(args.paths) if args.paths else []
        ladder_path = args.seqlen
        if ladder_path is None and len(args.paths) == 1:
            ladder_path = seqlen.find(args.paths[0])
        ladder = seqlen.read(ladder_path) if ladder_path else None
    except ConfigError as err:
        print(f"report: {err}", file=sys.stderr)
        return 2
    if args.wandb_group:
        title = args.wandb_group
    elif len(args.paths) == 1:
        title = args.paths[0].resolve().name
    else:
        title = f"{len(runs)} runs" if runs else "Throughput vs sequence length"
    out = args.out or _default_out(args.paths, ladder_path)
    paths = write_report(runs, out, title, ladder, ladder_path)
    done = sum(r.completed for r in runs)
    where = paths.get("html") or paths.get("table_md") or paths.get("seqlen_md")
    if runs:
        print(f"Report of {len(runs)} jobs ({done} completed): {out}")
    if ladder is not None:
        print(f"Sequence-length ladder of {ladder['model'].nunique()} models: {paths['seqlen_png']}")
    if "html" in paths:
        print(f"Open {where.resolve().as_uri()} in a browser (no server needed)")
    return 0
