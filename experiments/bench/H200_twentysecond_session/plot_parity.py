"""Calls B and C's curves: one command (experiment=kernel_parity: FlowHN 135M FAC_Split, seed 0, the Triton path,
eager, 200 steps) run twice for each of residual_dtype=fp32 / autocast and optim.master_weights on (call B) / off
(call C), four processes at once per call: validation loss and training loss (mean of 10 logged values; logged
every 4th step) per run, into parity_curves.png.

  python experiments/bench/H200_twentysecond_session/plot_parity.py
"""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
COLORS = {"fp32": "tab:blue", "bf16": "tab:orange"}
STYLES = {("mw", "a"): "-", ("mw", "b"): "--", ("nomw", "a"): ":", ("nomw", "b"): "-."}


def logged(path: Path, key: str) -> dict[int, float]:
    return {int(row["step"]): float(row[key]) for row in csv.DictReader(open(path)) if row.get(key)}


fig, (val_ax, train_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
for weights in ("mw", "nomw"):
    for stream in ("fp32", "bf16"):
        for run in ("a", "b"):
            path = HERE / "parity" / f"{weights}_{stream}_{run}.csv"
            label = (f"{'bf16' if stream == 'bf16' else 'fp32'} stream, master weights "
                     f"{'on' if weights == 'mw' else 'off'}, run {run}")
            style, color = STYLES[(weights, run)], COLORS[stream]
            val = logged(path, "val/loss")
            val_ax.plot(list(val), list(val.values()), style, color=color, marker=".", label=label)
            train = logged(path, "train/loss")
            steps = sorted(train)
            groups = [steps[i:i + 10] for i in range(0, len(steps), 10)]
            train_ax.plot([g[0] for g in groups], [sum(train[s] for s in g) / len(g) for g in groups], style, color=color)
val_ax.set(xlabel="step", ylabel="validation loss", title="FlowHN 135M FAC_Split, seed 0, one H200", ylim=(4.6, 7.2))
train_ax.set(xlabel="step", ylabel="training loss (mean of 10 logged values)", ylim=(4.4, 8))
val_ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(HERE / "parity_curves.png", dpi=110)
