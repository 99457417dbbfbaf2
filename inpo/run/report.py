"""What a run tells its user: per-step and per-iteration metrics (TensorBoard, Weights &
Biases), the iteration table printed at the end, and a PNG of win rates, the held-out
excess and the pass rate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inpo.config import InpoConfig
from inpo.errors import InpoError
from inpo.run.state import RunState
from inpo.stages import ITERATION

COLUMNS = (
    ("iter", "iteration", "{}"),
    ("objective", "objective", "{}"),  # shown when not plain INPO
    ("pairs", "pairs", "{}"),
    ("ep", "epochs", "{}"),
    ("held-out excess (removed)", ("heldout_excess_start", "heldout_excess_end"), "{:.3g}"),
    ("train excess", ("train_excess_start", "train_excess_end"), "{:.3g}"),
    ("win vs ref [95% CI]", "win_vs_ref", None),
    ("win vs prev [95% CI]", "win_vs_prev", None),
    ("len", "mean_length", "{:.1f}"),
    ("pass", "pass_rate", "{:.3f}"),
    ("restarts", "restarts", "{}"),
    ("time s", None, None),
)
LEARN_SCALARS = ("loss", "margin", "margin_error", "grad_norm", "lr")
ITERATION_SCALARS = (
    "win_vs_ref",
    "win_vs_prev",
    "mean_length",
    "pass_rate",
    "heldout_excess_start",
    "heldout_excess_end",
    "train_excess_end",
    "pairs",
)


def iteration_row(state: RunState, t: int) -> dict[str, Any]:
    """One row per iteration: every done stage's info, with its time as <stage>_seconds."""
    row: dict[str, Any] = {"iteration": t}
    restarts = 0
    for stage in ITERATION:
        if state.is_done(t, stage.name):
            info = state.info(t, stage.name)
            row[f"{stage.name}_seconds"] = info.get("seconds")
            restarts += info.get("restarts", 0)
            row.update({k: v for k, v in info.items() if k not in ("seconds", "outputs")})
    if restarts:  # actors restarted during the iteration's stages (run_dir/faults.jsonl)
        row["restarts"] = restarts
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
    if isinstance(key, tuple):  # start > end of a learn stage
        a, b = row.get(key[0]), row.get(key[1])
        if a is None:
            return "-"
        cell = f"{fmt.format(a)} > {fmt.format(b)}"
        return cell + (f" ({removed(a, b):.0%})" if title.endswith("(removed)") else "")
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


def removed(start: float, end: float) -> float:
    """Share of the excess a learn stage removed: 1 = solved, 0 = no progress, < 0 = worse."""
    return 1 - end / start if start > 0 else 0.0


def plot(rows: list[dict[str, Any]], run_dir: Path) -> Path:
    """Per iteration: the held-out win rates, the held-out excess before and after the learn
    stage (whether it solved its sub-problem) and, where the oracle has one, the pass rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    passes = [(r["iteration"], r["pass_rate"]) for r in rows if r.get("pass_rate") is not None]
    fig, axes = plt.subplots(1, 3 if passes else 2, figsize=(13 if passes else 9, 3.5))
    ax1, ax2 = axes[:2]
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
    for name, label in (("heldout", "held-out"), ("train", "training")):
        pts = [r for r in rows if r.get(f"{name}_excess_start") is not None]
        if not pts:
            continue
        its = [r["iteration"] for r in pts]
        style = "-" if name == "heldout" else ":"
        for when, marker in (("start", "o"), ("end", "s")):
            y = [r[f"{name}_excess_{when}"] for r in pts]
            ax2.plot(its, y, style, marker=marker, label=f"{label}, {when}")
    ax2.set(xlabel="iteration", ylabel="loss - its floor, per pair", title="excess objective")
    ax2.set_ylim(bottom=0)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=8)
    if passes:
        x, y = zip(*passes, strict=True)
        axes[2].plot(x, y, marker="o")
        axes[2].set(xlabel="iteration (0 = pi_ref)", ylabel="pass rate", title="held-out pass rate")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole iterations
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
