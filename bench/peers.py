"""inpo side by side with TRL's online DPO (`trl.experimental.online_dpo.OnlineDPOTrainer`) on
configs/smollm2.yaml's task: SmolLM2-135M-Instruct learning checkable instructions, the same
training prompts, the same held-out prompts and the same scorer (the builtin ifeval oracle:
its instruction score is TRL's reward function).

- inpo: `inpo train CONFIG` as shipped, in a subprocess.
- TRL: online DPO in a subprocess with the recipe's peak lr, warmup ratio and cosine decay,
  fp32 weights with the recipe's learner.autocast (auto: bf16 products where the CPU has
  bf16 instructions, resolved once for both sides), no gradient checkpointing, one step per
  learner.global_batch_size prompts, the recipe's sampling temperature, top_p and maximum
  new tokens, one pass over the prompts inpo's iterations draw; TRL's defaults elsewhere
  (beta 0.1, sigmoid loss, two samples per prompt, AdamW betas 0.9/0.999).

Evaluation points are every N prompts seen (--every; default the gcd of the iterations'
prompt counts, so each iteration's end is one): TRL's policy is written there (that write
is not timed); inpo's is the output of its last finished iteration (pi_ref before the first).
Afterwards every distinct policy is scored by the same code, inpo's eval (`inpo.run.evaluate`)
on vLLM: one seeded answer per held-out prompt at eval.temperature, the pass rate (95%
interval over prompts) and the oracle's win rate against pi_ref's answers. Training seconds
exclude in-loop evaluation on both sides: inpo's eval stages are subtracted (the vLLM start
its first eval absorbed is charged back), and TRL runs none.

The last line is the ratio of the training seconds TRL takes to first reach its final pass
rate to those inpo takes to first reach that pass rate, or a sentence saying inpo does not.
Each side's results are kept under --out; a second run reuses them (delete --out to measure
again). Overrides (k=v) go to both sides, e.g. for a quick try:

    .venv/bin/python bench/peers.py [--out runs/peers] [--every N] [k=v ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no Hub here: everything comes from disk

CONFIG = "configs/smollm2.yaml"
#: the line `inpo train` prints as each stage ends
STAGE_LINE = re.compile(r"^\[(?:setup|iter (\d+))\] (\w+) done in ([\d.]+)s")
EVAL_STAGES = ("eval_ref", "eval_init", "eval")
#: pi_ref's answers are sampled as the trainer samples them (so they equal its eval_ref)
PURPOSE_REF = "eval_ref"
#: one seed per held-out prompt for every trained policy: both methods' answers at a point
#: differ by the policy only
PURPOSE = "eval_peers"
TRL_WORKER = "--trl-worker"
POINT_LINE = "point:"  # what the TRL worker prints as it writes a policy


@dataclass
class Point:
    """One method's policy after ``prompts`` prompts seen."""

    prompts: int
    seconds: float  # training wall seconds it took to produce the policy
    tokens: int  # tokens generated in training up to it
    policy: str  # its directory
    label: str  # what it is, for the table
    metrics: dict[str, Any] = field(default_factory=dict)


# --- pure helpers (tests/unit/test_peers.py) ----------------------------------------------
def default_every(counts: list[int]) -> int:
    """The largest N such that every iteration's end is a multiple of N prompts."""
    return math.gcd(*counts)


def inpo_seconds(events: list[tuple[int, str, float, float]], engine_start: float) -> dict:
    """Training seconds at the end of each iteration (its sync) from `inpo train`'s stage
    lines (iteration, stage, stage seconds, seconds since the process started when printed):
    the wall clock there, less every eval stage before it, plus ``engine_start`` (the vLLM
    start the first eval stage absorbed, which training would otherwise have paid)."""
    out, evals = {}, 0.0
    for it, stage, secs, at in events:
        if stage in EVAL_STAGES:
            evals += secs
        elif stage == "sync":
            out[it] = at - evals + engine_start
    return out


