"""Exact INPO (and Nash-family) dynamics on a preference game over a few classes of responses.

A response's class is a pure function of its text (`response_class`); the preference
P(y > y') depends only on the classes, given as an n x n matrix M with
M[i][j] = P(class i beats class j) and M + M^T = 1. A strategy is a vector of class
shares (non-negative, summing to 1).

One INPO iteration (Zhang et al., ICLR 2025) with inverse step size eta > 0 and KL pull
0 <= tau < eta toward pi_ref is the online-mirror-descent step

    pi_{t+1}(y) ∝ pi_t(y)^(1 - tau/eta) * pi_ref(y)^(tau/eta) * exp(P(y > pi_t) / eta),

with P(y > pi) = sum_y' pi(y') P(y > y'). Since P is constant within a class, the class
shares follow the same formula with the class shares of pi_t and pi_ref whenever
pi_t / pi_ref is constant within each class. INPO starts at pi_ref and the step keeps that
ratio class-constant, so along the exact dynamics the class-level step is exact; for a
policy whose ratio varies within a class (a learned one, say) it is not when tau > 0, since
the geometric mixture pi_t^(1 - tau/eta) pi_ref^(tau/eta) does not factor through shares.
For tau > 0 the last iterate converges to the KL-regularized Nash policy pi*_tau, the
fixed point pi*(y) ∝ pi_ref(y) exp(P(y > pi*) / tau) (`regularized_nash`); for tau = 0 it
spirals away from the Nash equilibrium of a cyclic game (KL(Nash || pi_t) never decreases).

The rest of the Nash family, beside INPO (docs/nash_family.md): `mnpo_step` (anchored on
a mixture of past iterates), `sppo_step` (the minimizer of SPPO's per-response loss; its
idealised step is `inpo_step` at tau = 0), COMAL (INPO with pi_ref reset to the current
policy every K iterations, `comal_reference`), and online IPO and DPO against a fixed
pi_ref (`online_ipo_step`, closed form; `online_dpo_step`, numeric). Each step is the
population minimizer of its method's loss over pairs (or responses) drawn from pi_t with
soft labels; `family_trajectory` iterates any of them.

Pure numpy: no torch, Ray, vLLM or DeepSpeed, so the harness and the tests can use it
anywhere. `inpo.judging.synthetic.GameOracle` serves M as a preference oracle over
response text.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

#: Largest game `regularized_nash(..., tau=0)` solves: it enumerates supports (2^n).
MAX_NASH_CLASSES = 16

ArrayLike = Sequence[float] | np.ndarray


# --- matrices -----------------------------------------------------------------------


def cyclic_matrix(n: int, win: float) -> np.ndarray:
    """The balanced cyclic tournament on n classes (n odd): class i beats class j with
    probability ``win`` when (i - j) mod n is in 1..(n-1)/2, loses with 1 - win when
    (j - i) mod n is, and ties (0.5) with itself. n = 3, win = 1 is rock-paper-scissors
    with class i+1 beating class i. Every class beats exactly half of the others, so the
    uniform strategy is the Nash equilibrium (unique for win > 0.5).

    Even n raises ValueError: no tournament on an even number of classes lets every class
    beat exactly half of the others.
    """
    if not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"cyclic_matrix: n = {n!r} must be a positive integer")
    if n % 2 == 0:
        raise ValueError(f"cyclic_matrix: n = {n} is even; a balanced cycle needs odd n")
    if not 0.5 <= win <= 1.0:  # also rejects NaN
        raise ValueError(f"cyclic_matrix: win = {win} must be in [0.5, 1]")
    half = (n - 1) // 2
    m = np.full((n, n), 0.5)
    for i in range(n):
        for j in range(n):
            d = (i - j) % n
            if 1 <= d <= half:
                m[i, j] = win
            elif d > half:
                m[i, j] = 1.0 - win
    return m


def bradley_terry_matrix(scores: ArrayLike) -> np.ndarray:
    """A transitive game: class i beats class j with probability sigmoid(s_i - s_j). The
    class with the highest score beats every other with probability > 1/2, so it alone
    is the Nash equilibrium (a pure strategy, unlike a cyclic game's)."""
    s = np.asarray(scores, dtype=float)
    if s.ndim != 1 or len(s) == 0 or not np.all(np.isfinite(s)):
        raise ValueError(f"bradley_terry_matrix: scores {s.tolist()} must be finite, 1-D")
    return 1.0 / (1.0 + np.exp(s[None, :] - s[:, None]))


def check_matrix(m: ArrayLike | Sequence[Sequence[float]]) -> np.ndarray:
    """Validate a preference matrix and return it as a float array: square, finite,
    entries in [0, 1] and M[i][j] + M[j][i] = 1 within 1e-9 (so the diagonal is 0.5).
    Raises ValueError naming the first offending entry."""
    a = np.asarray(m, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"preference matrix has shape {a.shape}: must be square and non-empty")
    n = a.shape[0]
    for i in range(n):
        for j in range(n):
            if not 0.0 <= a[i, j] <= 1.0:  # also rejects NaN
                raise ValueError(f"preference matrix entry M[{i}][{j}] = {a[i, j]}: not in [0, 1]")
    for i in range(n):
        for j in range(i, n):
            if abs(a[i, j] + a[j, i] - 1.0) > 1e-9:
                raise ValueError(
                    f"preference matrix entries M[{i}][{j}] = {a[i, j]} and "
                    f"M[{j}][{i}] = {a[j, i]} do not sum to 1"
                )
    return a


# --- classes and shares -------------------------------------------------------------


def response_class(text: str, n: int) -> int:
    """Class of a response: ord(first character) % n. The first character is taken as is
    (a leading space counts); the empty text is class 0."""
    if n < 1:
        raise ValueError(f"response_class: n = {n} must be positive")
    return ord(text[0]) % n if text else 0


def class_shares(responses: Sequence[str], n: int) -> np.ndarray:
    """Empirical class shares of sampled responses."""
    if not responses:
        raise ValueError("class_shares: no responses")
    counts = np.zeros(n)
    for r in responses:
        counts[response_class(r, n)] += 1
    return counts / len(responses)


def class_shares_from_token_probs(
    probs_by_token_text: Mapping[str, float] | Iterable[tuple[str, float]], n: int
) -> np.ndarray:
    """Exact class shares of a policy whose response starts with one sampled token, from
    the next-token distribution: each token's probability goes to the class of its
    decoded text (a token that decodes to "" goes to class 0, like an empty response).

    Accepts {text: prob} or (text, prob) pairs; pairs keep distinct token ids that decode
    to the same text apart (a dict would need their sum). The shares are normalised by
    the total mass given, so a truncated (top-k) distribution gives the conditional shares.
    """
    items = (
        probs_by_token_text.items()
        if isinstance(probs_by_token_text, Mapping)
        else (probs_by_token_text)
    )
    mass = np.zeros(n)
    for text, p in items:
        p = float(p)
        if not (p >= 0.0 and math.isfinite(p)):
            raise ValueError(f"class_shares_from_token_probs: token {text!r} has prob {p}")
        mass[response_class(text, n)] += p
    total = mass.sum()
    if total <= 0.0:
        raise ValueError("class_shares_from_token_probs: total probability is 0")
    return mass / total


def _strategy(p: ArrayLike, n: int, name: str) -> np.ndarray:
    a = np.asarray(p, dtype=float)
    if a.shape != (n,):
        raise ValueError(f"{name} has shape {a.shape}, expected ({n},)")
    if not np.all(a >= 0.0) or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} = {a.tolist()}: entries must be finite and >= 0")
    if abs(a.sum() - 1.0) > 1e-6:
        raise ValueError(f"{name} sums to {a.sum()}, not 1")
    return a / a.sum()


