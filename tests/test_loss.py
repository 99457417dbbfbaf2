import math

import pytest
import torch

from inpo.loss import dpo_loss, inpo_loss, inpo_margin, ipo_loss, sequence_logprobs


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


def test_sequence_logprobs_sum_and_mean():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]])
    lp = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    want = (lp * mask).sum(-1)
    torch.testing.assert_close(sequence_logprobs(logits, labels, mask), want)
    torch.testing.assert_close(sequence_logprobs(logits, labels, mask, normalize=True), want / 3)


def test_sequence_logprobs_ignores_padding_length():
    torch.manual_seed(1)
    logits = torch.randn(1, 4, 9)
    labels = torch.randint(0, 9, (1, 4))
    mask = torch.tensor([[0, 1, 1, 1]])
    base = sequence_logprobs(logits, labels, mask)
    for extra in (1, 7):
        padded_logits = torch.cat([logits, torch.randn(1, extra, 9) * 100], dim=1)
        padded_labels = torch.cat([labels, torch.full((1, extra), -100)], dim=1)
        padded_mask = torch.cat([mask, torch.zeros(1, extra, dtype=torch.long)], dim=1)
        torch.testing.assert_close(
            sequence_logprobs(padded_logits, padded_labels, padded_mask), base
        )
