import math

import pytest
import torch

from inpo.algo.loss import (
    CACHE_KEYS,
    dpo_loss,
    inpo_loss,
    inpo_margin,
    ipo_loss,
    objective,
    objective_floor,
    sequence_logps,
)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_inpo_loss_matches_hand_computation():
    # eta = 0.5, tau = 0.1 -> tau/eta = 0.2, target 1/(2*eta) = 1.
    pc, pr, rc, rr, qc, qr = t(-3.0), t(-5.0), t(-4.0), t(-4.5), t(-3.5), t(-4.0)
    h = (-3.0 + 5.0) - 0.2 * (-4.0 + 4.5) - 0.8 * (-3.5 + 4.0)  # 2 - 0.1 - 0.4 = 1.5
    loss = inpo_loss(pc, pr, rc, rr, qc, qr, eta=0.5, tau=0.1)
    assert loss.item() == pytest.approx((h - 1.0) ** 2)  # 0.25
    assert loss.item() == pytest.approx(0.25)


def test_inpo_loss_is_per_pair():
    x = torch.randn(6, 5, dtype=torch.float64)
    loss = inpo_loss(*x, eta=0.2, tau=0.05)
    assert loss.shape == (5,)
    for i in range(5):
        single = inpo_loss(*(x[:, i : i + 1]), eta=0.2, tau=0.05)
        assert loss[i].item() == pytest.approx(single.item())


def test_first_iteration_is_ipo_with_beta_eta():
    policy_c, policy_r, ref_c, ref_r = torch.randn(4, 16, dtype=torch.float64)
    for tau in (0.0, 0.01, 0.02):
        got = inpo_loss(policy_c, policy_r, ref_c, ref_r, ref_c, ref_r, eta=0.03, tau=tau)
        want = ipo_loss(policy_c, policy_r, ref_c, ref_r, beta=0.03)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def test_tau_zero_ignores_reference():
    pc, pr, qc, qr = torch.randn(4, 8, dtype=torch.float64)
    a = inpo_loss(pc, pr, torch.zeros(8), torch.zeros(8), qc, qr, eta=0.1, tau=0.0)
    b = inpo_loss(pc, pr, torch.randn(8) * 9, torch.randn(8) * 9, qc, qr, eta=0.1, tau=0.0)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, ((pc - pr) - (qc - qr) - 5.0) ** 2)


@pytest.mark.parametrize("start,direction", [(0.0, 1.0), (50.0, -1.0)])
def test_gradient_pushes_margin_toward_target(start, direction):
    eta, tau = 0.05, 0.01  # target 10
    ref_c, ref_r, prev_c, prev_r = t(-2.0), t(-1.0), t(-3.0), t(-2.5)
    anchored = (tau / eta) * (ref_c - ref_r) + (1 - tau / eta) * (prev_c - prev_r)
    chosen = (t(-10.0) + start + anchored).requires_grad_()
    rejected = t(-10.0).requires_grad_()
    inpo_loss(chosen, rejected, ref_c, ref_r, prev_c, prev_r, eta=eta, tau=tau).sum().backward()
    # Descending the gradient raises log pi(y_w) - log pi(y_l) below the target, lowers it above.
    assert -chosen.grad.item() * direction > 0
    assert rejected.grad.item() * direction > 0
    # A gradient step lands closer to the fixed point h = 1/(2*eta).
    h0 = inpo_margin(chosen, rejected, ref_c, ref_r, prev_c, prev_r, eta=eta, tau=tau).item()
    lr = 0.01
    h1 = inpo_margin(
        chosen - lr * chosen.grad,
        rejected - lr * rejected.grad,
        ref_c,
        ref_r,
        prev_c,
        prev_r,
        eta=eta,
        tau=tau,
    ).item()
    assert abs(h1 - 10.0) < abs(h0 - 10.0)


@pytest.mark.parametrize(
    "eta,tau,word", [(0.0, 0.0, "eta"), (-1.0, 0.0, "eta"), (0.1, -0.1, "tau"), (0.1, 0.1, "tau")]
)
def test_invalid_knobs_raise_naming_value(eta, tau, word):
    x = torch.zeros(1)
    with pytest.raises(ValueError, match=rf"{word}.*{tau if word == 'tau' else eta}"):
        inpo_loss(x, x, x, x, x, x, eta=eta, tau=tau)