def _softmax_log(z: np.ndarray) -> np.ndarray:
    # Shift by the max so that exp neither overflows (eta -> 0) nor underflows to all zeros.
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p)


# --- dynamics -----------------------------------------------------------------------


def history_mixture(weights: Sequence[float], available: int) -> list[float]:
    """MNPO's λ: the first min(len(weights), available) history weights (λ_0 for pi_t,
    λ_1 for pi_{t-1}, ...), renormalised to sum to 1. Only pi_1..pi_t exist at iteration t,
    so early iterations mix fewer iterates than the weights name."""
    w = [float(x) for x in weights]
    if not w or not all(math.isfinite(x) and x >= 0.0 for x in w):
        raise ValueError(f"history weights {w}: need at least one, all finite and >= 0")
    if available < 1:
        raise ValueError(f"history weights: {available} iterates available, need >= 1")
    head = w[:available]
    total = sum(head)
    if not total > 0.0:
        raise ValueError(f"history weights {w}: the first {len(head)} sum to 0")
    return [x / total for x in head]


def _check_knobs(eta: float, tau: float) -> None:
    if not eta > 0.0 or not math.isfinite(eta):
        raise ValueError(f"eta = {eta} must be > 0")
    if not 0.0 <= tau < eta:
        raise ValueError(f"tau = {tau} must be in [0, eta = {eta})")


