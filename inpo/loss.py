"""INPO loss and the DPO/IPO baselines, as pure torch functions.

All log-probabilities here are per sequence: the sum (or, with
``normalize=True``, the mean) of the response tokens' log-probs under a model.
Every loss returns one value per pair, shape [B]; the caller averages.

INPO (Zhang et al., 2025, Algorithm 1 / Eq. 11), one pair (y_w, y_l) from pi_t:

    h = [log pi(y_w) - log pi(y_l)]
        - (tau/eta)     * [log pi_ref(y_w) - log pi_ref(y_l)]
        - (1 - tau/eta) * [log pi_t(y_w)   - log pi_t(y_l)]
    loss = (h - 1/(2*eta))^2
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _check_inpo_knobs(eta: float, tau: float) -> None:
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got eta={eta}")
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got tau={tau}")
    if tau >= eta:
        raise ValueError(f"tau must be < eta, got tau={tau} with eta={eta}")


def inpo_margin(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    prev_chosen_logps: Tensor,
    prev_rejected_logps: Tensor,
    *,
    eta: float,
    tau: float,
) -> Tensor:
    """The implicit margin h of each pair; training drives it to 1/(2*eta)."""
    _check_inpo_knobs(eta, tau)
    ratio = tau / eta
    return (
        (policy_chosen_logps - policy_rejected_logps)
        - ratio * (ref_chosen_logps - ref_rejected_logps)
        - (1.0 - ratio) * (prev_chosen_logps - prev_rejected_logps)
    )


def inpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    prev_chosen_logps: Tensor,
    prev_rejected_logps: Tensor,
    *,
    eta: float,
    tau: float,
) -> Tensor:
    """Per-pair INPO loss (h - 1/(2*eta))^2; pi_ref and pi_t log-probs are constants."""
    h = inpo_margin(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        prev_chosen_logps,
        prev_rejected_logps,
        eta=eta,
        tau=tau,
    )
    return (h - 1.0 / (2.0 * eta)) ** 2


def _ref_margin(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> Tensor:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got beta={beta}")
    return (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> Tensor:
    """Per-pair DPO loss -log sigmoid(beta * margin) against a fixed reference."""
    margin = _ref_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    return -torch.nn.functional.logsigmoid(beta * margin)


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> Tensor:
    """Per-pair IPO loss (margin - 1/(2*beta))^2 against a fixed reference."""
    margin = _ref_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    return (margin - 1.0 / (2.0 * beta)) ** 2


def sequence_logprobs(
    logits: Tensor, labels: Tensor, mask: Tensor, normalize: bool = False
) -> Tensor:
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
