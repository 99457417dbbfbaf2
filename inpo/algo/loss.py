"""INPO loss and the DPO/IPO baselines, as pure torch functions.

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
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Tensor = torch.Tensor

#: Cached log-probs of each pair under the frozen pi_ref and pi_t, by name.
CACHE_KEYS = ("ref_chosen", "ref_rejected", "pi_t_chosen", "pi_t_rejected")


def _check_inpo_knobs(eta: float, tau: float) -> None:
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got eta={eta}")
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got tau={tau}")
    if tau >= eta:
        raise ValueError(f"tau must be < eta, got tau={tau} with eta={eta}")


def _check_p(p_label: Tensor | None) -> None:
    if p_label is not None and ((p_label < 0) | (p_label > 1)).any():
        raise ValueError(f"p_label must lie in [0, 1], got {p_label.min()}..{p_label.max()}")


def square_loss(margin: Tensor, target: float, p_label: Tensor | None = None) -> Tensor:
    """P (m - c)^2 + (1 - P) (m + c)^2 per pair: the expected square loss of a label that
    says "chosen wins" with probability P (P = 1, the default, is a hard label)."""
    if p_label is None:
        return (margin - target) ** 2
    _check_p(p_label)
    return p_label * (margin - target) ** 2 + (1 - p_label) * (margin + target) ** 2


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
    """The implicit margin h of each pair; training drives it to (2P - 1)/(2*eta)."""
    _check_inpo_knobs(eta, tau)
    ratio = tau / eta
    return (
        (policy_chosen_logps - policy_rejected_logps)
        - ratio * (ref_chosen_logps - ref_rejected_logps)
        - (1.0 - ratio) * (pi_t_chosen_logps - pi_t_rejected_logps)
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
    pi_ref and pi_t log-probs are constants."""
    h = inpo_margin(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        pi_t_chosen_logps,
        pi_t_rejected_logps,
        eta=eta,
        tau=tau,
    )
    return square_loss(h, 1.0 / (2.0 * eta), p_label)


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
    """c of the square losses: a hard-labelled margin is pulled to c, a soft one to
    (2P - 1) c. None for DPO, which has no target margin."""
    return {"inpo": 0.5 / eta, "ipo": 0.5 / beta}.get(loss_type)


def objective(
    loss_cfg: Mapping,
    chosen: Tensor,
    rejected: Tensor,
    cache: Mapping[str, Tensor],
    p_label: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(per-pair loss, per-pair margin, per-pair target margin or None) of the configured
    objective (loss.type, loss.eta, loss.tau, loss.beta) given the policy's log-probs and
    the cached ones (CACHE_KEYS)."""
    kind = loss_cfg["type"]
    ref = (cache["ref_chosen"], cache["ref_rejected"])
    if kind == "inpo":
        knobs = {"eta": loss_cfg["eta"], "tau": loss_cfg["tau"]}
        pi_t = (cache["pi_t_chosen"], cache["pi_t_rejected"])
        margin = inpo_margin(chosen, rejected, *ref, *pi_t, **knobs)
        loss = inpo_loss(chosen, rejected, *ref, *pi_t, **knobs, p_label=p_label)
    elif kind in ("ipo", "dpo"):
        fn = ipo_loss if kind == "ipo" else dpo_loss
        margin = ref_margin(chosen, rejected, *ref)
        loss = fn(chosen, rejected, *ref, beta=loss_cfg["beta"], p_label=p_label)
    else:
        raise ValueError(f"loss.type = {kind!r}: unknown (inpo, ipo, dpo)")
    c = margin_scale(kind, loss_cfg["eta"], loss_cfg["beta"])
    if c is None:
        return loss, margin, None
    p = p_label if p_label is not None else torch.ones_like(margin)
    return loss, margin, (2 * p - 1) * c


def objective_floor(loss_cfg: Mapping, p_label: Tensor) -> Tensor:
    """Per-pair minimum of the configured objective over the margin, which `objective`
    minus it leaves as the excess: 0 for a hard or sampled label (p_label = 1). The square
    losses reach P (h - c)^2 + (1 - P) (h + c)^2 = 4 P (1 - P) c^2 at h = (2P - 1) c; the
    label-smoothed DPO loss reaches P's binary entropy at sigmoid(beta m) = P."""
    _check_p(p_label)
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