def _anchored_step(
    anchors: Sequence[tuple[np.ndarray, float]], wins: np.ndarray, eta: float
) -> np.ndarray:
    """softmax(sum_k a_k log p_k + wins / eta) in log space (stable for small eta). An
    anchor with a_k = 0 is left out: p^0 = 1 even where p = 0 (0 * log 0 would be NaN)."""
    z = wins / eta
    for p, a in anchors:
        if a > 0.0:
            z = z + a * _log(p)
    return _softmax_log(z)


def mnpo_step(
    history: Sequence[ArrayLike],
    pi_ref: ArrayLike,
    m: ArrayLike,
    eta: float,
    tau: float,
    weights: Sequence[float],
) -> np.ndarray:
    """One exact MNPO step on class shares, ``history`` = [pi_t, pi_{t-1}, ...]:
    pi_{t+1} ∝ pi_ref^(tau/eta) * prod_j pi_{t-j}^((1 - tau/eta) λ_j) * exp(M pi_t / eta),
    λ = `history_mixture`(weights, len(history)). It is the population minimizer of the
    MNPO loss over soft-labelled pairs drawn from pi_t, as INPO's step is of INPO's."""
    mat = check_matrix(m)
    n = mat.shape[0]
    if not history:
        raise ValueError("mnpo_step: empty history (history[0] is pi_t)")
    hist = [_strategy(h, n, "pi_t" if j == 0 else f"pi_t-{j}") for j, h in enumerate(history)]
    ref = _strategy(pi_ref, n, "pi_ref")
    _check_knobs(eta, tau)
    lam = history_mixture(weights, len(hist))
    alpha = tau / eta
    # zip stops at len(lam): iterates older than the weights reach are not mixed in
    anchors = [(h, (1.0 - alpha) * w) for h, w in zip(hist, lam, strict=False)]
    return _anchored_step([*anchors, (ref, alpha)], mat @ hist[0], eta)


def inpo_step(
    pi_t: ArrayLike, pi_ref: ArrayLike, m: ArrayLike, eta: float, tau: float
) -> np.ndarray:
    """One exact INPO (online mirror descent) step on class shares:
    pi_{t+1} ∝ pi_t^(1 - tau/eta) * pi_ref^(tau/eta) * exp(M pi_t / eta), MNPO's with pi_t
    as the whole history. Computed in log space, so it is stable for small eta. Zero shares
    stay zero; with tau > 0 classes outside pi_ref's support get zero. At tau = 0 it is
    also SPPO's idealised step (`sppo_step` is what SPPO's loss attains)."""
    return mnpo_step([pi_t], pi_ref, m, eta, tau, (1.0,))


def online_ipo_step(pi_t: ArrayLike, pi_ref: ArrayLike, m: ArrayLike, beta: float) -> np.ndarray:
    """The population minimizer of the IPO loss against a fixed pi_ref over soft-labelled
    pairs drawn from pi_t, in closed form: pi_{t+1} ∝ pi_ref * exp(P(y > pi_t) / beta).

    With f = log(pi / pi_ref) the expected loss is sum_{c,c'} s_c s_c' (f_c - f_c' -
    (2 M_cc' - 1) / (2 beta))^2 + const; setting its gradient to 0 gives f_c - s.f =
    (M s)_c / beta - 1 / (2 beta), i.e. f = M s / beta up to a constant (s = pi_t's
    shares). It is INPO's step at tau = eta (excluded there) and its fixed point is pi*_beta;
    classes pi_t never samples are outside the loss, and get the same formula."""
    mat = check_matrix(m)
    n = mat.shape[0]
    p = _strategy(pi_t, n, "pi_t")
    ref = _strategy(pi_ref, n, "pi_ref")
    if not beta > 0.0 or not math.isfinite(beta):
        raise ValueError(f"online_ipo_step: beta = {beta} must be > 0")
    return _anchored_step([(ref, 1.0)], mat @ p, beta)


