"""Call B's curves: one command (experiment=kernel_parity, seed 0, the Triton path) run twice with the states
kept and twice with keep off, four processes at once: validation loss and training loss (mean of 10 logged
values; logged every 4th step) per run, into parity_curves.png.

  python experiments/bench/H200_nineteenth_session/call_B/plot_parity.py
"""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
RUNS = {"keep_a": ("states kept, run a", "tab:blue", "-"), "keep_b": ("states kept, run b", "tab:blue", "--"),
        "nokeep_a": ("keep off, run a", "tab:orange", "-"), "nokeep_b": ("keep off, run b", "tab:orange", "--")}


def logged(path: Path, key: str) -> dict[int, float]:
    return {int(row["step"]): float(row[key]) for row in csv.DictReader(open(path)) if row.get(key)}


fig, (val_ax, train_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
for name, (label, color, style) in RUNS.items():
    val = logged(HERE / "parity" / f"{name}.csv", "val/loss")
    val_ax.plot(list(val), list(val.values()), style, color=color, marker=".", label=label)
    train = logged(HERE / "parity" / f"{name}.csv", "train/loss")
    steps = sorted(train)
    groups = [steps[i:i + 10] for i in range(0, len(steps), 10)]
    train_ax.plot([g[0] for g in groups], [sum(train[s] for s in g) / len(g) for g in groups], style, color=color)
val_ax.set(xlabel="step", ylabel="validation loss", title="FlowHN 135M FAC_Split, seed 0, Triton path, one H200",
           ylim=(4.6, 7.2))
train_ax.set(xlabel="step", ylabel="training loss (mean of 10 logged values)", ylim=(4.4, 8))
val_ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(HERE / "parity_curves.png", dpi=110)