def test_dpo_and_ipo_hand_values():
    pc, pr, rc, rr = t(-1.0), t(-2.0), t(-1.5), t(-1.5)  # margin = 1
    assert dpo_loss(pc, pr, rc, rr, beta=0.5).item() == pytest.approx(
        -math.log(1 / (1 + math.exp(-0.5)))
    )
    assert ipo_loss(pc, pr, rc, rr, beta=0.25).item() == pytest.approx((1 - 2) ** 2)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pc, pr, rc, rr, beta=0.0)


def test_sequence_logps_sum_and_mean():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]])
    lp = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    want = (lp * mask).sum(-1)
    torch.testing.assert_close(sequence_logps(logits, labels, mask), want)
    torch.testing.assert_close(sequence_logps(logits, labels, mask, normalize=True), want / 3)


def test_sequence_logps_ignores_padding_length():
    torch.manual_seed(1)
    logits = torch.randn(1, 4, 9)
    labels = torch.randint(0, 9, (1, 4))
    mask = torch.tensor([[0, 1, 1, 1]])
    base = sequence_logps(logits, labels, mask)
    for extra in (1, 7):
        padded_logits = torch.cat([logits, torch.randn(1, extra, 9) * 100], dim=1)
        padded_labels = torch.cat([labels, torch.full((1, extra), -100)], dim=1)
        padded_mask = torch.cat([mask, torch.zeros(1, extra, dtype=torch.long)], dim=1)
        torch.testing.assert_close(sequence_logps(padded_logits, padded_labels, padded_mask), base)


def test_soft_label_is_the_expectation_over_the_label():
    # eta = 0.5 -> c = 1; h = 1.5 as in the hand example above; P = 0.8.
    pc, pr, rc, rr, qc, qr = t(-3.0), t(-5.0), t(-4.0), t(-4.5), t(-3.5), t(-4.0)
    soft = inpo_loss(pc, pr, rc, rr, qc, qr, eta=0.5, tau=0.1, p_label=t(0.8))
    assert soft.item() == pytest.approx(0.8 * 0.5**2 + 0.2 * 2.5**2)  # 1.45
    # = (h - (2P - 1) c)^2 + 4 P (1 - P) c^2: minimized at h = (2P - 1) c
    assert soft.item() == pytest.approx((1.5 - 0.6) ** 2 + 4 * 0.8 * 0.2)
    hard = inpo_loss(pc, pr, rc, rr, qc, qr, eta=0.5, tau=0.1, p_label=t(1.0))
    assert hard.item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="p_label"):
        inpo_loss(pc, pr, rc, rr, qc, qr, eta=0.5, tau=0.1, p_label=t(1.2))


def test_soft_gradient_equals_the_mean_gradient_of_sampled_labels():
    import random

    from inpo.judging.pairing import Pair, label_pair

    eta, tau, p = 0.25, 0.05, 0.7
    logps = {0: -3.0, 1: -4.5}  # policy log-probs of responses 0 and 1
    ref = {0: -3.2, 1: -4.0}
    prev = {0: -3.1, 1: -4.4}

    def grad(chosen, rejected, p_label):
        x = torch.tensor([logps[0], logps[1]], dtype=torch.float64, requires_grad=True)
        loss = inpo_loss(
            x[chosen : chosen + 1],
            x[rejected : rejected + 1],
            t(ref[chosen]),
            t(ref[rejected]),
            t(prev[chosen]),
            t(prev[rejected]),
            eta=eta,
            tau=tau,
            p_label=p_label,
        )
        loss.sum().backward()
        return x.grad

    soft = grad(0, 1, t(p))
    # Exact expectation over the sampled label: 0 wins with probability p.
    exact = p * grad(0, 1, None) + (1 - p) * grad(1, 0, None)
    torch.testing.assert_close(soft, exact)
    # And through the real sampler, within Monte Carlo error.
    rng = random.Random(3)
    draws = [label_pair(Pair(0, 1, p), "sample", rng) for _ in range(4000)]
    mc = sum(grad(d.chosen, d.rejected, None) for d in draws) / len(draws)
    spread = (grad(0, 1, None) - grad(1, 0, None)).abs()
    assert ((mc - soft).abs() <= 4 * spread * (p * (1 - p) / len(draws)) ** 0.5).all()