def pair_offsets(weights: ArrayLike, p: ArrayLike, loss: str, scale: float) -> np.ndarray:
    """Class offsets f minimizing sum_{c,c'} w[c][c'] l(f_c - f_c', p[c][c']): the
    population problem of a pair loss whose margin is the difference of f = log pi - (a
    base the loss holds fixed) between the sides, over pairs of classes (c, c') drawn with
    probability w (symmetric) and labelled "c wins" with probability p (p + p^T = 1 where
    w > 0).

    loss "square": l = p (d - scale)^2 + (1 - p) (d + scale)^2 (INPO, MNPO, IPO; scale =
    1/(2 eta) or 1/(2 beta)), a least-squares (Laplacian) system. loss "logistic": l =
    -p log sigmoid(scale d) - (1 - p) log sigmoid(-scale d) (DPO; scale = beta), convex,
    by damped Newton. f is determined up to a constant; classes in no pair get 0. Raises
    ValueError when the logistic loss has no minimizer (a class that wins every pair)."""
    w, q = np.asarray(weights, dtype=float), np.asarray(p, dtype=float)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or q.shape != w.shape:
        raise ValueError(f"pair_offsets: weights {w.shape} and p {q.shape} must be n x n")
    if not scale > 0.0:
        raise ValueError(f"pair_offsets: scale = {scale} must be > 0")
    lap = np.diag(w.sum(1)) - w  # the graph Laplacian: its null space is the constants
    if loss == "square":
        return np.linalg.lstsq(lap, (w * (2.0 * q - 1.0) * scale).sum(1), rcond=None)[0]
    if loss != "logistic":
        raise ValueError(f"pair_offsets: loss = {loss!r}, not 'square' or 'logistic'")

    def value(f: np.ndarray) -> float:
        d = scale * (f[:, None] - f[None, :])
        return float((w * (q * np.logaddexp(0.0, -d) + (1.0 - q) * np.logaddexp(0.0, d))).sum())

    f = np.zeros(len(q))
    for _ in range(100):
        sig = 1.0 / (1.0 + np.exp(-scale * (f[:, None] - f[None, :])))
        grad = scale * (w * (sig - q)).sum(1)
        curv = w * scale**2 * sig * (1.0 - sig)
        step = np.linalg.lstsq(np.diag(curv.sum(1)) - curv, -grad, rcond=None)[0]
        step -= step.mean()  # shifting every f by a constant changes nothing
        size, before = 1.0, value(f)
        # damped: a full Newton step can overshoot far from the minimum (the slack absorbs
        # the rounding of the value near it)
        while value(f + size * step) > before + 1e-14 * abs(before):
            size /= 2
            if size < 1e-10:  # no descent left along Newton's direction: f is the minimum
                return f - f.mean()
        f = f + size * step
        if np.max(np.abs(size * step)) <= 1e-12 * max(1.0, float(np.max(np.abs(f)))):
            return f - f.mean()
    raise ValueError("pair_offsets: no convergence (does one class win every pair it is in?)")


def online_dpo_step(pi_t: ArrayLike, pi_ref: ArrayLike, m: ArrayLike, beta: float) -> np.ndarray:
    """The population minimizer of the soft-labelled DPO loss against a fixed pi_ref over
    pairs drawn from pi_t: pi_{t+1} ∝ pi_ref * exp(f), f the `pair_offsets` (logistic, beta)
    of the pair distribution pi_t x pi_t with labels M. No closed form: f is the
    Bradley-Terry fit to M weighted by pi_t, which a cyclic M has no exact fit for."""
    mat = check_matrix(m)
    n = mat.shape[0]
    p = _strategy(pi_t, n, "pi_t")
    ref = _strategy(pi_ref, n, "pi_ref")
    if not beta > 0.0 or not math.isfinite(beta):
        raise ValueError(f"online_dpo_step: beta = {beta} must be > 0")
    return _anchored_step([(ref, 1.0)], pair_offsets(np.outer(p, p), mat, "logistic", beta), 1.0)


