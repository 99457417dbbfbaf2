import math

import pytest
import torch

from inpo.algo.loss import (
    CACHE_KEYS,
    LOSS_TYPES,
    dpo_loss,
    history_keys,
    inpo_loss,
    inpo_margin,
    ipo_loss,
    margin_scale,
    mnpo_loss,
    mnpo_margin,
    objective,
    objective_floor,
    sequence_logps,
    sppo_loss,
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
    [("inpo", 0.5 / 0.25), ("mnpo", 0.5 / 0.25), ("ipo", 0.5 / 0.1), ("dpo", None)],
)
def test_the_floor_is_the_soft_loss_at_its_minimizer(kind, scale):
    """objective_floor = the soft loss at h = (2P - 1) c for the square losses (INPO and
    MNPO with c = 1/(2 eta), IPO with c = 1/(2 beta)), at beta m = logit(P) for DPO; any
    other margin is above it, and a hard label (P = 1) has floor 0."""
    cfg = {"type": kind, "eta": 0.25, "tau": 0.25 / 3, "beta": 0.1, "history_weights": [0.8, 0.2]}
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


# --- MNPO ---------------------------------------------------------------------------


def test_history_keys():
    assert history_keys(1) == ("pi_hist1_chosen", "pi_hist1_rejected")
    assert history_keys(3) == ("pi_hist3_chosen", "pi_hist3_rejected")
    with pytest.raises(ValueError, match="CACHE_KEYS"):
        history_keys(0)


def test_mnpo_loss_matches_hand_computation():
    # eta = 0.5, tau = 0.1 -> tau/eta = 0.2, target 1; weights [3, 1] -> λ = (.75, .25)
    pc, pr, rc, rr = t(-3.0), t(-5.0), t(-4.0), t(-4.5)
    history = [(t(-3.5), t(-4.0)), (t(-2.0), t(-4.0))]  # Δ = 0.5 for pi_t, 2 for pi_t-1
    # h = 2 - 0.2 * 0.5 - 0.8 * (0.75 * 0.5 + 0.25 * 2) = 2 - 0.1 - 0.7 = 1.2
    h = mnpo_margin(pc, pr, rc, rr, history, eta=0.5, tau=0.1, history_weights=[3, 1])
    assert h.item() == pytest.approx(1.2)
    loss = mnpo_loss(pc, pr, rc, rr, history, eta=0.5, tau=0.1, history_weights=[3, 1])
    assert loss.item() == pytest.approx(0.2**2)
    soft = mnpo_loss(
        pc, pr, rc, rr, history, eta=0.5, tau=0.1, history_weights=[3, 1], p_label=t(0.8)
    )
    assert soft.item() == pytest.approx(0.8 * 0.2**2 + 0.2 * 2.2**2)


def test_mnpo_loss_is_per_pair():
    x = torch.randn(8, 5, dtype=torch.float64)
    knobs = {"eta": 0.2, "tau": 0.05, "history_weights": [0.5, 0.3, 0.2]}
    loss = mnpo_loss(*x[:4], [(x[4], x[5]), (x[6], x[7])], **knobs)
    assert loss.shape == (5,)
    for i in range(5):
        y = x[:, i : i + 1]
        single = mnpo_loss(*y[:4], [(y[4], y[5]), (y[6], y[7])], **knobs)
        assert loss[i].item() == pytest.approx(single.item())


