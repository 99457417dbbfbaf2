"""The Nash family on the real model: INPO, MNPO, SPPO, COMAL and online DPO trained by the
same loop on configs/smollm2.yaml (SmolLM2-135M-Instruct, the ifeval oracle), with the
same seeds, prompts, samples and learner budget; only the objective differs (and what it
needs: SPPO's win rates from round-robin comparisons, online DPO's hard labels).

Prints, per method and iteration, the held-out pass rate and the win rate against pi_ref
with its 95% interval (both from `inpo train`'s own eval: one answer per held-out prompt,
judged against pi_ref's answer by the same oracle), and the held-out excess each learn
stage removed. Runs go under --out (a method already there is resumed or just read).

    .venv/bin/python bench/family.py [--out DIR] [--only inpo,sppo] [overrides...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CONFIG = "configs/smollm2.yaml"
METHODS = {
    "inpo": [],
    # MNPO's authors' history of 2 (pi_t and pi_{t-1})
    "mnpo": ["loss.type=mnpo", "loss.history_weights=[0.8, 0.2]"],
    # P(y > pi_t) of each response: the mean over the prompt's other samples
    "sppo": ["loss.type=sppo", "pairing.strategy=round_robin"],
    # pi_ref reset to the current policy after iteration 2 (COMAL's outer loop, shrunk)
    "comal": ["loss.reference_reset_every=2"],
    # as configs/online_dpo.yaml: best vs worst, hard labels, fixed reference pi_ref
    "online_dpo": ["loss.type=dpo", "loss.beta=0.1", "pairing.label=hard"],
}


def train(name: str, out: Path, overrides: list[str]) -> Path:
    run = out / name
    if (run / "state.json").exists():
        cmd = ["train", "--resume", str(run)]
    else:
        cmd = ["train", CONFIG, *METHODS[name], *overrides, f"run.dir={run}"]
    print(f"[{name}] inpo {' '.join(cmd)}", flush=True)
    subprocess.run([sys.executable, "-m", "inpo.cli", *cmd], check=True)
    return run


def cell(row: dict, key: str) -> str:
    if row.get(key) is None:
        return "-"
    lo, hi = row[f"{key}_ci"]
    return f"{row[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def table(runs: dict[str, Path]) -> str:
    lines = [
        "| method | iteration | pass rate | win vs pi_ref [95% CI] | held-out excess removed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, run in runs.items():
        for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
            start, end = row.get("heldout_excess_start"), row.get("heldout_excess_end")
            removed = f"{1 - end / start:.0%}" if start else "-"
            lines.append(
                f"| {name} | {row['iteration']} | {row.get('pass_rate', float('nan')):.3f} "
                f"| {cell(row, 'win_vs_ref')} | {removed} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/family"))
    parser.add_argument("--only", default=",".join(METHODS))
    args, overrides = parser.parse_known_args()
    names = args.only.split(",")
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        parser.error(f"--only: unknown method(s) {unknown}; choose from {list(METHODS)}")
    runs = {name: train(name, args.out, overrides) for name in names}
    print(f"\n{CONFIG} {' '.join(overrides)}\n")
    print(table(runs))


if __name__ == "__main__":
    main()