def test_soft_ipo_and_dpo():
    pc, pr, rc, rr = t(-1.0), t(-2.0), t(-1.5), t(-1.5)  # margin = 1
    # IPO, beta = 0.25 -> c = 2: 0.9 (1 - 2)^2 + 0.1 (1 + 2)^2 = 1.8
    assert ipo_loss(pc, pr, rc, rr, beta=0.25, p_label=t(0.9)).item() == pytest.approx(1.8)
    # DPO, beta = 0.5: -(0.9 log s(0.5) + 0.1 log s(-0.5))
    want = -(0.9 * math.log(1 / (1 + math.exp(-0.5))) + 0.1 * math.log(1 / (1 + math.exp(0.5))))
    assert dpo_loss(pc, pr, rc, rr, beta=0.5, p_label=t(0.9)).item() == pytest.approx(want)
    assert dpo_loss(pc, pr, rc, rr, beta=0.5, p_label=t(1.0)).item() == pytest.approx(
        dpo_loss(pc, pr, rc, rr, beta=0.5).item()
    )


def test_objective_dispatch_and_targets():
    from inpo.algo.loss import objective

    cfg = {"type": "inpo", "eta": 0.5, "tau": 0.1, "beta": 0.1}
    cache = {
        "ref_chosen": t(-4.0, -1.0),
        "ref_rejected": t(-4.5, -1.0),
        "pi_t_chosen": t(-3.5, -1.0),
        "pi_t_rejected": t(-4.0, -1.0),
    }
    chosen, rejected = t(-3.0, -1.0), t(-5.0, -1.0)
    loss, margin, target = objective(cfg, chosen, rejected, cache, t(1.0, 0.5))
    torch.testing.assert_close(margin, t(1.5, 0.0))
    torch.testing.assert_close(target, t(1.0, 0.0))  # (2P - 1) / (2 eta); a tie's is 0
    torch.testing.assert_close(loss, t(0.25, 1.0))  # a tie at h = 0 still costs c^2
    ipo = objective({**cfg, "type": "ipo", "beta": 0.25}, chosen, rejected, cache)
    torch.testing.assert_close(ipo[2], t(2.0, 2.0))
    assert objective({**cfg, "type": "dpo"}, chosen, rejected, cache)[2] is None
    with pytest.raises(ValueError, match="loss.type"):
        objective({**cfg, "type": "kto"}, chosen, rejected, cache)


@pytest.mark.parametrize(
    "kind, scale",
    [("inpo", 0.5 / 0.25), ("ipo", 0.5 / 0.1), ("dpo", None)],
)
def test_the_floor_is_the_soft_loss_at_its_minimizer(kind, scale):
    """objective_floor = the soft loss at h = (2P - 1) c for the square losses (INPO with
    c = 1/(2 eta), IPO with c = 1/(2 beta)), at beta m = logit(P) for DPO; any other margin
    is above it, and a hard label (P = 1) has floor 0."""
    cfg = {"type": kind, "eta": 0.25, "tau": 0.25 / 3, "beta": 0.1}
    p = t(0.5, 0.6, 0.75, 0.9, 0.99)
    if scale is not None:
        best = (2 * p - 1) * scale
        assert objective_floor(cfg, p).tolist() == pytest.approx(
            (4 * p * (1 - p) * scale**2).tolist()
        )
    else:
        best = torch.logit(p) / cfg["beta"]
        entropy = -(p * p.log() + (1 - p) * (1 - p).log())
        assert objective_floor(cfg, p).tolist() == pytest.approx(entropy.tolist())
    zeros = {k: torch.zeros_like(p) for k in CACHE_KEYS}  # margin = chosen - rejected

    def loss_at(margin):
        return objective(cfg, margin, torch.zeros_like(p), zeros, p)[0]

    floor = objective_floor(cfg, p)
    assert loss_at(best).tolist() == pytest.approx(floor.tolist(), abs=1e-9)
    for d in (-0.3, 0.3):
        assert (loss_at(best + d) > floor + 1e-6).all()
    assert objective_floor(cfg, t(1.0)).item() == 0.0
