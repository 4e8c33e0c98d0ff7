"""The training-parity curves of call B (experiment=kernel_parity, seeds 1 and 2, three SSM paths):
validation loss and training loss (mean of 10 logged values; logged every 4th step) per run, into parity_curves.png.

  python experiments/bench/H200_eighteenth_session/call_B/plot_parity.py
"""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
PATHS = {"triton_keep": ("Triton, states kept (default)", "tab:blue"),
         "triton_nokeep": ("Triton, keep off", "tab:orange"), "torch": ("PyTorch", "tab:green")}


def series(path: Path, key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in csv.DictReader(open(path)) if r.get(key)}


fig, (val_ax, train_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
for name, (label, color) in PATHS.items():
    for seed, style in ((1, "-"), (2, "--")):
        path = HERE / "parity" / f"{name}_s{seed}.csv"
        val = series(path, "val/loss")
        val_ax.plot(list(val), list(val.values()), style, color=color, marker=".", label=f"{label}, seed {seed}")
        train = series(path, "train/loss")
        steps = sorted(train)
        means = [sum(train[s] for s in steps[i:i + 10]) / len(steps[i:i + 10]) for i in range(0, len(steps), 10)]
        train_ax.plot(steps[::10], means, style, color=color)
val_ax.set(xlabel="step", ylabel="validation loss", title="FlowHN 135M FAC_Split, eager, one H200", ylim=(4.6, 7.2))
train_ax.set(xlabel="step", ylabel="training loss (mean of 10 logged values)", ylim=(4.4, 8))
val_ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(HERE / "parity_curves.png", dpi=110)