def sppo_step(pi_t: ArrayLike, m: ArrayLike, eta: float) -> np.ndarray:
    """The population minimizer of SPPO's loss over responses drawn from pi_t, each with
    its exact P(y > pi_t) = (M pi_t)_y: pi_{t+1} = pi_t * exp(f), f minimizing
    sum_y pi_t(y) (f_y - g_y)^2 with g = (M pi_t - 1/2) / eta, subject to
    sum_y pi_t(y) exp(f_y) = 1 (pi_{t+1} is a distribution).

    SPPO's idealised step pi_t exp(g) / Z (`inpo_step` at tau = 0) replaces log Z by 0
    (their 1/2 inside g); the loss cannot reach that unless Z = 1, so it lands here
    instead. Stationarity gives f_y = g_y - u_y with u_y e^(u_y) = nu e^(g_y) (u = Lambert
    W), and normalisation sum_y pi_t(y) u_y = nu, whose positive root nu is found by
    bisection. Since sum pi_t e^g >= e^(sum pi_t g) = 1 (Jensen; sum pi_t g = 0 as
    P(pi_t > pi_t) = 1/2) the constraint binds and the solution is unique. Classes pi_t does
    not sample stay at 0."""
    mat = check_matrix(m)
    n = mat.shape[0]
    p = _strategy(pi_t, n, "pi_t")
    _check_knobs(eta, 0.0)
    on = p > 0
    s, g = p[on], (mat @ p - 0.5)[on] / eta

    def excess(log_nu: float) -> tuple[float, np.ndarray]:  # sum pi_t e^f - 1, and f
        f = g - _lambert_w_exp(log_nu + g)
        return float((s * np.exp(f)).sum() - 1.0), f

    lo, hi = -1.0, 1.0  # log nu: excess falls from sum pi_t e^g - 1 >= 0 to -1
    while excess(hi)[0] > 0.0:
        hi *= 2.0
    while excess(lo)[0] <= 0.0:
        if lo + g.max() < -800.0:  # nu e^g underflows: sum pi_t e^g = 1 and f = g
            return _embed(s * np.exp(g), on)
        lo *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if excess(mid)[0] > 0.0 else (lo, mid)
    return _embed(s * np.exp(excess(hi)[1]), on)


def _lambert_w_exp(x: np.ndarray) -> np.ndarray:
    """W(e^x) elementwise, the w > 0 with w + log w = x, without forming e^x (it overflows
    for small eta). Below x = -40, W(e^x) = e^x to double precision. Above, Newton from
    log(1 + e^x) >= W(e^x): w + log w is concave, so the iterates stay positive and rise
    monotonically to the root after the first step."""
    x = np.asarray(x, dtype=float)
    out = np.exp(np.minimum(x, -40.0))
    big = x >= -40.0
    xb = x[big]
    w = np.logaddexp(0.0, xb)
    for _ in range(100):
        new = w * (1.0 + xb - np.log(w)) / (1.0 + w)
        done = bool(np.all(np.abs(new - w) <= 4e-16 * new))
        w = new
        if done:
            break
    out[big] = w
    return out


