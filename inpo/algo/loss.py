"""INPO loss, the rest of its Nash family (MNPO, SPPO) and the DPO/IPO baselines, as pure
torch functions.

All log-probabilities here are per sequence: the sum (or, with
``normalize=True``, the mean) of the response tokens' log-probs under a model.
Every loss returns one value per pair, shape [B]; the caller averages.

INPO (Zhang et al., 2025, Algorithm 1 / Eq. 11), one pair (y_w, y_l) from pi_t:

    h = [log pi(y_w) - log pi(y_l)]
        - (tau/eta)     * [log pi_ref(y_w) - log pi_ref(y_l)]
        - (1 - tau/eta) * [log pi_t(y_w)   - log pi_t(y_l)]
    loss = (h - 1/(2*eta))^2

Labels. The derivation draws the winner of a sampled pair with probability
P = P(y_w > y_l) (the paper's lambda_P). ``p_label`` is the probability the
loss gives to "chosen wins": 1 for a hard or a sampled label, P for a soft
label, where the loss is the exact expectation over that draw,

    P (h - c)^2 + (1 - P) (h + c)^2,   c = 1/(2*eta),

minimized at h = (2P - 1) c; over pairs drawn from pi_t its minimizer is the
mirror-descent step pi_{t+1} ~ pi_t^(1-tau/eta) pi_ref^(tau/eta) exp(P(y > pi_t)/eta).
The IPO and DPO baselines take the same soft form (IPO's soft target, and the
label-smoothed DPO of conservative DPO).

MNPO (arXiv 2509.23102; smiles724/MNPO
``mnpo_scripts/mnpo_trainer.py``, ``mnpo_loss``) anchors on a mixture of past iterates:

    h = Δ log pi - (tau/eta) Δ log pi_ref - (1 - tau/eta) Σ_j λ_j Δ log pi_{t-j}

with Δ f = f(y_w) - f(y_l), j = 0 the current iterate pi_t, and λ the history weights
normalised over the iterates that exist; same square loss and labels as INPO. One weight
(or only pi_t in the history) is INPO.

SPPO (Wu et al., 2024, Eq. 4.7 / Algorithm 1; uclaml/SPPO ``sppo/trainer.py``, loss_type
"sppo") regresses every response on its own estimated win rate against pi_t,

    (log pi(y) - log pi_t(y) - (P(y > pi_t) - 1/2)/eta)^2,

in inpo's eta (the inverse step size; their trainer's ``beta`` is this eta, their paper's
eta is 1/eta). A pair's loss is the mean of its two responses' terms, as in the authors'
trainer. Its idealised population step is INPO's at tau = 0; `inpo.algo.game.sppo_step`
is what the loss itself attains (the 1/2 stands in for the normaliser).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from inpo.algo.game import history_mixture

Tensor = torch.Tensor

#: Cached log-probs of each pair under the frozen pi_ref and pi_t, by name.
CACHE_KEYS = ("ref_chosen", "ref_rejected", "pi_t_chosen", "pi_t_rejected")
#: The objectives `objective` computes (loss.type).
LOSS_TYPES = ("inpo", "mnpo", "sppo", "ipo", "dpo")


def history_keys(j: int) -> tuple[str, str]:
    """Cache keys of pi_{t-j}'s log-probs of a pair's (chosen, rejected), j >= 1: MNPO's
    older iterates (j = 0, pi_t itself, is CACHE_KEYS' pi_t_chosen / pi_t_rejected)."""
    if j < 1:
        raise ValueError(f"history_keys: j = {j} must be >= 1 (pi_t is under CACHE_KEYS)")
    return f"pi_hist{j}_chosen", f"pi_hist{j}_rejected"


def _check_inpo_knobs(eta: float, tau: float) -> None:
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got eta={eta}")
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got tau={tau}")
    if tau >= eta:
        raise ValueError(f"tau must be < eta, got tau={tau} with eta={eta}")


def _check_p(p_label: Tensor | None, name: str = "p_label") -> None:
    if p_label is not None and ((p_label < 0) | (p_label > 1)).any():
        raise ValueError(f"{name} must lie in [0, 1], got {p_label.min()}..{p_label.max()}")


def square_loss(margin: Tensor, target: float, p_label: Tensor | None = None) -> Tensor:
    """P (m - c)^2 + (1 - P) (m + c)^2 per pair: the expected square loss of a label that
    says "chosen wins" with probability P (P = 1, the default, is a hard label)."""
    if p_label is None:
        return (margin - target) ** 2
    _check_p(p_label)
    return p_label * (margin - target) ** 2 + (1 - p_label) * (margin + target) ** 2


def mnpo_margin(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    history: Sequence[tuple[Tensor, Tensor]],
    *,
    eta: float,
    tau: float,
    history_weights: Sequence[float],
) -> Tensor:
    """MNPO's implicit margin h of each pair: ``history`` holds the (chosen, rejected)
    log-probs of pi_t, pi_{t-1}, ... (newest first); λ = ``history_weights`` truncated to
    the iterates given and renormalised (`inpo.algo.game.history_mixture`)."""
    _check_inpo_knobs(eta, tau)
    lam = history_mixture(history_weights, len(history))
    ratio = tau / eta
    # zip stops at len(lam): iterates older than the weights reach are not part of MNPO
    anchor = sum(w * (c - r) for w, (c, r) in zip(lam, history, strict=False))
    return (
        (policy_chosen_logps - policy_rejected_logps)
        - ratio * (ref_chosen_logps - ref_rejected_logps)
        - (1.0 - ratio) * anchor
    )


def mnpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    history: Sequence[tuple[Tensor, Tensor]],
    *,
    eta: float,
    tau: float,
    history_weights: Sequence[float],
    p_label: Tensor | None = None,
) -> Tensor:
    """Per-pair MNPO loss (h - 1/(2*eta))^2 (`mnpo_margin`), or its expectation over a soft
    label; the reference and history log-probs are constants."""
    h = mnpo_margin(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        history,
        eta=eta,
        tau=tau,
        history_weights=history_weights,
    )
    return square_loss(h, 1.0 / (2.0 * eta), p_label)