def test_mnpo_with_one_weight_or_only_pi_t_is_inpo_exactly():
    torch.manual_seed(0)
    pc, pr, rc, rr, qc, qr, oc, orr = torch.randn(8, 16, dtype=torch.float64)
    p = torch.rand(16, dtype=torch.float64)
    inpo = inpo_loss(pc, pr, rc, rr, qc, qr, eta=0.03, tau=0.01, p_label=p)
    # one weight: older iterates in the history are not mixed in at all
    one = mnpo_loss(
        pc, pr, rc, rr, [(qc, qr), (oc, orr)], eta=0.03, tau=0.01, history_weights=[1], p_label=p
    )
    assert torch.equal(one, inpo)
    # pi_t alone (iteration 1, or a cache without older iterates): the weights renormalise
    alone = mnpo_loss(
        pc, pr, rc, rr, [(qc, qr)], eta=0.03, tau=0.01, history_weights=[0.8, 0.2], p_label=p
    )
    assert torch.equal(alone, inpo)
    cache = dict(zip(CACHE_KEYS, (rc, rr, qc, qr), strict=True))
    cfg = {"type": "inpo", "eta": 0.03, "tau": 0.01, "beta": 0.1, "history_weights": None}
    want = objective(cfg, pc, pr, cache, p)
    got = objective({**cfg, "type": "mnpo", "history_weights": [0.8, 0.2]}, pc, pr, cache, p)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_mnpo_objective_truncates_and_renormalises_to_the_cached_history():
    # eta = 0.5, tau = 0.1; Δ log pi_t = 0.5, Δ log pi_t-1 = 2, Δ log pi_t-2 = 4
    cfg = {"type": "mnpo", "eta": 0.5, "tau": 0.1, "beta": 0.1}
    cache = {
        "ref_chosen": t(-4.0),
        "ref_rejected": t(-4.5),
        "pi_t_chosen": t(-3.5),
        "pi_t_rejected": t(-4.0),
    }
    hist1 = dict(zip(history_keys(1), (t(-2.0), t(-4.0)), strict=True))
    hist2 = dict(zip(history_keys(2), (t(0.0), t(-4.0)), strict=True))
    chosen, rejected = t(-3.0), t(-5.0)

    def margin(weights, older=None):  # with pi_t-1 cached, and pi_t-2 if given
        full = {**cache, **hist1, **(older or {})}
        return objective({**cfg, "history_weights": weights}, chosen, rejected, full)[1].item()

    # λ = (.5, .3, .2) with pi_t-2 cached: anchor .25 + .6 + .8 = 1.65
    assert margin([0.5, 0.3, 0.2], hist2) == pytest.approx(2 - 0.1 - 0.8 * 1.65)
    # without pi_t-2 (iteration 2): λ = (.5, .3) / .8 = (.625, .375), anchor = 1.0625
    assert margin([0.5, 0.3, 0.2]) == pytest.approx(2 - 0.1 - 0.8 * 1.0625)
    # more history than weights: pi_t-2 is not mixed in
    assert margin([0.5, 0.5], hist2) == pytest.approx(2 - 0.1 - 0.8 * 1.25)
    # the history is contiguous: pi_t-2 without pi_t-1 is ignored
    only2 = objective({**cfg, "history_weights": [1, 1, 1]}, chosen, rejected, {**cache, **hist2})
    assert only2[1].item() == pytest.approx(2 - 0.1 - 0.8 * 0.5)
    assert only2[2].item() == pytest.approx(1.0)  # target 1/(2 eta), as INPO's
    with pytest.raises(ValueError, match="history_weights"):
        objective({**cfg, "history_weights": None}, chosen, rejected, cache)
    with pytest.raises(ValueError, match="history weights"):
        objective({**cfg, "history_weights": [0.0, 1.0]}, chosen, rejected, cache)