def inpo_points(
    every: int, ends: list[int], seconds: dict[int, float], tokens: list[int], runs: Path, ref: str
) -> list[Point]:
    """inpo's policy at every ``every`` prompts: the output of the last iteration that ended
    (``ends``: cumulative prompts at each iteration's end) at or before the point."""
    points = []
    for p in range(every, ends[-1] + 1, every):
        done = sum(e <= p for e in ends)
        if done == 0:
            points.append(Point(p, 0.0, 0, ref, "pi_ref"))
            continue
        fresh = ends[done - 1] == p
        label = f"pi_{done + 1}" + ("" if fresh else f" (= {ends[done - 1]})")
        policy = str(runs / f"iter_{done}" / "policy")
        points.append(Point(p, seconds[done], sum(tokens[:done]), policy, label))
    return points


def first_reach(points: list[Point], target: float) -> Point | None:
    """The first point (fewest prompts) whose pass rate is at or above ``target``."""
    for p in sorted(points, key=lambda q: q.prompts):
        if p.metrics["pass_rate"] >= target - 1e-12:
            return p
    return None


def ratio_line(trl: list[Point], inpo: list[Point]) -> str:
    """`N.NNx`: TRL's seconds to first reach its final pass rate over inpo's seconds to first
    reach that pass rate; or a sentence when the ratio has no meaning."""
    final = max(trl, key=lambda q: q.prompts).metrics["pass_rate"]
    t = first_reach(trl, final)
    i = first_reach(inpo, final)
    if i is None:
        return f"inpo does not reach TRL's final pass rate ({final:.3f}) at any evaluation point."
    if i.seconds <= 0:
        return f"inpo's starting policy (pi_ref) already has TRL's final pass rate ({final:.3f})."
    return f"{t.seconds / i.seconds:.2f}x"


# --- the two sides --------------------------------------------------------------------------
def run_inpo(config: str, overrides: list[str], out: Path) -> dict:
    """`inpo train` in a subprocess; its stage lines timestamped as they are printed."""
    done = out / "inpo.json"
    if done.exists():
        print(f"[inpo] reusing {done}", flush=True)
        return json.loads(done.read_text())
    runs = out / "inpo"
    if (runs / "state.json").exists():
        raise SystemExit(f"{runs} holds an unfinished run whose timings are lost: delete it")
    cmd = [sys.executable, "-m", "inpo.cli", "train", config, *overrides, f"run.dir={runs}"]
    print(f"[inpo] {' '.join(cmd[2:])}", flush=True)
    events, log = [], out / "inpo.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=f, text=True, env=env)
        for line in proc.stdout:
            at = time.time() - t0
            f.write(line)
            m = STAGE_LINE.match(line)
            if m:
                events.append((int(m.group(1) or 0), m.group(2), float(m.group(3)), at))
                print(f"[inpo {at:6.0f}s] {line.rstrip()[:110]}", flush=True)
    if proc.wait():
        raise SystemExit(f"inpo train failed ({proc.returncode}); see {log}")
    state = json.loads((runs / "state.json").read_text())["done"]
    iters = sorted(int(t) for t in state if t != "0")
    # the engine start: eval_ref is a start plus one eval, iteration 1's eval the eval alone
    evals = {(it, s): secs for it, s, secs, _ in events if s in EVAL_STAGES}
    engine = max(0.0, evals.get((0, "eval_ref"), 0.0) - evals.get((1, "eval"), 0.0))
    result = {
        "events": events,
        "engine_start": engine,
        "wall": time.time() - t0,
        "seconds": inpo_seconds(events, engine),
        "tokens": [state[str(t)]["generate"]["tokens"] for t in iters],
        "pairs": [state[str(t)]["judge"]["pairs"] for t in iters],
        "steps": [state[str(t)]["learn"]["steps"] for t in iters],
        "eval_seconds": sum(evals.values()),
    }
    done.write_text(json.dumps(result))
    return json.loads(done.read_text())  # as a reused one reads (string keys)


def run_trl(config: str, overrides: list[str], out: Path, every: int) -> dict:
    """TRL's online DPO in a subprocess (this file, `TRL_WORKER`); its points are stamped
    in the worker and timed here from the process start, less the policy writes."""
    done = out / "trl.json"
    if done.exists():
        print(f"[trl] reusing {done}", flush=True)
        return json.loads(done.read_text())
    cmd = [sys.executable, __file__, TRL_WORKER, "--config", config, "--out", str(out)]
    cmd += ["--every", str(every), *overrides]
    print(f"[trl] {' '.join(cmd[1:])}", flush=True)
    log = out / "trl.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    t0 = time.time()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=f, text=True, env=env)
        for line in proc.stdout:
            f.write(line)
            if line.startswith(POINT_LINE):
                print(f"[trl {time.time() - t0:6.0f}s] {line.rstrip()}", flush=True)
    if proc.wait():
        raise SystemExit(f"TRL worker failed ({proc.returncode}); see {log}")
    result = json.loads((out / "trl_worker.json").read_text())
    saved = 0.0
    for p in result["points"]:
        p["seconds"] = p["at"] - t0 - saved
        saved += p["save_seconds"]
    result["wall"] = time.time() - t0
    done.write_text(json.dumps(result))
    return result


