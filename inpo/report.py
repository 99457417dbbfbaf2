"""What a run tells its user: per-step and per-iteration metrics (TensorBoard, Weights &
Biases), the iteration table printed at the end, and a PNG of win rates and loss."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inpo.config import InpoConfig
from inpo.errors import InpoError
from inpo.state import ITERATION, RunState

COLUMNS = (
    ("iter", "iteration", "{}"),
    ("pairs", "pairs", "{}"),
    ("loss 1st>last ep", ("loss_first_epoch", "loss_last_epoch"), "{:.3g}"),
    ("|h-target| 1st>last", ("margin_error_first_epoch", "margin_error_last_epoch"), "{:.3g}"),
    ("win vs ref [95% CI]", "win_vs_ref", None),
    ("win vs prev [95% CI]", "win_vs_prev", None),
    ("len", "mean_length", "{:.1f}"),
    ("pass", "pass_rate", "{:.3f}"),
    ("time s", None, None),
)
LEARN_SCALARS = ("loss", "margin", "margin_error", "grad_norm", "lr")
ITERATION_SCALARS = ("win_vs_ref", "win_vs_prev", "mean_length", "loss_last_epoch", "pairs")


def iteration_row(state: RunState, t: int) -> dict[str, Any]:
    """One row per iteration: every done stage's info, with its time as <stage>_seconds."""
    row: dict[str, Any] = {"iteration": t}
    for stage in ITERATION:
        if state.is_done(t, stage.name):
            info = state.info(t, stage.name)
            row[f"{stage.name}_seconds"] = info.get("seconds")
            row.update({k: v for k, v in info.items() if k not in ("seconds", "outputs")})
    return row


def init_row(state: RunState) -> dict[str, Any] | None:
    """Iteration 0, the initial policy pi_1: its win rate against pi_ref when they differ
    (model.reference), else pi_ref's own eval numbers (length, pass rate)."""
    for stage in ("eval_init", "eval_ref"):
        if state.is_done(0, stage):
            info = state.info(0, stage)
            shown = {k: v for k, v in info.items() if k not in ("seconds", "outputs", "prompts")}
            return {"iteration": 0, **shown}
    return None


def _cell(row: dict[str, Any], key, fmt: str | None, title: str) -> str:
    if title == "time s":
        seconds = sum(v for k, v in row.items() if k.endswith("_seconds") and v)
        return f"{seconds:.0f}" if seconds else "-"
    if isinstance(key, tuple):
        a, b = row.get(key[0]), row.get(key[1])
        return "-" if a is None or a != a else f"{fmt.format(a)} > {fmt.format(b)}"  # NaN: -
    value = row.get(key)
    if value is None:
        return "-"
    if fmt is None:  # a win rate with its interval
        lo, hi = row[f"{key}_ci"]
        return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"
    return fmt.format(value)


def table(rows: list[dict[str, Any]]) -> str:
    """The iteration table; a column no row has a value for (pass rate without the
    ifeval oracle) is left out."""
    body = [[_cell(r, key, fmt, title) for title, key, fmt in COLUMNS] for r in rows]
    keep = [i for i in range(len(COLUMNS)) if any(line[i] != "-" for line in body)]
    cells = [[COLUMNS[i][0] for i in keep]] + [[line[i] for i in keep] for line in body]
    widths = [max(len(c[i]) for c in cells) for i in range(len(keep))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], run_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [r["iteration"] for r in rows if r["iteration"] > 0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, label in (("win_vs_ref", "vs pi_ref"), ("win_vs_prev", "vs pi_t")):
        pts = [(r["iteration"], r[key], r[f"{key}_ci"]) for r in rows if r.get(key) is not None]
        if pts:
            x, y, ci = zip(*pts, strict=True)
            err = [
                [v - c[0] for v, c in zip(y, ci, strict=True)],
                [c[1] - v for v, c in zip(y, ci, strict=True)],
            ]
            ax1.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    ax1.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax1.set(xlabel="iteration", ylabel="win rate (oracle)", title="held-out win rate")
    if ax1.get_legend_handles_labels()[0]:  # no win rates when data.eval_size = 0
        ax1.legend()
    learned = [r for r in rows if r["iteration"] > 0]
    ax2.plot(its, [r.get("loss_first_epoch") for r in learned], marker="o", label="first epoch")
    ax2.plot(its, [r.get("loss_last_epoch") for r in learned], marker="o", label="last epoch")
    ax2.set(xlabel="iteration", ylabel="mean loss", title="learner loss")
    ax2.legend()
    fig.tight_layout()
    out = run_dir / "summary.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def format_value(v: Any) -> str:
    """A stage's info value as its one-line summary shows it."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {format_value(x)}" for k, x in v.items()) + "}"
    return str(v)


class Reporter:
    """TensorBoard and Weights & Biases, when configured."""

    def __init__(self, cfg: InpoConfig, run_dir: Path, run_id: str):
        self.tb = self.wandb = None
        if cfg.run.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        if cfg.run.wandb_project:
            try:
                import wandb
            except ImportError as e:
                raise InpoError("run.wandb_project is set but wandb is not installed") from e
            self.wandb = wandb.init(
                project=cfg.run.wandb_project,
                dir=str(run_dir),
                config=json.loads(cfg.model_dump_json()),
                resume="allow",
                id=run_id,
            )

    def learn_step(self, t: int, m: dict[str, Any]) -> None:
        if self.tb is not None:
            step = (t - 1) * 100_000 + m["step"]  # separates iterations on one axis
            for k in LEARN_SCALARS:
                self.tb.add_scalar(f"learn/{k}", m[k], step)

    def iteration(self, row: dict[str, Any]) -> None:
        if self.tb is not None:
            for k in ITERATION_SCALARS:
                if row.get(k) is not None:
                    self.tb.add_scalar(f"iteration/{k}", row[k], row["iteration"])
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if isinstance(v, int | float)})

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
