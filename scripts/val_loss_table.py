#!/usr/bin/env python
"""The validation-loss table of training runs side by side, as the training-parity device calls print it.

  python scripts/val_loss_table.py OUT RUN [RUN ...]

Each RUN is a run directory under OUT (train.py's hydra.run.dir, logger=csv); its metrics.csv files are found
anywhere below it. Prints a Markdown table: one row per logged step with a validation loss (steps as the CSV
logger wrote them), one column per run, "—" where a run has no value at that step.
"""

import csv
import glob
import sys


def val_losses(out: str, runs: list[str]) -> dict[int, dict[str, float]]:
    """{step: {run: val/loss}} from every metrics.csv below OUT/RUN."""
    val: dict[int, dict[str, float]] = {}
    for run in runs:
        for path in glob.glob(f"{out}/{run}/**/metrics.csv", recursive=True):
            for row in csv.DictReader(open(path)):
                if row.get("val/loss"):
                    val.setdefault(int(row["step"]), {})[run] = float(row["val/loss"])
    return val


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    out, runs = argv[0], argv[1:]
    val = val_losses(out, runs)
    print("| step | " + " | ".join(runs) + " |\n|---:|" + "---:|" * len(runs))
    for step in sorted(val):
        print(f"| {step} | " + " | ".join(f"{val[step][r]:.4f}" if r in val[step] else "—" for r in runs) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