def base_policy(cfg, out: Path) -> str:
    """model.policy's directory, resolved as `inpo train` resolves it."""
    from inpo.models import resolve_model

    tiny = {
        "layers": cfg.model.tiny_layers,
        "hidden": cfg.model.tiny_hidden,
        "tied_embeddings": cfg.model.tiny_tied_embeddings,
        "seed": cfg.run.seed,
    }
    return str(resolve_model(cfg.model.policy, "model.policy", out, tiny))


def train_prompts(cfg, tokenizer) -> tuple[list, list[int]]:
    """The prompts inpo's iterations draw, in its order (those within
    data.max_prompt_tokens, as its generate stage keeps), and each iteration's count."""
    from inpo.data import load_prompt_sets
    from inpo.generation.stage import tokenize_prompts

    sets = load_prompt_sets(cfg.data, cfg.run.iterations, cfg.run.seed)
    prompts, counts = [], []
    for t in range(1, cfg.run.iterations + 1):
        pool, ids = sets.iteration(t, cfg.data)
        chosen = [pool[i] for i in ids]
        kept, _ = tokenize_prompts(tokenizer, chosen, cfg.data.max_prompt_tokens, f"iter {t}")
        prompts += [chosen[i] for i in kept]
        counts.append(len(ids))
    return prompts, counts