def inpo_margin(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    pi_t_chosen_logps: Tensor,
    pi_t_rejected_logps: Tensor,
    *,
    eta: float,
    tau: float,
) -> Tensor:
    """The implicit margin h of each pair; training drives it to (2P - 1)/(2*eta). MNPO's
    with pi_t as the whole history."""
    return mnpo_margin(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        [(pi_t_chosen_logps, pi_t_rejected_logps)],
        eta=eta,
        tau=tau,
        history_weights=(1.0,),
    )


def inpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    pi_t_chosen_logps: Tensor,
    pi_t_rejected_logps: Tensor,
    *,
    eta: float,
    tau: float,
    p_label: Tensor | None = None,
) -> Tensor:
    """Per-pair INPO loss (h - 1/(2*eta))^2, or its expectation over a soft label;
    pi_ref and pi_t log-probs are constants. MNPO's with pi_t as the whole history."""
    return mnpo_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        [(pi_t_chosen_logps, pi_t_rejected_logps)],
        eta=eta,
        tau=tau,
        history_weights=(1.0,),
        p_label=p_label,
    )


def sppo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    pi_t_chosen_logps: Tensor,
    pi_t_rejected_logps: Tensor,
    p_chosen: Tensor,
    p_rejected: Tensor,
    *,
    eta: float,
) -> Tensor:
    """Per-pair SPPO loss: the mean over the pair's two responses y of
    (log pi(y) - log pi_t(y) - (P(y > pi_t) - 1/2)/eta)^2, with ``p_chosen`` and
    ``p_rejected`` the estimated P(y > pi_t) of each side. Which side is "chosen" does not
    matter: the targets come from the win rates, not from a label."""
    _check_inpo_knobs(eta, 0.0)
    _check_p(p_chosen, "p_chosen")
    _check_p(p_rejected, "p_rejected")
    chosen = policy_chosen_logps - pi_t_chosen_logps - (p_chosen - 0.5) / eta
    rejected = policy_rejected_logps - pi_t_rejected_logps - (p_rejected - 0.5) / eta
    return (chosen**2 + rejected**2) / 2


def ref_margin(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> Tensor:
    """DPO's implicit reward margin against a fixed reference (beta not applied)."""
    return (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got beta={beta}")


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    p_label: Tensor | None = None,
) -> Tensor:
    """Per-pair DPO loss -log sigmoid(beta * margin) against a fixed reference; with a
    soft label, -[P log sigmoid(beta m) + (1 - P) log sigmoid(-beta m)]."""
    _check_beta(beta)
    z = beta * ref_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    logsig = torch.nn.functional.logsigmoid
    if p_label is None:
        return -logsig(z)
    _check_p(p_label)
    return -(p_label * logsig(z) + (1 - p_label) * logsig(-z))


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    p_label: Tensor | None = None,
) -> Tensor:
    """Per-pair IPO loss (margin - 1/(2*beta))^2 against a fixed reference (soft label:
    its expectation, minimized at the soft target (2P - 1)/(2*beta))."""
    _check_beta(beta)
    margin = ref_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return square_loss(margin, 1.0 / (2.0 * beta), p_label)


def margin_scale(loss_type: str, eta: float, beta: float) -> float | None:
    """c of the square pair losses: a hard-labelled margin is pulled to c, a soft one to
    (2P - 1) c. None for DPO, which has no target margin, and for SPPO, whose target
    comes from the two responses' win rates (`objective`)."""
    return {"inpo": 0.5 / eta, "mnpo": 0.5 / eta, "ipo": 0.5 / beta}.get(loss_type)


def _check_type(kind: str) -> None:
    if kind not in LOSS_TYPES:
        raise ValueError(f"loss.type = {kind!r}: unknown ({', '.join(LOSS_TYPES)})")