def test_mnpo_matches_the_authors_mnpo_loss():
    """Equality with MNPO's own loss: smiles724/MNPO, mnpo_scripts/mnpo_trainer.py,
    MNPOTrainer.mnpo_loss, at commit b8317e91a80df71f8a5fddca0959bc8a14f98e7b, re-computed
    here in our own words on the same random inputs (their code is not copied or imported).

    Their rule: keep the first min(len(history), max_history_t) history entries (history0
    is the current policy pi_t, history1 pi_{t-1}, ... as run_iter*.sh orders
    --history_paths), weight them by their weights normalised over those entries (equal
    weights if the weights sum to 0), and square (Δ log pi - ratio Δ log pi_ref -
    (1 - ratio) Σ λ_j Δ log pi_{t-j} - 1/(2 eta)); ratio is our tau/eta. Their trainer reads
    the weights from args.history_weights, which MNPOConfig does not define (it has
    `weights`), so their runs use equal weights [1, 1] with max_history_t = 2, eta 0.0075,
    ratio 1/3; [0.25, 0.75] is what their iter2 yaml files meant to set.

    Log-prob scale: their policy log-probs are per-token means (SimPOTrainer's
    concatenated_forward, average_log_prob=True), and so are their reference and history
    log-probs at this commit (precompute.py's get_batch_logps defaults to
    average_log_prob=True); so their eta is tuned to mean log-probs. Whatever the scale,
    this compares the loss function on the same inputs."""
    torch.manual_seed(7)

    def theirs(pc, pr, rc, rr, history, ratio, eta, weights, max_t):
        kept = history[: min(len(history), max_t)]
        w = weights[: len(kept)]
        lam = [x / sum(w) for x in w] if sum(w) else [1 / len(kept)] * len(kept)
        mixed = sum(lam_j * (c - r) for lam_j, (c, r) in zip(lam, kept, strict=True))
        logits = (pc - pr) - ratio * (rc - rr) - (1 - ratio) * mixed
        return (logits - 1 / (2 * eta)) ** 2

    eta, ratio = 0.0075, 1 / 3
    for n_hist in (1, 2, 3):
        for weights in ([1.0, 1.0], [0.25, 0.75]):
            x = torch.randn(4 + 2 * n_hist, 32, dtype=torch.float64) * 3 - 2
            history = [(x[4 + 2 * j], x[5 + 2 * j]) for j in range(n_hist)]
            want = theirs(*x[:4], history, ratio, eta, weights, max_t=2)
            got = mnpo_loss(*x[:4], history, eta=eta, tau=ratio * eta, history_weights=weights)
            assert ((got - want).abs() / want.abs()).max().item() <= 1e-6


# --- SPPO ---------------------------------------------------------------------------


def test_sppo_loss_matches_hand_computation():
    # eta = 0.5: targets (P - 1/2)/eta = 0.6 for P = .8 and -0.4 for P = .3
    pc, pr, qc, qr = t(-3.0), t(-5.0), t(-3.5), t(-4.5)  # log ratios 0.5 and -0.5
    loss = sppo_loss(pc, pr, qc, qr, t(0.8), t(0.3), eta=0.5)
    assert loss.item() == pytest.approx(((0.5 - 0.6) ** 2 + (-0.5 + 0.4) ** 2) / 2)  # .01
    # the sides are symmetric: swapping chosen and rejected (with their P) changes nothing
    assert sppo_loss(pr, pc, qr, qc, t(0.3), t(0.8), eta=0.5).item() == pytest.approx(0.01)
    with pytest.raises(ValueError, match="p_chosen"):
        sppo_loss(pc, pr, qc, qr, t(1.2), t(0.3), eta=0.5)
    with pytest.raises(ValueError, match="eta"):
        sppo_loss(pc, pr, qc, qr, t(0.8), t(0.3), eta=0.0)


def test_sppo_loss_is_per_pair():
    x = torch.randn(4, 5, dtype=torch.float64)
    p = torch.rand(2, 5, dtype=torch.float64)
    loss = sppo_loss(*x, *p, eta=0.2)
    assert loss.shape == (5,)
    for i in range(5):
        single = sppo_loss(*x[:, i : i + 1], *p[:, i : i + 1], eta=0.2)
        assert loss[i].item() == pytest.approx(single.item())


def test_sppo_minimiser_is_each_response_at_its_win_rate():
    """Each response's log ratio to pi_t goes to (P(y > pi_t) - 1/2)/eta: there the loss,
    its gradient and the floor are 0, and `objective`'s margin meets its target."""
    eta = 0.25
    qc, qr = t(-2.0, -7.0), t(-3.0, -1.0)
    p_win = (t(0.9, 0.2), t(0.4, 0.5))
    best_c = (qc + (p_win[0] - 0.5) / eta).requires_grad_()
    best_r = (qr + (p_win[1] - 0.5) / eta).requires_grad_()
    cfg = {"type": "sppo", "eta": eta, "tau": 0.0, "beta": 0.1}
    cache = {"pi_t_chosen": qc, "pi_t_rejected": qr}  # sppo needs no pi_ref
    loss, margin, target = objective(cfg, best_c, best_r, cache, t(1.0, 1.0), p_win)
    loss.sum().backward()
    assert loss.abs().max().item() < 1e-24
    assert max(best_c.grad.abs().max().item(), best_r.grad.abs().max().item()) < 1e-12
    torch.testing.assert_close(margin, target)
    torch.testing.assert_close(target, t(2.0, -1.2))  # (p_chosen - p_rejected) / eta
    assert objective_floor(cfg, t(1.0, 1.0), p_win).tolist() == [0.0, 0.0]
    moved = objective(cfg, best_c + 0.1, best_r, cache, None, p_win)[0]
    assert moved.tolist() == pytest.approx([0.005, 0.005])  # (0.1^2 + 0) / 2
    with pytest.raises(ValueError, match="p_win"):
        objective(cfg, best_c, best_r, cache, t(1.0, 1.0))


