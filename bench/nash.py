"""Nash harness: the real INPO loop on a cyclic preference game, held to the exact step.

The game: a response's class is its first character (`inpo.algo.game.response_class`), the
oracle is the builtin cyclic one (oracle.synthetic=cyclic) with matrix M. The policy is
the tiny model with its weights edited so that its first-token distribution after any
prompt has the class shares --ref (unequal, so the KL-regularized Nash policy pi*_tau is
not uniform); it is the initial policy and pi_ref of every run. With one-token responses
(--tokens 1) the next-token distribution *is* the strategy, so the class shares of every
pi_t are measured exactly from the Hugging Face model's softmax after each of a fixed set
of held-out prompts, not from samples.

Each variant (--runs) is one `inpo train` (Ray, vLLM, DeepSpeed, the oracle: nothing
mocked) of --iterations iterations. For every iteration t, from pi_t (the reference at
t = 1, else RUN/iter_<t-1>/policy) and pi_{t+1} (RUN/iter_<t>/policy):

    pi_t+1     the measured class shares of pi_{t+1}
    TV step    TV(pi_{t+1}, the exact INPO step from the measured pi_t), at token level
               (`inpo.algo.game.inpo_token_step`, summed into classes): the learner's error
    TV own     TV(pi_{t+1}, the population minimizer of the run's own loss and label from
               the measured pi_t): for inpo with soft or sample labels the INPO step; hard
               labels, mnpo (anchored on its measured history, weights 0.8/0.2), sppo
               (`game.sppo_step` per prompt), ipo and dpo solve other problems, and this
               says whether the learner solved theirs
    TV pi*     TV(pi_{t+1}, pi*_tau) for tau = --tau; expl: the exploitability of pi_{t+1}
    held-out   what `inpo train` reports (metrics.jsonl): the objective minus its per-pair
               floor (`inpo.algo.loss.objective_floor`), a mean over the learn stage's held-out
               pairs, before its first step and after its last
    excess     the same quantity exactly, in expectation over pairs drawn from pi_t: of the
               measured pi_{t+1}, and (opt) of the population minimizer (not 0: in a cyclic
               game no policy fits every pair's target); excess - opt is how far the
               iteration is from solving its problem
    sampled    the class shares of the run's own vLLM samples of pi_t (a cross-check)

With --tokens N > 1 the loss sees N-token responses whose class is still their first
token. The first token's distribution is measured exactly; the step is applied to it and
multiplied by Z(y1) = sum_y2 pi_t(y2|y1)^(1-tau/eta) pi_ref(y2|y1)^(tau/eta), which makes
it the exact step's first-token marginal for N = 2 (for N > 2, given that tokens 3..N
keep pi_ref's conditionals); "drift" is the mean TV of pi_{t+1}'s second-token
distribution from pi_ref's. Loss optimum and excess are only computed for N = 1.

Runs, the reference, tables (results.txt), results.json and nash.png go under --out; a
finished run with the same settings is reused, an unfinished one resumed, one with other
settings replaced. The mnpo and sppo runs need the learner to take loss.type mnpo (with
loss.history_weights and the older iterates' log-probs cached) and sppo (with each
response's estimated P(y > pi_t)); see docs/nash_family.md.

--exact runs no pipeline: it iterates the exact population step of every Nash-family
method (inpo, inpo at tau = 0, mnpo 0.8/0.2 and the MNPO authors' equal-weight history 2,
sppo, comal with a reset every --reset-every, online ipo and dpo at --beta) on the cyclic
game and on a transitive (Bradley-Terry, --scores) one, and prints every iterate's
distance to pi*_tau and to the unregularized Nash equilibrium; about a second.

    .venv/bin/python bench/nash.py                # every variant: ~8 min idle, 17 shared
    .venv/bin/python bench/nash.py --quick        # smoke run: soft and tau0, 3 iterations
    .venv/bin/python bench/nash.py --exact        # the family's exact dynamics, 24 iterations
    .venv/bin/python bench/nash.py --runs soft,tau0 --iterations 10
    .venv/bin/python bench/nash.py --tokens 2 --epochs 8 --out runs/nash_tok2

The defaults (256 prompts x K = 8 -> ~1000 disjoint pairs per iteration, 2 epochs of
batch 64 at lr 3e-3: 30 steps) keep the soft run within TV 0.016 of the exact step; a
run of 6 iterations takes about a minute on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from inpo.algo import game
from inpo.prompts import quickstart_prompts

# Held-out prompts the class shares are measured on: the tail of builtin:quickstart.
MEASURE_PROMPTS = 64
SPECIAL_LOGIT = -30.0  # end-of-turn and the other specials: never sampled


@dataclass(frozen=True)
class Variant:
    loss: str
    label: str
    strategy: str
    tau: str  # "main" (--tau) or "zero"
    weights: tuple[float, ...] | None = None  # mnpo's history weights


MNPO_WEIGHTS = (0.8, 0.2)
VARIANTS = {
    "soft": Variant("inpo", "soft", "disjoint", "main"),
    "sample": Variant("inpo", "sample", "disjoint", "main"),
    "hard": Variant("inpo", "hard", "disjoint", "main"),
    "tau0": Variant("inpo", "soft", "disjoint", "zero"),
    "random": Variant("inpo", "soft", "random", "main"),
    "tournament": Variant("inpo", "soft", "tournament", "main"),
    "mnpo": Variant("mnpo", "soft", "disjoint", "main", MNPO_WEIGHTS),
    # SPPO has no tau: its "exact INPO step" column is INPO's at tau = 0, SPPO's ideal
    "sppo": Variant("sppo", "soft", "disjoint", "zero"),
    "ipo": Variant("ipo", "soft", "disjoint", "main"),
    "dpo": Variant("dpo", "soft", "disjoint", "main"),
}


# --- the game and the reference policy -----------------------------------------------


def game_matrix(args: argparse.Namespace) -> np.ndarray:
    if args.matrix:
        return game.check_matrix(json.loads(args.matrix))
    return game.cyclic_matrix(args.classes, args.win)


def measure_ids(tokenizer) -> list[list[int]]:
    from inpo.data import prompt_token_ids

    return [prompt_token_ids(tokenizer, p) for p in quickstart_prompts()[-MEASURE_PROMPTS:]]


def token_classes(tokenizer, n: int) -> np.ndarray:
    """The class of every token id as the run sees it: vLLM drops special tokens from the
    text, so they decode to "" (class 0)."""
    return np.array(
        [
            game.response_class(tokenizer.decode([i], skip_special_tokens=True), n)
            for i in range(len(tokenizer))
        ]
    )


def build_reference(out: Path, shares: np.ndarray, seed: int) -> Path:
    """The tiny model edited so that after any prompt its next token has class shares
    ``shares``, spread evenly over each class's tokens: the final norm keeps only hidden
    dimension 0, every embedding holds 1 there, and lm_head's weight on it is each
    token's logit log(share / class size) over the norm's output there (measured, so the
    shares come out exact). Training moves lm_head, the norm and the layers as usual, so
    the shares stay learnable. Reused when ``out`` was built with the same spec."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inpo.models.tiny import build_tiny_model

    spec = {"shares": shares.tolist(), "seed": seed}
    stamp = out / "nash_reference.json"
    if stamp.exists() and json.loads(stamp.read_text()) == spec:
        return out
    build_tiny_model(out, seed=seed)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    n = len(shares)
    cls = token_classes(tok, n)
    special = np.isin(np.arange(len(tok)), tok.all_special_ids)
    size = np.bincount(cls[~special], minlength=n)
    logit = np.where(special, SPECIAL_LOGIT, np.log(shares[cls] / size[cls]))
    ids = measure_ids(tok)
    with torch.no_grad():
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.model.embed_tokens.weight[:, 0] = 1.0
        gain = float(np.mean([_last_hidden(model, x)[0] for x in ids]))
        model.lm_head.weight[:, 0] = torch.tensor(logit / gain, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    stamp.write_text(json.dumps(spec))
    return out


def _last_hidden(model, ids: list[int]):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[-1][0, -1].numpy()


def next_token_probs(model_dir: str | Path, seqs: list[list[int]]) -> np.ndarray:
    """[len(seqs), V]: the model's next-token distribution after each sequence (float64)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    width = max(map(len, seqs))
    x = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    rows = []
    with torch.no_grad():
        for i in range(0, len(seqs), 512):
            logits = model(input_ids=x[i : i + 512], attention_mask=mask[i : i + 512]).logits
            last = torch.tensor([len(s) - 1 for s in seqs[i : i + 512]])
            rows.append(torch.log_softmax(logits[torch.arange(len(last)), last].double(), -1))
    return torch.cat(rows).exp().numpy()


# --- exact steps ------------------------------------------------------------------------


@dataclass(frozen=True)
class Game:
    m: np.ndarray
    classes: np.ndarray  # of every token id
    eta: float
    tau: float  # the run's tau (0 for tau0)
    beta: float
    weights: tuple[float, ...] | None = None  # mnpo's history weights

    @property
    def n(self) -> int:
        return self.m.shape[0]

    def shares(self, probs: np.ndarray) -> np.ndarray:
        return game.token_class_shares(probs, self.classes, self.n)


def pair_weights(s: np.ndarray, p_win: np.ndarray) -> np.ndarray:
    """[P, n, n] probability of drawing a pair of classes (c, c') from pi_t, c != c', that
    the label keeps (a hard label drops ties); same-class pairs say nothing about the
    offsets between classes."""
    w = s[:, :, None] * s[:, None, :] * (1.0 - np.eye(len(p_win)))
    return w * ~np.isnan(p_win)


def class_offsets(v: Variant, g: Game, s: np.ndarray) -> np.ndarray:
    """[P, n]: the class offsets f_c of the population minimizer of the run's loss over
    pairs from pi_t (class shares s, one row per prompt): pi_{t+1}(y) ∝ base(y) exp(f_c(y)),
    base the geometric mixture of `anchors`. SPPO's (`game.sppo_step`) regresses each
    response on its own win rate; an unbiased estimate of it (one opponent, or a
    leave-one-out mean) has the same minimizer, which leaves out only the
    same-response pairs the pipeline drops (a share of at most max_y pi_t(y))."""
    if v.loss == "sppo":
        return np.log(np.stack([game.sppo_step(row, g.m, g.eta) for row in s]) / s)
    p_win = g.m if v.label != "hard" else np.where(g.m == 0.5, np.nan, (g.m > 0.5) * 1.0)
    p = np.nan_to_num(p_win)
    if v.loss == "dpo":
        kind, scale = "logistic", g.beta
    else:  # least squares over pairs toward t = (2P - 1) / (2 eta), or / (2 beta)
        kind, scale = "square", 0.5 / (g.beta if v.loss == "ipo" else g.eta)
    return np.stack([game.pair_offsets(w, p, kind, scale) for w in pair_weights(s, p_win)])


def anchors(loss: str, g: Game, hist: list[np.ndarray], ref: np.ndarray) -> list[tuple]:
    """(policy, exponent) pairs whose geometric mixture is the base a loss measures the
    new policy against (its margin h is the difference of log pi - log base between a
    pair's sides): pi_ref for ipo and dpo, pi_t for sppo, pi_t^(1-tau/eta) pi_ref^(tau/eta)
    for inpo, and for mnpo the history hist = [pi_t, pi_{t-1}, ...] mixed by its weights.
    Works on first- or second-token distributions alike."""
    if loss in ("ipo", "dpo"):
        return [(ref, 1.0)]
    if loss == "sppo":
        return [(hist[0], 1.0)]
    a = g.tau / g.eta
    lam = [1.0] if loss == "inpo" else game.history_mixture(g.weights, len(hist))
    mixed = [(h, (1 - a) * w) for h, w in zip(hist[: len(lam)], lam, strict=True)]
    return mixed + ([(ref, a)] if a > 0 else [])  # pi_ref^0 = 1 even where pi_ref is 0


def base_log(pairs: list[tuple]) -> np.ndarray:
    """log of the geometric mixture of `anchors` (unnormalised)."""
    with np.errstate(divide="ignore"):  # a token outside the support stays outside
        return sum(a * np.log(p) for p, a in pairs)


def own_step(v: Variant, g: Game, hist: list[np.ndarray], ref: np.ndarray) -> np.ndarray:
    """[P, V]: pi_{t+1} minimizing the run's expected loss over pairs drawn from pi_t =
    hist[0] (hist: the measured iterates, newest first)."""
    offsets = class_offsets(v, g, g.shares(hist[0]))[:, g.classes]
    z = base_log(anchors(v.loss, g, hist, ref)) + offsets
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def population(
    v: Variant, g: Game, hist: list[np.ndarray], ref: np.ndarray, pi_new: np.ndarray
) -> float:
    """Expected excess (loss minus its per-pair floor) of the policy pi_new on the run's
    pairs: two distinct tokens drawn from pi_t = hist[0] (one token twice is dropped),
    labelled as the run labels them, at token level; what the learner's held-out excess
    estimates. It is least at `own_step`; how much more a learned pi_{t+1} has is how far
    the learn stage is from solving its problem. SPPO's pairs carry each side's win rate
    against the other side, the one-opponent estimate of P(y > pi_t) (its variance stays
    in the excess, as in the learner's)."""
    import torch

    from inpo.algo.loss import objective_floor

    pi_t = hist[0]
    cfg = {"type": v.loss, "eta": g.eta, "beta": g.beta}
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.log(pi_new) - base_log(anchors(v.loss, g, hist, ref))
    q = pi_t[:, :, None] * pi_t[:, None, :] * (1.0 - np.eye(pi_t.shape[-1]))
    m = np.broadcast_to(g.m[np.ix_(g.classes, g.classes)], q.shape)
    if v.loss == "sppo":
        fy = np.nan_to_num(np.broadcast_to(f[:, :, None], q.shape))
        t = (m - 0.5) / g.eta  # y's target against y', and y''s is -t
        loss = ((fy - t) ** 2 + (np.swapaxes(fy, 1, 2) + t) ** 2) / 2
        return float(np.mean((q * loss).sum((1, 2)) / q.sum((1, 2))))
    d = np.nan_to_num(f[:, :, None] - f[:, None, :])  # h of the pair (y, y'), y chosen
    # (probability, p_label) of "y is chosen" and of "y' is chosen", per label
    ones = np.ones_like(m)
    if v.label == "soft":
        sides = [((m >= 0.5) * 1.0, m), ((m < 0.5) * 1.0, 1 - m)]
    elif v.label == "sample":
        sides = [(m, ones), (1 - m, ones)]
    else:
        q = q * (m != 0.5)
        sides = [((m > 0.5) * 1.0, ones), ((m < 0.5) * 1.0, ones)]
    k = 0.5 / (g.beta if v.loss in ("ipo", "dpo") else g.eta)
    excess = 0.0
    for (prob, pl), h in zip(sides, (d, -d), strict=True):
        if v.loss == "dpo":
            z = g.beta * h
            loss = -(pl * _log_sigmoid(z) + (1 - pl) * _log_sigmoid(-z))
        else:
            loss = pl * (h - k) ** 2 + (1 - pl) * (h + k) ** 2
        excess = excess + prob * (loss - objective_floor(cfg, torch.tensor(pl)).numpy())
    return float(np.mean((q * excess).sum((1, 2)) / q.sum((1, 2))))


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def exact_trajectory(v: Variant, g: Game, ref: np.ndarray, steps: int) -> list[np.ndarray]:
    """Class shares of the exact dynamics of the run's own step from pi_ref."""
    hist = [ref]  # newest first
    for _ in range(steps):
        hist.insert(0, own_step(v, g, hist, ref))
    return [g.shares(p).mean(0) for p in reversed(hist)]


# --- runs -----------------------------------------------------------------------------


def settings(args: argparse.Namespace, name: str) -> dict[str, str]:
    v = VARIANTS[name]
    k, ppi = args.samples, args.prompts_per_iteration
    if v.strategy == "random":  # one pair per prompt: as many pairs from K = 2
        k, ppi = 2, ppi * args.samples // 2
    if v.strategy == "tournament":  # one pair per prompt: as many pairs, from K samples
        ppi = ppi * args.samples // 2
    out = {
        "model.policy": str(args.out / "reference"),
        "model.dtype": "float32",
        "data.prompts": str(args.out / "prompts.jsonl"),
        "data.eval_size": "0",
        "data.prompts_per_iteration": str(ppi),
        "generation.num_samples": str(k),
        "generation.max_new_tokens": str(args.tokens),
        "oracle.backend": "synthetic",
        "oracle.synthetic": "cyclic",
        **(
            {"oracle.game_matrix": args.matrix}
            if args.matrix
            else {"oracle.game_classes": str(args.classes), "oracle.game_win": repr(args.win)}
        ),
        "pairing.strategy": v.strategy,
        "pairing.label": v.label,
        "loss.type": v.loss,
        **({"loss.history_weights": json.dumps(list(v.weights))} if v.weights else {}),
        "loss.eta": repr(args.eta),
        "loss.tau": repr(args.tau if v.tau == "main" else 0.0),
        "loss.beta": repr(args.beta),
        "learner.lr": repr(args.lr),
        "learner.epochs": str(args.epochs),
        "learner.global_batch_size": str(args.batch),
        "learner.micro_batch_size": str(args.micro_batch),
        "learner.warmup_ratio": repr(args.warmup),
        "learner.logps_batch_size": str(args.micro_batch),
        "learner.checkpoint_every": "0",  # tiny stages: redoing one beats checkpointing it
        "run.iterations": str(args.iterations),
        "run.seed": str(args.seed),
        "run.tensorboard": "false",
    }
    for extra in args.set:
        key, _, value = extra.partition("=")
        out[key] = value
    return out


def write_prompts(args: argparse.Namespace) -> None:
    """Training prompts: builtin:quickstart without the measured tail, repeated so that
    every iteration of every variant draws prompts it has not seen."""
    pool = quickstart_prompts()[:-MEASURE_PROMPTS]
    need = args.iterations * args.prompts_per_iteration * max(args.samples // 2, 1)
    rows = [{"prompt": pool[i % len(pool)]} for i in range(need)]
    (args.out / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_variant(args: argparse.Namespace, name: str) -> tuple[Path, float, str | None]:
    """Train one variant (or reuse / resume it): its run dir, wall seconds and, when
    `inpo train` failed (a policy collapsed to one response leaves no pair, say), the
    error; the iterations done before it are still analysed."""
    run_dir = args.out / name
    cfg = settings(args, name)
    stamp = run_dir / "harness.json"
    old = json.loads(stamp.read_text()) if stamp.exists() else None
    if run_dir.exists() and old is None:
        raise SystemExit(f"{run_dir} exists but is not a run of this harness; move it away")
    if old is not None and old["settings"] != cfg:
        print(f"{run_dir}: trained with other settings; starting it again")
        shutil.rmtree(run_dir)
    elif old is not None and old["seconds"] is not None:
        if old.get("error") or _finished(run_dir, args.iterations):
            return run_dir, old["seconds"], old.get("error")
    inpo = Path(sys.executable).with_name("inpo")
    resume = (run_dir / "state.json").exists()
    cmd = [str(inpo), "train"] + (
        ["--resume", str(run_dir)] if resume else [f"{k}={v}" for k, v in cfg.items()]
    )
    if not resume:
        cmd.append(f"run.dir={run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"settings": cfg, "seconds": None}))
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with (run_dir / "train.log").open("a") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    error = None
    if rc != 0:
        lines = (run_dir / "train.log").read_text(errors="replace").splitlines()
        error = next((x for x in reversed(lines) if x.startswith("error:")), f"exit code {rc}")
        print(f"[{name}] inpo train failed: {error} (log: {run_dir / 'train.log'})")
    stamp.write_text(json.dumps({"settings": cfg, "seconds": seconds, "error": error}))
    return run_dir, seconds, error


def _finished(run_dir: Path, iterations: int) -> bool:
    path = run_dir / "metrics.jsonl"
    return path.exists() and len(path.read_text().splitlines()) >= iterations


# --- analysis ---------------------------------------------------------------------------


class Measurer:
    """Exact next-token distributions of policies after the measured prompts (and, with
    multi-token responses, after each prompt followed by every first token)."""

    def __init__(self, ref_dir: Path, tokens: int):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(ref_dir)
        self.ids = measure_ids(self.tokenizer)
        self.vocab = len(self.tokenizer)
        self.tokens = tokens
        self.cache: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}

    def __call__(self, model_dir: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
        """(first-token probs [P, V], second-token probs [P, V, V] or None)."""
        key = str(model_dir)
        if key not in self.cache:
            first = next_token_probs(model_dir, self.ids)
            second = None
            if self.tokens > 1:
                seqs = [x + [y] for x in self.ids for y in range(self.vocab)]
                second = next_token_probs(model_dir, seqs).reshape(len(self.ids), self.vocab, -1)
            self.cache[key] = (first, second)
        return self.cache[key]


def continuation_weight(pairs: list[tuple]) -> np.ndarray:
    """Z(y1) = sum_y2 prod_k p_k(y2|y1)^a_k over the `anchors` of second-token
    distributions: what a step's geometric mixture leaves of the continuations, [P, V]
    (1 when they agree, or for a single anchor: ipo, dpo, sppo, inpo at tau = 0)."""
    return np.exp(base_log(pairs)).sum(-1)


def analyse(
    args: argparse.Namespace, name: str, run_dir: Path, measure: Measurer, classes: np.ndarray
) -> dict:
    v = VARIANTS[name]
    tau = args.tau if v.tau == "main" else 0.0
    g = Game(game_matrix(args), classes, args.eta, tau, args.beta, v.weights)
    ref, ref2 = measure(args.out / "reference")
    star = game.regularized_nash(g.shares(ref).mean(0), g.m, args.tau)
    path = run_dir / "metrics.jsonl"  # absent when the run failed in its first iteration
    lines = path.read_text().splitlines() if path.exists() else []
    by_iter = {r["iteration"]: r for r in map(json.loads, lines)}
    rows = []
    hist, hist2 = [ref], [ref2]  # measured iterates, newest first (mnpo mixes them)
    for t in range(1, args.iterations + 1):
        if not (run_dir / f"iter_{t}" / "policy").exists():  # the run failed before
            break
        prev, prev2 = hist[0], hist2[0]
        new, new2 = measure(run_dir / f"iter_{t}" / "policy")
        step = game.inpo_token_step(prev, ref, g.classes, g.m, g.eta, tau)
        own = own_step(v, g, hist, ref)
        info = by_iter.get(t, {})
        row = {"t": t, "pairs": info.get("pairs")}
        for when in ("start", "end"):
            row[f"heldout_{when}"] = info.get(f"heldout_excess_{when}")
        if prev2 is None:  # the population excess over one-token responses
            row["excess_opt"] = population(v, g, hist, ref, own)
            row["excess"] = population(v, g, hist, ref, new)
        else:
            step = _times(step, continuation_weight(anchors("inpo", g, [prev2], ref2)))
            own = _times(own, continuation_weight(anchors(v.loss, g, hist2, ref2)))
            tv2 = 0.5 * np.abs(new2 - ref2).sum(-1)  # [P, V]: per first token
            row["drift"] = float(np.mean((new * tv2).sum(-1)))
        shares, step_shares, own_shares = (g.shares(p).mean(0) for p in (new, step, own))
        row.update(
            shares_t=g.shares(prev).mean(0).tolist(),
            shares=shares.tolist(),
            step=step_shares.tolist(),
            own=own_shares.tolist(),
            tv_step=game.tv(shares, step_shares),
            tv_own=game.tv(shares, own_shares),
            tv_star=game.tv(shares, star),
            exploitability=game.exploitability(shares, g.m),
            sampled=sampled_shares(run_dir / f"iter_{t}" / "generations.jsonl", g.n),
        )
        rows.append(row)
        hist.insert(0, new)
        hist2.insert(0, new2)
    exact = exact_trajectory(v, g, ref, len(rows))
    return {
        "variant": asdict(v),
        "tau": tau,
        "star": star.tolist(),
        "ref": g.shares(ref).mean(0).tolist(),
        "exact": [p.tolist() for p in exact],
        "exact_tv_star": game.tv(exact[-1], star),
        "rows": rows,
        "class_mismatches": class_mismatches(run_dir, classes, g.n),
    }


def _times(p: np.ndarray, z: np.ndarray) -> np.ndarray:
    q = p * z
    return q / q.sum(-1, keepdims=True)


def sampled_shares(path: Path, n: int) -> list[float]:
    """Class shares of the run's own samples of pi_t (vLLM), as a cross-check."""
    texts = [r for line in path.read_text().splitlines() for r in json.loads(line)["responses"]]
    return game.class_shares(texts, n).tolist()


def class_mismatches(run_dir: Path, classes: np.ndarray, n: int) -> int:
    """Samples whose text's class is not their first token's: must be 0, or the harness
    measures another game than the oracle judges."""
    bad = 0
    for line in (run_dir / "iter_1" / "generations.jsonl").read_text().splitlines():
        row = json.loads(line)
        for text, ids in zip(row["responses"], row["response_ids"], strict=True):
            bad += game.response_class(text, n) != classes[ids[0]]
    return int(bad)


# --- report -----------------------------------------------------------------------------


def _vec(p: list[float]) -> str:
    return "[" + " ".join(f"{x:.3f}" for x in p) + "]"


def _num(x: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def run_table(name: str, res: dict, seconds: float) -> str:
    v = res["variant"]
    head = (
        f"== {name}: loss={v['loss']} label={v['label']} pairing={v['strategy']} "
        f"tau={res['tau']:.4g}  ({seconds:.0f} s)  pi*={_vec(res['star'])}"
    )
    multi = "drift" in res["rows"][0]
    cols = f"{'t':>2}  {'pi_t+1 measured':<21}  {'exact INPO step':<21}  {'TV step':>7}"
    cols += f"  {'TV own':>6}  {'TV pi*':>6}  {'expl':>5}  {'held-out start>end':>18}"
    cols += f"  {'excess (opt)':>15}  {'pairs':>5}  {'sampled pi_t':<21}"
    lines = [head, cols + ("  drift" if multi else "")]
    for r in res["rows"]:
        held = f"{_num(r['heldout_start'], '{:.4f}')}>{_num(r['heldout_end'], '{:.4f}')}"
        excess = f"{_num(r.get('excess'), '{:.4f}')} ({_num(r.get('excess_opt'), '{:.4f}')})"
        line = (
            f"{r['t']:>2}  {_vec(r['shares']):<21}  {_vec(r['step']):<21}  {r['tv_step']:>7.4f}"
            f"  {r['tv_own']:>6.4f}  {r['tv_star']:>6.4f}  {r['exploitability']:>5.3f}"
            f"  {held:>18}  {excess:>15}"
            f"  {r['pairs'] or '-':>5}  {_vec(r['sampled']):<21}"
        )
        lines.append(line + (f"  {r['drift']:.4f}" if multi else ""))
    exact = res["exact"][-1]
    lines.append(
        f"    exact dynamics of this loss from pi_ref: pi_{len(res['rows']) + 1} = "
        f"{_vec(exact)}, TV to pi* {res['exact_tv_star']:.4f}"
    )
    if res["error"]:
        lines.append(f"    FAILED after {len(res['rows'])} iterations: {res['error']}")
    if res["class_mismatches"]:
        lines.append(f"    WARNING: {res['class_mismatches']} samples in another class")
    return "\n".join(lines)


def summary(results: dict[str, dict], seconds: dict[str, float], tol: float) -> str:
    lines = [
        f"{'run':<8}{'max TV step':>12}{'max TV own':>11}{'TV pi* final':>13}"
        f"{'(exact)':>9}{'expl final':>11}{'max gap':>9}{'held-out removed':>17}{'wall s':>8}"
        f"{'its':>5}"
    ]
    for name, res in results.items():
        rows = res["rows"]
        gap = [r["excess"] - r["excess_opt"] for r in rows if "excess" in r]
        removed = [1 - r["heldout_end"] / r["heldout_start"] for r in rows if r["heldout_start"]]
        span = f"{min(removed):.0%}-{max(removed):.0%}" if removed else "-"
        lines.append(
            f"{name:<8}{max(r['tv_step'] for r in rows):>12.4f}"
            f"{max(r['tv_own'] for r in rows):>11.4f}{rows[-1]['tv_star']:>13.4f}"
            f"{res['exact_tv_star']:>9.4f}{rows[-1]['exploitability']:>11.4f}"
            f"{_num(max(gap) if gap else None, '{:.4f}'):>9}{span:>17}{seconds[name]:>8.0f}"
            f"{len(rows):>5}"
        )
    if "soft" in results:
        res = results["soft"]
        track = max(r["tv_step"] for r in res["rows"])
        final = res["rows"][-1]["tv_star"]
        k = len(res["rows"]) + 1
        if res["exact_tv_star"] > tol:  # too few iterations for even the exact dynamics
            reach = f"n/a (the exact dynamics get only to {res['exact_tv_star']:.4f})"
        else:
            reach = "PASS" if final <= tol and not res["error"] else "FAIL"
        lines.append(
            f"acceptance (soft, tolerance {tol}): max TV(pi_t+1, exact step) = {track:.4f} "
            f"{'PASS' if track <= tol else 'FAIL'}; TV(pi_{k}, pi*) = {final:.4f} {reach}"
        )
    return "\n".join(lines)


def plot(results: dict[str, dict], path: Path, n: int, tol: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # class shares drawn on the regular n-gon (the simplex itself for n = 3), zoomed to the
    # measured trajectories (exact dynamics that run off, dpo's, are cut)
    angle = np.pi / 2 + 2 * np.pi * np.arange(n) / n
    corners = np.stack([np.cos(angle), np.sin(angle)], 1)
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    ax = axes[0]
    ax.fill(*corners.T, fill=False, color="0.6")
    seen, top = [], 0.0
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, res) in enumerate(results.items()):
        color = colors[i % len(colors)]
        meas = np.array([res["ref"]] + [r["shares"] for r in res["rows"]]) @ corners
        exact = np.array(res["exact"]) @ corners
        ax.plot(*meas.T, "o-", color=color, ms=3, label=f"{name} (measured)")
        ax.plot(*exact.T, ":", color=color, lw=1)
        seen.append(meas)
        its = np.arange(1, len(meas) + 1)
        dist = [game.tv(p, res["star"]) for p in [res["ref"]] + [r["shares"] for r in res["rows"]]]
        axes[1].plot(its, dist, "o-", color=color, label=name)
        top = max(top, *dist)
        axes[1].plot(its, [game.tv(p, res["star"]) for p in res["exact"]], ":", color=color)
        axes[2].plot(its[1:], [r["tv_step"] for r in res["rows"]], "o-", color=color, label=name)
    star = np.array(next(iter(results.values()))["star"]) @ corners
    ax.plot(*star, "k*", ms=12, label="pi*_tau")
    lo, hi = np.min(np.vstack([*seen, star]), 0), np.max(np.vstack([*seen, star]), 0)
    pad = 0.15 * max(hi - lo) + 0.01
    ax.set(xlim=(lo[0] - pad, hi[0] + pad), ylim=(lo[1] - pad, hi[1] + pad), aspect="equal")
    ax.set(xticks=[], yticks=[])
    ax.legend(fontsize=7)
    ax.set_title(
        "class shares (corners: class 0 at the top, the others counter-clockwise)\n"
        "dotted: exact dynamics of each run's loss from pi_ref",
        fontsize=9,
    )
    axes[1].set(xlabel="policy pi_t", ylabel="TV(pi_t, pi*_tau)", title="distance to pi*_tau")
    axes[1].set_ylim(0, 1.1 * top)  # exact dynamics that run off (dpo's) are cut
    axes[2].axhline(tol, color="grey", ls="--", lw=0.8)
    axes[2].set(xlabel="pi_t+1", ylabel="TV", title="TV(measured pi_t+1, exact INPO step)")
    axes[2].set_yscale("log")
    for a in axes[1:]:
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- exact mode -------------------------------------------------------------------------


def exact_methods(args: argparse.Namespace) -> dict[str, tuple[str, dict]]:
    """Column name -> (`game.family_trajectory` method, its keyword arguments)."""
    return {
        "inpo": ("inpo", {}),
        "inpo tau=0": ("inpo", {"tau": 0.0}),  # SPPO's idealised step
        "mnpo .8/.2": ("mnpo", {"history_weights": MNPO_WEIGHTS}),
        # the MNPO authors' runs: history 2 at equal weights (their trainer never reads
        # the weights their yaml files set)
        "mnpo 1/1": ("mnpo", {"history_weights": (1.0, 1.0)}),
        "sppo": ("sppo", {}),
        f"comal K={args.reset_every}": ("comal", {"reset_every": args.reset_every}),
        "online ipo": ("ipo", {"beta": args.beta}),
        "online dpo": ("dpo", {"beta": args.beta}),
    }


def exact_report(args: argparse.Namespace, cyclic: np.ndarray, ref: np.ndarray) -> str:
    """Per game (--classes/--win or --matrix, and the transitive Bradley-Terry game of
    --scores) and per method, the distance of pi_t to the KL-regularized Nash policy
    pi*_tau (tau = --tau) and to the unregularized Nash equilibrium, TV (KL(target || pi_t)),
    for t = 1 (pi_ref) .. iterations + 1."""
    scores = [float(x) for x in args.scores.split(",")]
    games = {"cyclic": cyclic, "transitive": game.bradley_terry_matrix(scores)}
    out = [
        f"exact population dynamics: eta={args.eta:g} tau={args.tau:.4g} beta={args.beta:.4g} "
        f"pi_ref={_vec(ref)}, {args.iterations} iterations; cell: TV (KL(target || pi_t))"
    ]
    methods = exact_methods(args)
    for name, m in games.items():
        if m.shape[0] != len(ref):
            out.append(f"== {name}: skipped ({m.shape[0]} classes, --ref has {len(ref)})")
            continue
        star, nash = game.regularized_nash(ref, m, args.tau), game.nash_equilibrium(m)
        trajs = {}
        for col, (method, kw) in methods.items():
            knobs = {"eta": args.eta, "tau": args.tau, **kw}
            trajs[col] = game.family_trajectory(method, m, ref, args.iterations, **knobs)
        out.append(
            f"\n== {name} game M={np.round(m, 3).tolist()}\n   pi*_tau={_vec(star)} "
            f"Nash={_vec(nash)}"
        )
        for label, target in (("pi*_tau", star), ("Nash", nash)):
            out.append(f"-- distance to {label}")
            out.append(f"{'t':>3}" + "".join(f"{c:>18}" for c in trajs))
            for t in range(args.iterations + 1):
                cells = []
                for traj in trajs.values():
                    d, k = game.tv(traj[t], target), game.kl(target, traj[t])
                    cells.append(f"{d:.4f} ({k:.1e})")
                out.append(f"{t + 1:>3}" + "".join(f"{c:>18}" for c in cells))
        out.append("-- last iterate, exploitability (max_a P(a > pi) - 1/2)")
        for col, traj in trajs.items():
            expl = game.exploitability(traj[-1], m)
            out.append(f"   {col:<12} {_vec(traj[-1])}  {expl:.4f}")
    return "\n".join(out)


# --- main -------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    quick = "--quick" in argv  # a smoke run: fewer runs and iterations, same learner
    exact = "--exact" in argv
    p.add_argument("--out", type=Path, default=Path("runs/nash"))
    p.add_argument("--quick", action="store_true", help="3 iterations of soft and tau0")
    p.add_argument(
        "--exact",
        action="store_true",
        help="no runs: the exact population dynamics of every Nash-family method (seconds)",
    )
    p.add_argument("--scores", default="0,1,2", help="--exact: the transitive game's scores")
    p.add_argument("--reset-every", type=int, help="--exact: COMAL's K; default iterations/3")
    p.add_argument(
        "--runs",
        default="soft,tau0" if quick else ",".join(VARIANTS),
        help=f"comma-separated, of {', '.join(VARIANTS)}",
    )
    p.add_argument("--iterations", type=int, default=3 if quick else 24 if exact else 6)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--win", type=float, default=0.9)
    p.add_argument("--matrix", help="JSON preference matrix, instead of --classes/--win")
    p.add_argument("--ref", default="0.6,0.3,0.1", help="class shares of pi_ref")
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--tau", type=float, help="default eta/3")
    p.add_argument("--beta", type=float, help="ipo/dpo beta; default tau (same fixed point)")
    p.add_argument("--tokens", type=int, default=1, help="response length in tokens")
    p.add_argument("--prompts-per-iteration", type=int, default=256)
    p.add_argument("--samples", type=int, default=8, help="K per prompt")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=64)
    p.add_argument("--warmup", type=float, default=0.03)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=0.03)
    p.add_argument("--set", action="append", default=[], help="extra override, every run")
    args = p.parse_args(argv)
    args.tau = args.eta / 3 if args.tau is None else args.tau
    args.beta = args.tau if args.beta is None else args.beta
    args.reset_every = args.reset_every or max(args.iterations // 3, 1)
    unknown = set(args.runs.split(",")) - set(VARIANTS)
    if unknown:
        p.error(f"--runs: unknown {sorted(unknown)} (known: {', '.join(VARIANTS)})")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    m = game_matrix(args)
    ref_shares = np.array([float(x) for x in args.ref.split(",")])
    if len(ref_shares) != m.shape[0] or abs(ref_shares.sum() - 1) > 1e-9:
        raise SystemExit(f"--ref {args.ref}: needs {m.shape[0]} shares summing to 1")
    if args.exact:
        t0 = time.perf_counter()
        print(exact_report(args, m, ref_shares))
        print(f"({time.perf_counter() - t0:.1f} s)")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ref_dir = build_reference(args.out / "reference", ref_shares, args.seed)
    measure = Measurer(ref_dir, args.tokens)
    classes = token_classes(measure.tokenizer, m.shape[0])
    got = game.token_class_shares(measure(ref_dir)[0], classes, m.shape[0])
    print(
        f"reference {ref_dir}: class shares {_vec(got.mean(0))} "
        f"(max deviation over prompts {np.abs(got - ref_shares).max():.1e})"
    )
    write_prompts(args)
    results, seconds, texts = {}, {}, []
    for name in args.runs.split(","):
        run_dir, seconds[name], error = run_variant(args, name)
        if not (run_dir / "iter_1" / "policy").exists():
            texts.append(f"== {name}: no iteration finished ({error})")
            print(texts[-1], flush=True)
            continue
        results[name] = {**analyse(args, name, run_dir, measure, classes), "error": error}
        texts.append(run_table(name, results[name], seconds[name]))
        print(texts[-1], flush=True)
    texts.append(summary(results, seconds, args.tolerance))
    print(texts[-1])
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "matrix": m.tolist(),
        "wall_seconds": time.perf_counter() - t0,
        "runs": {k: {**r, "seconds": seconds[k]} for k, r in results.items()},
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    (args.out / "results.txt").write_text("\n\n".join(texts) + "\n")
    plot(results, args.out / "nash.png", m.shape[0], args.tolerance)
    print(
        f"results: {args.out / 'results.json'}, {args.out / 'results.txt'}; plot: "
        f"{args.out / 'nash.png'}; {report['wall_seconds']:.0f} s"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
