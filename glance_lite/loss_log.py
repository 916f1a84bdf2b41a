"""The per-phase loss log of a training run: `{phase}_loss.csv`, appended step by step and cut back on resume,
and its curve as a PNG."""

from __future__ import annotations

import os
import time
from pathlib import Path


class LossLog:
    """`{phase}_loss.csv` (step, loss, lr, timestep, seconds), appended step by step; on resume the rows after the
    checkpoint are dropped (those steps are trained again)."""

    HEADER = "step,loss,lr,timestep,seconds\n"

    def __init__(self, path: Path, start_step: int, enabled: bool = True):
        self.path, self.enabled = path, enabled
        self.rows = [r for r in read_loss_csv(path) if r["step"] <= start_step] if start_step else []
        self._last = time.perf_counter()
        if enabled:
            from .checkpoint import write_text_atomically

            write_text_atomically(path, "".join([self.HEADER] + [self._line(r) for r in self.rows]))

    @staticmethod
    def _line(r: dict) -> str:
        return f"{r['step']},{r['loss']:.8g},{r['lr']:.8g},{r['timestep']:.4f},{r['seconds']:.4f}\n"

    def record(self, step: int, loss: float, lr: float, timestep: float) -> None:
        now = time.perf_counter()
        row = {"step": step, "loss": loss, "lr": lr, "timestep": timestep, "seconds": now - self._last}
        self._last = now
        self.rows.append(row)
        if self.enabled:
            with self.path.open("a") as f:
                f.write(self._line(row))

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.rows]


def read_loss_csv(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text().splitlines()[1:]:
        try:
            step, loss, lr, timestep, seconds = line.split(",")
            rows.append({"step": int(step), "loss": float(loss), "lr": float(lr), "timestep": float(timestep), "seconds": float(seconds)})
        except ValueError:  # the last row, cut short by a kill while it was appended: that step is trained again
            break
    return rows


def plot_loss_curve(rows: list[dict], path: Path, title: str) -> Path:
    """Per-step loss (one random phase timestep each, hence noisy) and its running mean, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    window = max(1, len(losses) // 10)
    mean = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, ".", alpha=0.5, label="loss per step")
    ax.plot(steps, mean, "-", label=f"running mean ({window})")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching MSE")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
