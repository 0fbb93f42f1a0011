"""Training-curve PNGs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_curves(history: list[dict], path: Path, title: str, metric: str) -> None:
    """Loss terms (left axis, log scale) and the validation metric (right axis) against the step."""
    loss_keys = sorted({k for row in history for k in row if k.startswith("loss")})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key in loss_keys:
        pts = [(r["step"], r[key]) for r in history if key in r]
        if pts:
            ax.plot(*zip(*pts), label=key, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if loss_keys:
        ax.set_yscale("log")
    val = [(r["step"], r[metric]) for r in history if metric in r]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), "o-", color="black", label=metric)
        ax2.set_ylabel(metric)
        ax2.legend(loc="lower right")
    if loss_keys:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