def _history(cache: Mapping[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
    """pi_t's and then every older iterate's cached log-probs, while the keys go on."""
    out, j = [(cache["pi_t_chosen"], cache["pi_t_rejected"])], 1
    while all(k in cache for k in history_keys(j)):
        out.append(tuple(cache[k] for k in history_keys(j)))
        j += 1
    return out


def objective(
    loss_cfg: Mapping,
    chosen: Tensor,
    rejected: Tensor,
    cache: Mapping[str, Tensor],
    p_label: Tensor | None = None,
    p_win: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(per-pair loss, per-pair margin, per-pair target margin or None) of the configured
    objective (loss.type of LOSS_TYPES, loss.eta, loss.tau, loss.beta, loss.history_weights)
    given the policy's log-probs and the cached ones (CACHE_KEYS; for mnpo also
    `history_keys`(j) for j = 1, 2, ... as far as they are present: the iterates that
    exist). sppo needs ``p_win`` = (P(chosen > pi_t), P(rejected > pi_t)) and ignores
    ``p_label``; its margin is Δ log(pi/pi_t), pulled to (p_chosen - p_rejected)/eta."""
    kind = loss_cfg["type"]
    _check_type(kind)
    eta = loss_cfg["eta"]
    pi_t = (cache["pi_t_chosen"], cache["pi_t_rejected"])
    if kind == "sppo":
        if p_win is None:
            raise ValueError(
                "loss.type = 'sppo' needs p_win = (P(chosen > pi_t), P(rejected > pi_t))"
            )
        loss = sppo_loss(chosen, rejected, *pi_t, *p_win, eta=eta)
        return loss, ref_margin(chosen, rejected, *pi_t), (p_win[0] - p_win[1]) / eta
    ref = (cache["ref_chosen"], cache["ref_rejected"])
    if kind in ("inpo", "mnpo"):  # INPO is MNPO with pi_t as the whole history
        weights = loss_cfg.get("history_weights") if kind == "mnpo" else (1.0,)
        if not weights:
            raise ValueError("loss.type = 'mnpo' needs loss.history_weights (non-empty)")
        history = _history(cache) if kind == "mnpo" else [pi_t]
        margin = mnpo_margin(
            chosen, rejected, *ref, history, eta=eta, tau=loss_cfg["tau"], history_weights=weights
        )
        loss = square_loss(margin, 0.5 / eta, p_label)
    else:
        fn = ipo_loss if kind == "ipo" else dpo_loss
        margin = ref_margin(chosen, rejected, *ref)
        loss = fn(chosen, rejected, *ref, beta=loss_cfg["beta"], p_label=p_label)
    c = margin_scale(kind, eta, loss_cfg["beta"])
    if c is None:
        return loss, margin, None
    p = p_label if p_label is not None else torch.ones_like(margin)
    return loss, margin, (2 * p - 1) * c


def objective_floor(
    loss_cfg: Mapping, p_label: Tensor, p_win: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """Per-pair minimum of the configured objective over the policy's log-probs, which
    `objective` minus it leaves as the excess: 0 for a hard or sampled label (p_label = 1).
    The square pair losses (inpo, mnpo, ipo) reach P (h - c)^2 + (1 - P) (h + c)^2 =
    4 P (1 - P) c^2 at h = (2P - 1) c; the label-smoothed DPO loss reaches P's binary
    entropy at sigmoid(beta m) = P; SPPO's two per-response terms both reach 0 (its floor
    is 0, shaped like ``p_win``'s entries when given, else like ``p_label``)."""
    _check_p(p_label)
    _check_type(loss_cfg["type"])
    if loss_cfg["type"] == "sppo":
        return torch.zeros_like(p_win[0] if p_win is not None else p_label)
    c = margin_scale(loss_cfg["type"], loss_cfg["eta"], loss_cfg["beta"])
    if c is not None:
        return 4 * p_label * (1 - p_label) * c**2
    return -(torch.special.xlogy(p_label, p_label) + torch.special.xlogy(1 - p_label, 1 - p_label))


def sequence_logps(logits: Tensor, labels: Tensor, mask: Tensor, normalize: bool = False) -> Tensor:
    """Sum (or mean, with ``normalize``) of log p(labels) over positions where mask is 1.

    ``logits[:, i]`` must be the prediction for ``labels[:, i]`` (shift before
    calling). ``mask`` is 1 on response tokens and 0 on prompt and padding, so
    the result does not depend on how much padding a batch carries.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # log-probs of long sequences need fp32 sums
    # gather - logsumexp avoids materialising a second [B, T, V] log_softmax tensor.
    picked = torch.gather(logits, -1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    token_logps = picked - torch.logsumexp(logits, dim=-1)
    mask = mask.to(token_logps.dtype)
    total = (token_logps * mask).sum(-1)
    if normalize:
        return total / mask.sum(-1).clamp_min(1.0)
    return total
