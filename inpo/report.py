"""End-of-run report: the iteration table and a PNG of win rates and loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLUMNS = (
    ("iter", "iteration", "{}"),
    ("pairs", "pairs", "{}"),
    ("loss", "loss_last", "{:.4g}"),
    ("margin", "margin_last", "{:.3g}"),
    ("win vs ref [95% CI]", "win_vs_ref", None),
    ("win vs prev [95% CI]", "win_vs_prev", None),
    ("len", "mean_length", "{:.1f}"),
    ("time s", None, None),
)


def _cell(row: dict[str, Any], key: str | None, fmt: str | None, title: str) -> str:
    if title == "time s":
        return f"{sum(v for k, v in row.items() if k.endswith('_seconds') and v):.0f}"
    value = row.get(key)
    if value is None:
        return "-"
    if fmt is None:  # a win rate with its interval
        lo, hi = row[f"{key}_ci"]
        return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"
    return fmt.format(value)


def table(rows: list[dict[str, Any]]) -> str:
    cells = [[title for title, _, _ in COLUMNS]]
    cells += [[_cell(r, key, fmt, title) for title, key, fmt in COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], run_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [r["iteration"] for r in rows]
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
    ax1.legend()
    ax2.plot(its, [r.get("loss_first") for r in rows], marker="o", label="first step")
    ax2.plot(its, [r.get("loss_last") for r in rows], marker="o", label="last step")
    ax2.set(xlabel="iteration", ylabel="INPO loss", title="learner loss")
    ax2.legend()
    fig.tight_layout()
    out = run_dir / "summary.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