def trl_worker(argv: list[str]) -> None:
    """Train with TRL's online DPO; write the policy at every point (untimed) and the
    stamps to OUT/trl_worker.json."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--every", type=int, required=True)
    args, overrides = ap.parse_known_args(argv)

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from inpo.config import load_config
    from inpo.data import response_text
    from inpo.generation.generator import stop_token_ids
    from inpo.judging.constraints import constraint_score
    from inpo.learning.rank import policy_tensors, write_hf_policy

    cfg = load_config(args.config, overrides)
    lc, gc = cfg.learner, cfg.generation
    model_dir = base_policy(cfg, args.out)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts, _ = train_prompts(cfg, tokenizer)
    batch = lc.global_batch_size
    steps_per_point = args.every // batch
    stops = set(stop_token_ids(model_dir))
    counted = {"tokens": 0}

    def ifeval_score(prompts, completions, completion_ids, **_) -> list[float]:
        # inpo's oracle score of each answer; TRL keeps the higher of a prompt's two
        for ids in completion_ids:
            ends = [i for i, tok in enumerate(ids) if tok in stops]
            counted["tokens"] += ends[0] + 1 if ends else len(ids)
        return [
            constraint_score(p, response_text(c)) for p, c in zip(prompts, completions, strict=True)
        ]

    points: list[dict] = []

    class WritePolicies(TrainerCallback):
        def on_step_end(self, args_, state, control, model=None, **_):
            if state.global_step % steps_per_point and state.global_step != state.max_steps:
                return
            at = time.time()
            policy = args.out / "trl" / f"step_{state.global_step}"
            # clones: safetensors refuses the tied embedding's shared storage
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            write_hf_policy(policy_tensors(weights, model.config), model.config, model_dir, policy)
            points.append(
                {
                    "step": state.global_step,
                    "prompts": state.global_step * batch,
                    "at": at,
                    "save_seconds": time.time() - at,
                    "tokens": counted["tokens"],
                    "policy": str(policy),
                }
            )
            print(f"{POINT_LINE} step {state.global_step}, {points[-1]['prompts']} prompts")

    settings = {
        "learning_rate": lc.lr,
        "lr_scheduler_type": "cosine",
        "warmup_steps": lc.warmup_ratio,  # below 1: a share of the steps
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "num_train_epochs": 1,
        "bf16": lc.autocast == "bfloat16",
        "gradient_checkpointing": lc.gradient_checkpointing,
        "temperature": gc.temperature,
        "top_p": gc.top_p,
        "max_new_tokens": gc.max_new_tokens,
        "max_length": lc.max_length,
        "seed": cfg.run.seed,
    }
    targs = OnlineDPOConfig(
        output_dir=str(args.out / "trl" / "trainer"),
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        logging_steps=steps_per_point,
        **settings,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = OnlineDPOTrainer(
        model=model,
        reward_funcs=ifeval_score,
        args=targs,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        processing_class=tokenizer,
        callbacks=[WritePolicies()],
    )
    trainer.train()
    shown = (
        "learning_rate lr_scheduler_type warmup_steps per_device_train_batch_size "
        "gradient_accumulation_steps num_train_epochs max_steps bf16 gradient_checkpointing "
        "temperature top_p top_k min_p repetition_penalty max_new_tokens max_length beta "
        "loss_type missing_eos_penalty disable_dropout use_vllm optim adam_beta1 adam_beta2 "
        "adam_epsilon weight_decay max_grad_norm seed"
    ).split()
    every_setting = targs.to_dict()
    result = {
        "points": points,
        "steps": trainer.state.global_step,
        "prompts": len(prompts),
        "settings": {k: every_setting.get(k) for k in shown},
        "versions": {m: sys.modules[m].__version__ for m in ("trl", "transformers", "torch")},
    }
    (args.out / "trl_worker.json").write_text(json.dumps(result, default=str))


# --- evaluation -----------------------------------------------------------------------------
def probe_logp(policy: str, probe: tuple[list[int], int]) -> float:
    """The probe's log-prob under the saved policy in fp32 transformers: what the vLLM
    generator must reproduce after loading it (inpo's sync check)."""
    import torch
    from transformers import AutoModelForCausalLM

    from inpo.algo.loss import sequence_logps

    ids, prompt_len = probe
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
    mask = torch.zeros(1, len(ids) - 1, dtype=torch.long)
    mask[0, prompt_len - 1 :] = 1
    return sequence_logps(logits[:, :-1], x[:, 1:], mask).item()


def files_digest(policy: str) -> str:
    """inpo's weights hash of a policy directory's safetensors."""
    from inpo.models import saved_tensors, tensor_digest, weights_digest

    return weights_digest((name, tensor_digest(t)) for name, t in saved_tensors(policy))


def evaluate(cfg, model_dir: str, policies: list[str], out: Path) -> dict[str, dict]:
    """inpo's eval of each policy on the held-out prompts: one vLLM generator, each policy
    loaded in place and checked (hash + probe) as inpo's weight sync is."""
    done = out / "eval.json"
    results = json.loads(done.read_text()) if done.exists() else {}
    todo = [p for p in dict.fromkeys([model_dir, *policies]) if p not in results]
    if not todo:
        return results
    from transformers import AutoTokenizer

    from inpo.data import load_prompt_sets, probe_sequence
    from inpo.generation.stage import sample, start_generators
    from inpo.judging.build import build_oracle
    from inpo.judging.constraints import constraint_score
    from inpo.plan.cluster import start_ray
    from inpo.plan.pool import stop
    from inpo.rows import read_answers, write_rows
    from inpo.run.evaluate import eval_rows, judge_against, win_rate

    sets = load_prompt_sets(cfg.data, cfg.run.iterations, cfg.run.seed)
    ids = sets.eval_ids
    prompts = [sets.eval_pool[i] for i in ids]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    probe = probe_sequence(tokenizer)
    oracle = build_oracle(cfg, "cpu")
    max_tokens = cfg.eval.max_new_tokens or cfg.generation.max_new_tokens
    answers = out / "answers"
    answers.mkdir(exist_ok=True)
    t0 = time.time()
    generators = start_generators(cfg, start_ray(cfg), model_dir, probe_len=len(probe[0]))
    print(f"[eval] vLLM generator started in {time.time() - t0:.0f}s", flush=True)
    try:
        ref_file = answers / "pi_ref.jsonl"
        if not ref_file.exists():
            temp = cfg.eval.temperature
            rows = sample(
                generators, cfg, tokenizer, prompts, ids, PURPOSE_REF, 1, temp, max_tokens
            )
            write_rows(ref_file, eval_rows(rows))
        ref = read_answers(ref_file)
        for policy in todo:
            t1 = time.time()
            generators.sync(policy, probe, probe_logp(policy, probe), files_digest(policy))
            temp = cfg.eval.temperature
            rows = eval_rows(
                sample(generators, cfg, tokenizer, prompts, ids, PURPOSE, 1, temp, max_tokens)
            )
            info = judge_against(oracle, cfg, rows, {"ref": ref})
            passed = win_rate(
                [float(constraint_score(r["prompt"], r["response"]) == 1.0) for r in rows]
            )
            info["pass_rate_ci"] = [passed["ci_low"], passed["ci_high"]]
            name = re.sub(r"\W+", "_", policy).strip("_")[-80:]
            write_rows(answers / f"{name}.jsonl", rows)
            results[policy] = info
            done.write_text(json.dumps(results))
            print(
                f"[eval {time.time() - t1:4.0f}s] {policy}: pass {info['pass_rate']:.3f}, "
                f"win vs pi_ref {info['win_vs_ref']:.3f}",
                flush=True,
            )
    finally:
        stop(generators)
    return results


# --- the report -----------------------------------------------------------------------------
def interval(value: float, ci: list[float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def table(rows: list[tuple[str, Point]]) -> str:
    head = (
        f"{'prompts':>7}  {'method':<6}  {'policy':<14}  {'train s':>7}  {'gen tokens':>10}  "
        f"{'pass [95% CI]':<21}  {'win vs pi_ref [95% CI]':<22}  {'len':>4}"
    )
    lines = [head, "  ".join("-" * w for w in (7, 6, 14, 7, 10, 21, 22, 4))]
    for method, p in rows:
        m = p.metrics
        lines.append(
            f"{p.prompts:>7}  {method:<6}  {p.label:<14}  {p.seconds:>7.0f}  {p.tokens:>10}  "
            f"{interval(m['pass_rate'], m['pass_rate_ci']):<21}  "
            f"{interval(m['win_vs_ref'], m['win_vs_ref_ci']):<22}  {m['mean_length']:>4.1f}"
        )
    return "\n".join(lines)


def settings_lines(cfg, inpo: dict, trl: dict, counts: list[int], every: int) -> list[str]:
    g, lc, loss = cfg.generation, cfg.learner, cfg.loss
    steps = ", ".join(str(s) for s in inpo["steps"])
    pairs = ", ".join(str(s) for s in inpo["pairs"])
    ts = trl["settings"]
    return [
        f"inpo: {cfg.run.iterations} iterations of {counts} prompts; per iteration K = "
        f"{g.num_samples} samples per prompt at temperature {g.temperature}, top_p {g.top_p}, "
        f"<= {g.max_new_tokens} new tokens (vLLM, fp32); pairs: {cfg.pairing.strategy} by the "
        f"ifeval oracle, {cfg.pairing.label} labels, ties dropped ({pairs} pairs), "
        f"{lc.heldout_fraction:.0%} of prompts' pairs held out of training; loss "
        f"{loss.type} eta {loss.eta} tau {loss.tau}; {lc.epochs} epochs of batch "
        f"{lc.global_batch_size} ({steps} optimizer steps), lr {lc.lr} warmup "
        f"{lc.warmup_ratio} cosine per iteration, AdamW betas {tuple(lc.adam_betas)} weight "
        f"decay {lc.weight_decay}, grad clip {lc.grad_clip}, autocast {lc.autocast}, gradient "
        f"checkpointing {lc.gradient_checkpointing} (DeepSpeed on CPU)",
        f"trl: {trl['steps']} steps over {trl['prompts']} prompts; per step "
        f"{ts['per_device_train_batch_size']} prompts x 2 samples (transformers generate) = "
        f"{ts['per_device_train_batch_size']} pairs, the higher reward chosen (a tie too), one "
        f"optimizer step; "
        + ", ".join(f"{k} {v}" for k, v in ts.items())
        + f"; versions {trl['versions']}",
        f"eval: {cfg.data.eval_size} held-out prompts, one answer each at temperature "
        f"{cfg.eval.temperature}, <= {cfg.eval.max_new_tokens or g.max_new_tokens} new tokens, "
        f"seeded per prompt (the same seeds for every policy), every {every} prompts; win rate: "
        f"mean oracle P(answer > pi_ref's answer)",
    ]


def main() -> None:
    if sys.argv[1:2] == [TRL_WORKER]:
        trl_worker(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--out", type=Path, default=Path("runs/peers"))
    ap.add_argument("--every", type=int, default=None, help="prompts between eval points")
    args, overrides = ap.parse_known_args()
    t_start = time.time()

    from transformers import AutoTokenizer

    from inpo.config import load_config
    from inpo.plan.cluster import cpu_has_bf16

    cfg = load_config(args.config, overrides)
    if cfg.learner.autocast == "auto":  # one precision for both sides, in the output
        # quoted: YAML reads a bare off as False
        overrides += [f"learner.autocast='{'bfloat16' if cpu_has_bf16() else 'off'}'"]
        cfg = load_config(args.config, overrides)
    if (cfg.oracle.backend, cfg.oracle.synthetic) != ("synthetic", "ifeval"):
        raise SystemExit("bench/peers.py needs the ifeval oracle (its score is TRL's reward)")
    if not cfg.data.eval_size:
        raise SystemExit("bench/peers.py needs held-out prompts (data.eval_size > 0)")
    if importlib.util.find_spec("trl") is None:  # before inpo's run, not after it
        raise SystemExit("TRL is not installed: pip install -e '.[bench]' (trl==1.16.0)")
    args.out.mkdir(parents=True, exist_ok=True)
    # the model is converted once, before either side is timed
    model_dir = base_policy(cfg, args.out)
    prompts, counts = train_prompts(cfg, AutoTokenizer.from_pretrained(model_dir))
    if len(prompts) != sum(counts):
        raise SystemExit("some training prompts exceed data.max_prompt_tokens: raise it")
    every = args.every or default_every(counts)
    ends = [sum(counts[: t + 1]) for t in range(len(counts))]
    batch = cfg.learner.global_batch_size
    if every % batch or any(e % every for e in ends):
        raise SystemExit(
            f"--every {every}: must be a multiple of the batch ({batch}) and divide each "
            f"iteration's end ({ends})"
        )

    inpo = run_inpo(args.config, overrides, args.out)
    trl = run_trl(args.config, overrides, args.out, every)

    seconds = {int(k): v for k, v in inpo["seconds"].items()}
    inpo_pts = inpo_points(every, ends, seconds, inpo["tokens"], args.out / "inpo", model_dir)
    trl_pts = [
        Point(p["prompts"], p["seconds"], p["tokens"], p["policy"], f"step {p['step']}")
        for p in trl["points"]
    ]
    start = Point(0, 0.0, 0, model_dir, "pi_ref")
    results = evaluate(cfg, model_dir, [p.policy for p in inpo_pts + trl_pts], args.out)
    for p in [start, *inpo_pts, *trl_pts]:
        p.metrics = results[p.policy]
    by_prompts = sorted(
        [("inpo", p) for p in inpo_pts] + [("trl", p) for p in trl_pts],
        key=lambda r: (r[1].prompts, r[0]),
    )
    (args.out / "points.json").write_text(
        json.dumps({"inpo": [asdict(p) for p in inpo_pts], "trl": [asdict(p) for p in trl_pts]})
    )

    print(f"\n{args.config} {' '.join(overrides)}".rstrip())
    for line in settings_lines(cfg, inpo, trl, counts, every):
        print(f"- {line}")
    print()
    print(table([("both", start), *by_prompts]))
    print()
    for name, pts, total in (
        ("inpo", inpo_pts, inpo["seconds"][str(len(counts))]),
        ("trl", trl_pts, trl_pts[-1].seconds),
    ):
        tokens = pts[-1].tokens
        print(f"{name}: {total:.0f} s of training, {tokens} generated tokens")
    print(
        f"inpo's eval stages ({inpo['eval_seconds']:.0f} s) are left out of its time, and the "
        f"vLLM start they absorbed ({inpo['engine_start']:.0f} s) is charged back; TRL's "
        f"policy writes are left out of its time"
    )
    final = trl_pts[-1].metrics["pass_rate"]
    t, i = first_reach(trl_pts, final), first_reach(inpo_pts, final)
    print(
        f"TRL's final pass rate {final:.3f}: TRL first at {t.prompts} prompts ({t.seconds:.0f} s)"
        + (f", inpo first at {i.prompts} prompts ({i.seconds:.0f} s)" if i else ", inpo never")
    )
    print(f"bench wall time {time.time() - t_start:.0f} s")
    print(ratio_line(trl_pts, inpo_pts))


if __name__ == "__main__":
    main()