def comal_reference(t: int, reset_every: int) -> int:
    """COMAL (yale-nlp/COMAL comal.sh): which iterate is pi_ref in iteration t (1-based):
    pi_ref is reset to the current policy at the start of iterations 1, K+1, 2K+1, ...
    (K = reset_every), so iteration t uses pi_s with s = 1 + K * floor((t - 1) / K).
    Their run: 24 iterations, K = 12: iterations 1-12 use pi_1 (the SFT model), 13-24
    use pi_13."""
    if t < 1 or reset_every < 1:
        raise ValueError(f"comal_reference: t = {t} and reset_every = {reset_every} must be >= 1")
    return 1 + reset_every * ((t - 1) // reset_every)


#: The methods `family_trajectory` steps.
FAMILY = ("inpo", "mnpo", "sppo", "comal", "ipo", "dpo")


def family_trajectory(
    method: str,
    m: ArrayLike,
    pi_ref: ArrayLike,
    iterations: int,
    eta: float,
    tau: float,
    *,
    history_weights: Sequence[float] | None = None,
    reset_every: int | None = None,
    beta: float | None = None,
    pi_0: ArrayLike | None = None,
) -> list[np.ndarray]:
    """[pi_1, ..., pi_{iterations+1}] of one method's exact population dynamics from
    pi_1 = ``pi_0`` (default pi_ref): inpo (`inpo_step`), mnpo (`mnpo_step` over every
    iterate so far, ``history_weights`` required), sppo (`sppo_step`; tau unused), comal
    (`inpo_step` with the reference of `comal_reference`, ``reset_every`` required), ipo and
    dpo (`online_ipo_step`, `online_dpo_step` against the fixed pi_ref with ``beta``,
    default tau, so that online IPO has INPO's fixed point pi*_tau)."""
    if method not in FAMILY:
        raise ValueError(f"family_trajectory: method = {method!r}, not one of {FAMILY}")
    if method == "mnpo" and not history_weights:
        raise ValueError("family_trajectory: mnpo needs history_weights")
    if method == "comal" and not reset_every:
        raise ValueError("family_trajectory: comal needs reset_every")
    beta = tau if beta is None else beta
    out = [np.asarray(pi_ref if pi_0 is None else pi_0, dtype=float)]
    for t in range(1, iterations + 1):  # out[-1] is pi_t
        pi_t = out[-1]
        if method == "inpo":
            nxt = inpo_step(pi_t, pi_ref, m, eta, tau)
        elif method == "mnpo":
            nxt = mnpo_step(out[::-1], pi_ref, m, eta, tau, history_weights)
        elif method == "sppo":
            nxt = sppo_step(pi_t, m, eta)
        elif method == "comal":
            nxt = inpo_step(pi_t, out[comal_reference(t, reset_every) - 1], m, eta, tau)
        elif method == "ipo":
            nxt = online_ipo_step(pi_t, pi_ref, m, beta)
        else:
            nxt = online_dpo_step(pi_t, pi_ref, m, beta)
        out.append(nxt)
    return out


def token_class_shares(probs: ArrayLike, classes: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Class shares of next-token distributions: ``probs`` [..., V] over the vocabulary,
    ``classes`` [V] the class of each token (`response_class` of its decoded text). Each
    distribution's mass goes to its tokens' classes; the result [..., n] is normalised."""
    p = np.asarray(probs, dtype=float)
    cls = _token_classes(classes, n, p.shape[-1])
    shares = p @ np.eye(n)[cls]
    return shares / shares.sum(axis=-1, keepdims=True)


def inpo_token_step(
    pi_t: ArrayLike,
    pi_ref: ArrayLike,
    classes: Sequence[int] | np.ndarray,
    m: ArrayLike,
    eta: float,
    tau: float,
) -> np.ndarray:
    """One exact INPO step at the token level, for a policy whose response is one token:
    pi_{t+1}(y) ∝ pi_t(y)^(1 - tau/eta) * pi_ref(y)^(tau/eta) * exp(P(class(y) > pi_t) / eta)
    over every token y, with P(c > pi_t) = M[c] . (class shares of pi_t). Unlike
    `inpo_step` it is exact whether or not pi_t / pi_ref is constant within each class,
    so it is the step to hold a learned policy to. ``pi_t`` and ``pi_ref`` are [..., V]
    (one row per prompt, say), ``classes`` [V]; returns [..., V]."""
    mat = check_matrix(m)
    n = mat.shape[0]
    p, ref = np.asarray(pi_t, dtype=float), np.asarray(pi_ref, dtype=float)
    if p.shape != ref.shape:
        raise ValueError(f"inpo_token_step: pi_t {p.shape} and pi_ref {ref.shape} differ")
    for name, a in (("pi_t", p), ("pi_ref", ref)):
        if not (np.all(a >= 0.0) and np.all(np.isfinite(a))):
            raise ValueError(f"inpo_token_step: {name} has negative or non-finite entries")
        if np.any(np.abs(a.sum(axis=-1) - 1.0) > 1e-6):
            raise ValueError(f"inpo_token_step: a row of {name} does not sum to 1")
    if not eta > 0.0 or not math.isfinite(eta):
        raise ValueError(f"inpo_token_step: eta = {eta} must be > 0")
    if not 0.0 <= tau < eta:
        raise ValueError(f"inpo_token_step: tau = {tau} must be in [0, eta = {eta})")
    cls = _token_classes(classes, n, p.shape[-1])
    alpha = tau / eta
    wins = token_class_shares(p, cls, n) @ mat.T  # [..., n]: P(c > pi_t) per class
    return _anchored_step([(p, 1.0 - alpha), (ref, alpha)], wins[..., cls], eta)


def _token_classes(classes: Sequence[int] | np.ndarray, n: int, vocab: int) -> np.ndarray:
    cls = np.asarray(classes)
    if cls.shape != (vocab,) or not np.issubdtype(cls.dtype, np.integer):
        raise ValueError(f"token classes: expected {vocab} integers, got {cls.dtype} {cls.shape}")
    if vocab and (cls.min() < 0 or cls.max() >= n):
        raise ValueError(f"token classes must lie in 0..{n - 1}")
    return cls


# --- equilibria and distances -------------------------------------------------------


def advantage(pi: ArrayLike, m: ArrayLike) -> np.ndarray:
    """P(a > pi) - 1/2 for every class a."""
    mat = check_matrix(m)
    return mat @ _strategy(pi, mat.shape[0], "pi") - 0.5


def exploitability(pi: ArrayLike, m: ArrayLike) -> float:
    """max_a P(a > pi) - 1/2: how much a best response beats pi by. It is >= 0 (pi ties
    with itself) and 0 exactly at a Nash equilibrium of the unregularized game."""
    return float(np.max(advantage(pi, m)))


def tv(p: ArrayLike, q: ArrayLike) -> float:
    """Total variation distance 0.5 * sum |p - q|."""
    a, b = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"tv: shapes {a.shape} and {b.shape} differ")
    return float(0.5 * np.abs(a - b).sum())


def kl(p: ArrayLike, q: ArrayLike) -> float:
    """KL(p || q) = sum p log(p / q) over p's support: infinite where q misses part of it,
    and 0, not a rounding error below it, where p = q."""
    a, b = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"kl: shapes {a.shape} and {b.shape} differ")
    on = a > 0
    if np.any(b[on] <= 0):
        return math.inf
    return max(float((a[on] * np.log(a[on] / b[on])).sum()), 0.0)


def fixed_point_residual(pi: ArrayLike, pi_ref: ArrayLike, m: ArrayLike, tau: float) -> float:
    """How far pi is from pi ∝ pi_ref exp(M pi / tau): the spread (max - min) over pi_ref's
    support of log pi - log pi_ref - M pi / tau, which is 0 exactly at pi*_tau. Infinite
    when pi misses part of pi_ref's support or puts mass outside it."""
    if not tau > 0.0:
        raise ValueError(f"fixed_point_residual: tau = {tau} must be > 0")
    mat = check_matrix(m)
    n = mat.shape[0]
    p = _strategy(pi, n, "pi")
    ref = _strategy(pi_ref, n, "pi_ref")
    on = ref > 0
    if np.any(p[~on] > 0) or np.any(p[on] <= 0):
        return math.inf
    r = np.log(p[on]) - np.log(ref[on]) - (mat @ p)[on] / tau
    return float(r.max() - r.min())


def regularized_nash(
    pi_ref: ArrayLike, m: ArrayLike, tau: float, tol: float = 1e-12, max_iter: int = 200_000
) -> np.ndarray:
    """The KL-regularized Nash policy pi*_tau: the unique pi with pi ∝ pi_ref exp(M pi / tau).
    It is zero outside pi_ref's support. Stops when min(tau, 1) * fixed_point_residual
    <= tol: for tau < 1 that is the residual in payoff units, which floating point can
    reach even for tiny tau (the log-space residual carries rounding of order eps / tau).

    For tau > 0: damped Newton's method on the smooth fixed-point equation in log space,
    from pi_ref; should it stall, INPO's own step (magnetic mirror descent) with the step
    size that contracts fastest for this tau, which converges from anywhere but slowly for
    small tau. For tau = 0: a Nash equilibrium of the unregularized game (pi_ref is
    ignored), see `nash_equilibrium`.
    """
    mat = check_matrix(m)
    n = mat.shape[0]
    ref = _strategy(pi_ref, n, "pi_ref")
    if not tau >= 0.0 or not math.isfinite(tau):
        raise ValueError(f"regularized_nash: tau = {tau} must be >= 0")
    if tau == 0.0:
        return nash_equilibrium(mat)

    on = ref > 0
    sub = mat[np.ix_(on, on)]  # classes outside pi_ref's support get no mass at all
    log_ref = np.log(ref[on])
    anti = sub - 0.5  # the antisymmetric part: M pi = anti pi + 1/2 on the simplex
    k = len(log_ref)

    # Work with z = log pi (normalised): pi may underflow for tiny tau, z does not.
    def normalise(z: np.ndarray) -> np.ndarray:
        zmax = np.max(z)
        return z - (zmax + np.log(np.exp(z - zmax).sum()))

    def gap(z: np.ndarray) -> np.ndarray:  # constant exactly at the fixed point
        return z - log_ref - (sub @ np.exp(z)) / tau

    def done(z: np.ndarray) -> bool:
        r = gap(z)
        return float(r.max() - r.min()) * min(tau, 1.0) <= tol

    # Newton on F(z) = P gap(z) = 0 (P projects out constants), gauge sum(z) = 0. The
    # Jacobian on sum-zero vectors, I - A J / tau with J = diag(pi) - pi pi^T, is invertible
    # since J^1/2 A J^1/2 is antisymmetric. Halving the step until |F| decreases makes it
    # converge from pi_ref in practice even for small tau.
    proj = np.eye(k) - 1.0 / k
    z = log_ref.copy()
    for _ in range(500):
        if done(z):
            return _embed(np.exp(z), on)
        q = np.exp(z)
        f = proj @ gap(z)
        jac = proj @ (np.eye(k) - (anti @ (np.diag(q) - np.outer(q, q))) / tau)
        lhs = np.vstack([jac, np.ones((1, k))])
        dz = np.linalg.lstsq(lhs, np.concatenate([-f, [0.0]]), rcond=None)[0]
        f_norm, step = float(np.linalg.norm(f)), 1.0
        while step > 1e-12:
            z_new = normalise(z + step * dz)
            if float(np.linalg.norm(proj @ gap(z_new))) < f_norm:
                break
            step /= 2
        else:
            break  # no descent direction found: fall back on the contraction
        z = z_new

    # Linearized around the fixed point the step's error multiplies by (1 - tau/eta) + i
    # lambda/eta with |lambda| <= lip; eta = (tau^2 + lip^2) / tau minimises the worst case
    # of that modulus, sqrt(1 - tau^2 / (tau^2 + lip^2)) < 1.
    lip = float(np.linalg.norm(anti, 2))
    eta = (tau * tau + lip * lip) / tau if lip > 0 else 2.0 * tau
    alpha = tau / eta
    z = log_ref.copy()
    for _ in range(max_iter):
        if done(z):
            return _embed(np.exp(z), on)
        z = normalise((1.0 - alpha) * z + alpha * log_ref + (sub @ np.exp(z)) / eta)
    raise ValueError(
        f"regularized_nash: no convergence to tol = {tol} for tau = {tau} in {max_iter} iterations"
    )


def _embed(p_on: np.ndarray, on: np.ndarray) -> np.ndarray:
    out = np.zeros(len(on))
    out[on] = p_on / p_on.sum()
    return out


def nash_equilibrium(m: ArrayLike, atol: float = 1e-12) -> np.ndarray:
    """A (symmetric) Nash equilibrium of the unregularized game: a strategy x with
    P(a > x) <= 1/2 for every class a. In this symmetric zero-sum game such an x exists and
    P(a > x) = 1/2 on its support, so supports are tried from smallest to largest and on
    each the linear system (M - 1/2) x = 0, sum x = 1 is solved (no LP solver needed)."""
    mat = check_matrix(m)
    n = mat.shape[0]
    if n > MAX_NASH_CLASSES:
        raise ValueError(
            f"nash_equilibrium: {n} classes; support enumeration stops at {MAX_NASH_CLASSES}"
        )
    anti = mat - 0.5
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            s = list(support)
            lhs = np.vstack([anti[np.ix_(s, s)], np.ones((1, size))])
            rhs = np.concatenate([np.zeros(size), [1.0]])
            xs, *_ = np.linalg.lstsq(lhs, rhs, rcond=None)
            if np.max(np.abs(lhs @ xs - rhs)) > 1e-9 or np.min(xs) < -atol:
                continue
            x = np.zeros(n)
            x[s] = np.clip(xs, 0.0, None)
            x /= x.sum()
            if np.max(anti @ x) <= 1e-9:
                return x
    raise AssertionError("unreachable: a symmetric zero-sum game always has an equilibrium")