def test_sppo_matches_the_authors_sppo_loss_and_trl_sppo_hard():
    """Equality with SPPO's own loss: uclaml/SPPO, sppo/trainer.py, SPPOTrainer.sppo_loss
    with loss_type "sppo", at commit 5e61c4e90822fe526d8bbe1a50a6e85a85c30911, re-computed
    here in our own words on the same random inputs. Their ``beta`` is our eta (their
    paper's eta is 1/beta); their reference model is the model being trained from, pi_t
    (run_sppo.py loads ref_model from model_name_or_path, the previous iterate); they
    AVERAGE the chosen and rejected terms, each (log pi/pi_t - (P - 1/2)/beta)^2 with P
    the response's estimated win rate (chosen_probs_win / chosen_probs_lose).

    TRL's sppo_hard (huggingface/trl trl/trainer/dpo_trainer.py at snapshot commit
    f2cd57710ae345ea6428ae95363267fcf38a3dc8) differs in three ways: P is hard (1 for the
    chosen, 0 for the rejected), the two terms are SUMMED (twice ours), and its log ratios
    are taken against DPOTrainer's ref_model (fixed unless the user passes pi_t)."""
    torch.manual_seed(11)

    def uclaml(pc, pr, rc, rr, p_win, p_lose, beta):
        chosen_term = ((pc - rc) - (p_win - 0.5) / beta) ** 2
        rejected_term = ((pr - rr) - (p_lose - 0.5) / beta) ** 2
        return (chosen_term + rejected_term) / 2

    def trl_sppo_hard(pc, pr, rc, rr, beta):
        return ((pc - rc) - 0.5 / beta) ** 2 + ((pr - rr) + 0.5 / beta) ** 2

    for beta in (0.001, 0.01, 0.5):
        x = torch.randn(4, 64, dtype=torch.float64) * 20 - 100
        p = torch.rand(2, 64, dtype=torch.float64)
        want = uclaml(*x, *p, beta)
        got = sppo_loss(*x, *p, eta=beta)
        assert ((got - want).abs() / want.abs()).max().item() <= 1e-6
        hard = sppo_loss(*x, torch.ones(64), torch.zeros(64), eta=beta)
        want = trl_sppo_hard(*x, beta)
        assert ((2 * hard - want).abs() / want.abs()).max().item() <= 1e-6


# --- objective, all types -----------------------------------------------------------


def test_objective_names_the_types_it_knows():
    cfg = {"type": "kto", "eta": 0.5, "tau": 0.1, "beta": 0.1}
    zeros = {k: t(0.0) for k in CACHE_KEYS}
    for fn in (
        lambda: objective(cfg, t(0.0), t(0.0), zeros),
        lambda: objective_floor(cfg, t(1.0)),
    ):
        with pytest.raises(ValueError, match="inpo, mnpo, sppo, ipo, dpo"):
            fn()
    assert LOSS_TYPES == ("inpo", "mnpo", "sppo", "ipo", "dpo")


def test_mnpo_floor_and_scale_are_inpos():
    p = t(0.5, 0.7, 1.0)
    cfg = {"type": "inpo", "eta": 0.25, "tau": 0.05, "beta": 0.1}
    torch.testing.assert_close(
        objective_floor({**cfg, "type": "mnpo"}, p), objective_floor(cfg, p), rtol=0, atol=0
    )
    assert margin_scale("mnpo", 0.25, 0.1) == margin_scale("inpo", 0.25, 0.1) == 2.0
    assert margin_scale("sppo", 0.25, 0.1) is None
