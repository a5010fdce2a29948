"""Exact ground truth of the noisy quadratic model (NQM; Zhang et al. 2019, "Which Algorithmic Choices Matter at Which Batch Sizes?"; docs/nqm.md).

Loss L(theta) = 1/2 sum_i h_i theta_i^2, stochastic gradient g_i = h_i theta_i + noise_i with
Var(noise_i) = c_i / B. Everything here is a pure function of (problem, batch size, LR,
momentum): no sampling, no torch.

- Plain SGD: s_i(k) = E theta_i^2 = r_i^k s_i(0) + q_i (1 - r_i^k) / (1 - r_i), with
  r_i = (1 - eta h_i)^2, q_i = eta^2 c_i / B. Each s_i is monotone in k (real k too), so on an
  interval [k1, k2] the loss lies between 1/2 sum h_i min(s_i(k1), s_i(k2)) and the same with max:
  :meth:`SGDPath.first_step` finds the first integer step below a target (or above a limit)
  exactly by branch and bound, in O(log k) evaluations, for any k.
- Heavy-ball momentum (torch form v' = beta v + g, theta' = theta - eta v'): the moments
  x = (E theta^2, E v^2, E theta v) follow x' = M x + n exactly (Zhang et al. 2019, eq. 21 in
  this parametrisation; derived in docs/nqm.md), so x(k) = x* + M^k (x(0) - x*).
  :class:`MomentumPath` scans a grid of relative resolution 1/64 by jumping with powers of M,
  then bisects inside the first grid interval that ends below the target.

:func:`exact_curve` gives the optimal LR and minimal steps per batch size; ``critbatch nqm``
prints them with the fitted critical batch size (McCandlish et al.: S = S_min (1 + B_crit / B)).
:func:`branched_losses` gives the exact local critical batch size along a base run, by the
branching protocol of :mod:`trainables.branching` (``critbatch nqm --branch-at``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from trainables.branching import BranchPlan, local_critical_batch_size, passes

REFERENCE_BATCH_SIZES = tuple(2**j for j in range(2, 22))
K_MAX = 10**12  # step horizon of the exact searches: "never" for every practical setup


@dataclass(frozen=True)
class NQM:
    """The quadratic: h_i = i^-exponent, c_i = noise_scale * h_i, s_i(0) = s0 (i = 1..dim)."""

    dim: int = 10_000
    exponent: float = 1.0
    noise_scale: float = 1.0
    s0: float = 1.0

    @property
    def h(self) -> np.ndarray:
        return np.arange(1, self.dim + 1, dtype=np.float64) ** -self.exponent

    @property
    def c(self) -> np.ndarray:
        return self.noise_scale * self.h

    def initial_loss(self) -> float:
        return 0.5 * self.s0 * float(self.h.sum())

    def max_stable_lr(self, momentum: float = 0.0) -> float:
        """Largest stable LR: eta h_max < 2 (1 + beta)."""
        return 2.0 * (1.0 + momentum) / float(self.h.max())


class SGDPath:
    """Exact expected loss of constant-LR SGD from second moments ``s_init`` (defaults s0)."""

    def __init__(self, nqm: NQM, batch_size: int, lr: float, s_init: np.ndarray | None = None):
        self.h = nqm.h
        self.s_init = np.full(nqm.dim, nqm.s0) if s_init is None else np.asarray(s_init, float)
        x = lr * self.h
        self.one_minus_r = x * (2.0 - x)  # 1 - (1 - eta h)^2, without cancellation
        self.q = lr**2 * nqm.c / batch_size
        with np.errstate(divide="ignore"):
            self.log_r = np.log1p(-self.one_minus_r)  # -inf where eta h = 1 (r = 0)

    def moments(self, k: float) -> np.ndarray:
        if k == 0:
            return self.s_init.copy()
        with np.errstate(over="ignore", invalid="ignore"):
            rk = np.exp(k * self.log_r)
            geom = np.where(
                self.one_minus_r == 0.0, k, -np.expm1(k * self.log_r) / self.one_minus_r
            )
            return rk * self.s_init + self.q * geom

    def loss(self, k: float) -> float:
        return 0.5 * float(self.h @ self.moments(k))

    def losses(self, ks) -> np.ndarray:
        return np.array([self.loss(float(k)) for k in ks])

    def first_step(
        self, below: float | None = None, above: float | None = None, k_max: int = K_MAX
    ) -> int | None:
        """Smallest integer k <= k_max with L(k) < ``below`` or L(k) > ``above`` (or inf, if above).

        Exact: each s_i is monotone in k, so the loss over [k1, k2] is bounded by the
        coordinate-wise min / max of the moments at the ends; intervals that cannot hold an
        event are pruned, the rest split (left first).
        """
        lo_t = -math.inf if below is None else below
        hi_t = math.inf if above is None else above
        if above is None and below is not None and self._decreasing_bound(below) is not None:
            t = self.crossing_time(below, k_max)  # monotone: first step = floor(t) + 1, checked
            if not math.isfinite(t):
                return None
            k = 0 if t == 0 else math.floor(t) + 1
            while k > 0 and self.loss(k - 1) < below:
                k -= 1
            while self.loss(k) >= below:
                k += 1
            return k if k <= k_max else None
        cache: dict[int, np.ndarray] = {}

        def mom(k: int) -> np.ndarray:
            if k not in cache:
                cache[k] = self.moments(float(k))
            return cache[k]

        def may_hold(k1: int, k2: int) -> bool:
            a, b = mom(k1), mom(k2)
            with np.errstate(invalid="ignore"):
                lower = 0.5 * float(self.h @ np.minimum(a, b))
                upper = 0.5 * float(self.h @ np.maximum(a, b))
            if above is not None and not math.isfinite(upper):
                return True  # overflow counts as "above" only when looking for divergence
            return lower < lo_t or upper > hi_t

        stack = [(0, int(k_max))]
        while stack:
            k1, k2 = stack.pop()
            if not may_hold(k1, k2):
                continue
            if k1 == k2:
                return k1
            mid = (k1 + k2) // 2
            stack.append((mid + 1, k2))
            stack.append((k1, mid))
        return None

    def crossing_time(self, target: float, k_max: int = K_MAX) -> float:
        """Real t in (k-1, k] with L(t) = target, k the first integer step below target; inf if none.

        Smooth in the LR wherever the crossing is transversal, so a scalar optimiser can
        minimise it; the first integer step is floor(t) + 1 when L is decreasing there.
        """
        f = lambda t: self.loss(t) - target  # noqa: E731
        if f(0.0) < 0:
            return 0.0
        t_hi = self._decreasing_bound(target)
        if t_hi is not None:  # fast path: L decreasing in t, one root, bracketed in closed form
            return (
                optimize.brentq(f, 0.0, t_hi, xtol=1e-9, rtol=1e-15) if t_hi < k_max else math.inf
            )
        k = self.first_step(below=target, k_max=k_max)
        if k is None:
            return math.inf
        return optimize.brentq(f, k - 1, k, xtol=1e-9, rtol=1e-15) if f(k - 1) > 0 else float(k)

    def _decreasing_bound(self, target: float) -> float | None:
        """t with L(t) < target when every s_i decreases in t (else None); inf if never reached.

        Then L(t) - L* = sum_i w_i r_i^t <= (sum_i w_i) r_max^t with w_i >= 0.
        """
        if not (self.one_minus_r > 0).all():
            return None
        s_star = self.q / self.one_minus_r
        w = 0.5 * self.h * (self.s_init - s_star)
        if (w < 0).any():
            return None
        gap = target - 0.5 * float(self.h @ s_star)
        if gap <= 0:
            return math.inf
        total = float(w.sum())
        if total <= gap:
            return 1.0
        return max(1.0, math.log(gap / total) / float(self.log_r.max()) * (1 + 1e-9) + 1)


def momentum_matrix(
    nqm: NQM, batch_size: int, lr: float, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """(M, n), shapes (3, 3, dim) and (3, dim), with x' = M x + n per coordinate.

    x = (E theta^2, E v^2, E theta v). theta' = a theta - eta beta v - eta xi and
    v' = h theta + beta v + xi with a = 1 - eta h, xi ~ N(0, c / B) independent of (theta, v);
    squaring and taking expectations gives M (docs/nqm.md). beta = 0 is plain SGD.
    """
    h, s2 = nqm.h, nqm.c / batch_size
    a = 1.0 - lr * h
    one = np.ones_like(h)
    m = np.array(
        [
            [a * a, (lr * beta) ** 2 * one, -2 * a * lr * beta],
            [h * h, beta**2 * one, 2 * h * beta],
            [a * h, -lr * beta**2 * one, beta * (a - lr * h)],
        ]
    )
    return m, np.array([lr**2 * s2, s2, -lr * s2])


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-coordinate 3x3 products of (3, 3, dim) stacks (last axis: coordinate, contiguous)."""
    return (a[:, :, None, :] * b[None, :, :, :]).sum(1)


def _matvec(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (a * x[None]).sum(1)


class MomentumPath:
    """Exact expected loss of heavy-ball SGD (constant LR) from moments ``x_init`` (3, dim)."""

    GRID = 64  # grid points per doubling of k in :meth:`first_step`: relative resolution 1/64

    def __init__(
        self, nqm: NQM, batch_size: int, lr: float, beta: float, x_init: np.ndarray | None = None
    ):
        self.h = nqm.h
        self.m, self.n = momentum_matrix(nqm, batch_size, lr, beta)
        if x_init is None:
            x_init = np.zeros((3, nqm.dim))
            x_init[0] = nqm.s0
        self.x_init = np.asarray(x_init, float)
        self._pow: dict[int, tuple[np.ndarray, np.ndarray]] = {1: (self.m, self.n)}

    def affine_power(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """(M^d, n_d) with x(k + d) = M^d x(k) + n_d, by repeated squaring (cached)."""
        if d not in self._pow:
            m_h, n_h = self.affine_power(d // 2)
            with np.errstate(over="ignore", invalid="ignore"):
                m2, n2 = _matmul(m_h, m_h), _matvec(m_h, n_h) + n_h
                if d % 2:
                    m2, n2 = _matmul(self.m, m2), _matvec(self.m, n2) + self.n
            self._pow[d] = (m2, n2)
        return self._pow[d]

    def jump(self, x: np.ndarray, d: int) -> np.ndarray:
        if d == 0:
            return x
        md, nd = self.affine_power(d)
        with np.errstate(over="ignore", invalid="ignore"):
            return _matvec(md, x) + nd

    def state_loss(self, x: np.ndarray) -> float:
        return 0.5 * float(self.h @ x[0])

    def loss(self, k: int) -> float:
        return self.state_loss(self.jump(self.x_init, int(k)))

    def losses(self, ks) -> np.ndarray:
        """Losses at increasing integer steps ``ks``, stepping from one to the next."""
        out, x, k_prev = [], self.x_init, 0
        for k in ks:
            x = self.jump(x, int(k) - k_prev)
            k_prev = int(k)
            out.append(self.state_loss(x))
        return np.array(out)

    def first_step(
        self, below: float | None = None, above: float | None = None, k_max: int = 10**8
    ) -> int | None:
        """First step with L < below or L > above (or inf, if above), up to ``k_max``.

        Grid spacing d = 2^floor(log2(k / GRID)) (>= 1), then bisection (jumps of 2^j) inside
        the first grid interval whose end holds the event: exact when the loss crosses into the
        event once inside that interval, i.e. unless it oscillates across the target faster
        than k / GRID steps.
        """
        lo_t = -math.inf if below is None else below
        hi_t = math.inf if above is None else above

        def hit(x: np.ndarray) -> bool:
            v = self.state_loss(x)
            return (above is not None and not math.isfinite(v)) or v < lo_t or v > hi_t

        x, k = self.x_init, 0
        if hit(x):
            return 0
        while k < k_max:
            d = 2 ** int(math.log2(k / self.GRID)) if k >= 2 * self.GRID else 1
            x_next = self.jump(x, d)
            if hit(x_next):
                for j in reversed(range(int(math.log2(d)))):
                    x_try = self.jump(x, 2**j)
                    if not hit(x_try):
                        x, k = x_try, k + 2**j
                return k + 1 if k + 1 <= k_max else None
            x, k = x_next, k + d
        return None


def steps_to_target(
    nqm: NQM, batch_size: int, lr: float, target: float, momentum: float = 0.0, k_max: int = K_MAX
) -> int | None:
    """Exact first step with expected loss < ``target`` (None: not by ``k_max``, e.g. unstable)."""
    if momentum == 0.0:
        return SGDPath(nqm, batch_size, lr).first_step(below=target, k_max=k_max)
    return MomentumPath(nqm, batch_size, lr, momentum).first_step(below=target, k_max=k_max)


def optimal_lr(
    nqm: NQM, batch_size: int, target: float, momentum: float = 0.0, grid: int = 24
) -> tuple[float, int]:
    """(LR, steps): the LR minimising steps-to-target at ``batch_size`` and its exact steps.

    SGD: a log grid over (lr_max * 1e-7, lr_max) brackets the optimum; a bounded scalar
    optimisation of the smooth crossing time in log LR refines it (min over LR of the integer
    steps floor(t) + 1 is reached where t is minimal); the exact integer steps are then
    taken at the optimum and at the best grid point. tests/test_nqm_truth.py shows the result
    within 0.5% of a dense scan. Momentum beta: the same on integer steps, over a grid of
    0.1x..10x the SGD optimum times (1 - beta) (the effective LR eta / (1 - beta) matches SGD
    for small eta), with a horizon of 20x the SGD steps.
    """
    lr_max = nqm.max_stable_lr(momentum) * (1 - 1e-9)
    k_max = K_MAX
    if momentum == 0.0:
        log_lrs = np.linspace(math.log(lr_max * 1e-7), math.log(lr_max), grid)
    else:
        lr_sgd, k_sgd = optimal_lr(nqm, batch_size, target, 0.0, grid)
        guess = lr_sgd * (1 - momentum)
        log_lrs = np.linspace(math.log(guess / 10), math.log(min(10 * guess, lr_max)), grid // 2)
        k_max = 20 * k_sgd

    def cost(log_lr: float) -> float:
        lr = math.exp(log_lr)
        if momentum == 0.0:
            return SGDPath(nqm, batch_size, lr).crossing_time(target)
        k = steps_to_target(nqm, batch_size, lr, target, momentum, k_max)
        return math.inf if k is None else float(k)

    costs = np.array([cost(x) for x in log_lrs])
    if not np.isfinite(costs).any():
        raise ValueError(f"target {target} is unreachable at batch size {batch_size}")
    j = int(np.argmin(costs))
    lo, hi = log_lrs[max(j - 1, 0)], log_lrs[min(j + 1, len(log_lrs) - 1)]
    xatol = 1e-7 if momentum == 0.0 else 1e-4
    res = optimize.minimize_scalar(
        lambda x: min(cost(x), 1e300), bounds=(lo, hi), method="bounded", options={"xatol": xatol}
    )
    best: tuple[float, int] | None = None
    for x in (res.x, log_lrs[j]):
        k = steps_to_target(nqm, batch_size, math.exp(x), target, momentum, k_max)
        if k is not None and (best is None or k < best[1]):
            best = (math.exp(x), k)
    assert best is not None
    return best


def exact_curve(
    nqm: NQM, batch_sizes=REFERENCE_BATCH_SIZES, target: float = 0.01, momentum: float = 0.0
) -> dict:
    """The optimal LR and minimal steps-to-target at each batch size, exactly.

    The critical batch size of this curve is fitted by :func:`analysis.ground_truth.ground_truth`
    with the same fitter the sweeps use, so the two are comparable.
    """
    best = [optimal_lr(nqm, int(b), target, momentum) for b in batch_sizes]
    return {
        "dim": nqm.dim,
        "exponent": nqm.exponent,
        "noise_scale": nqm.noise_scale,
        "s0": nqm.s0,
        "target": target,
        "momentum": momentum,
        "batch_sizes": [int(b) for b in batch_sizes],
        "best_lr": [lr for lr, _ in best],
        "steps": [k for _, k in best],
    }


def branched_losses(nqm: NQM, plan: BranchPlan) -> dict:
    """The exact expected losses of the branching protocol on the NQM, plain SGD, ``linear`` rule.

    The base run (B0, lr0 constant, from s0) has moments ``SGDPath.moments(t)`` at each branch
    point t; the branch at factor k starts from them and its expected loss after
    window_steps / k steps at batch k B0 and LR lr0 k is ``SGDPath(..., s_init=...).loss``.
    A branch whose LR is at or past the stability edge (:meth:`NQM.max_stable_lr`) fails,
    with loss inf (its expected loss grows without bound). Returns the branch points, the
    base run's loss there, per point and factor the loss, whether it is stable and whether
    it passes, and the local critical batch size per point (:mod:`trainables.branching`).
    """
    if plan.lr_rule != "linear":
        raise ValueError("the exact NQM branches are plain SGD: lr_rule must be linear")
    if plan.base_lr >= nqm.max_stable_lr():
        raise ValueError(f"base LR {plan.base_lr} is at or past the stability edge 2 / h_max")
    base = SGDPath(nqm, plan.base_batch_size, plan.base_lr)
    base_loss, losses, stable, passed, cbs = [], [], [], [], []
    sizes = [plan.batch_size(k) for k in plan.factors]
    for t in plan.branch_at:
        s_t = base.moments(float(t))
        base_loss.append(0.5 * float(nqm.h @ s_t))
        row, row_stable = [], []
        for k in plan.factors:
            lr = plan.lr(k)
            ok = lr < nqm.max_stable_lr()
            row_stable.append(ok)
            path = SGDPath(nqm, plan.batch_size(k), lr, s_init=s_t)
            row.append(path.loss(float(plan.steps(k))) if ok else math.inf)
        ref = row[plan.factors.index(1)]
        row_pass = [passes(x, ref, plan.tolerance) for x in row]
        losses.append(row)
        stable.append(row_stable)
        passed.append(row_pass)
        cbs.append(local_critical_batch_size(sizes, row_pass))
    return {
        "dim": nqm.dim,
        "exponent": nqm.exponent,
        "noise_scale": nqm.noise_scale,
        "s0": nqm.s0,
        "base_batch_size": plan.base_batch_size,
        "base_lr": plan.base_lr,
        "window_steps": plan.window_steps,
        "tolerance": plan.tolerance,
        "lr_rule": plan.lr_rule,
        "branch_at": list(plan.branch_at),
        "factors": list(plan.factors),
        "batch_sizes": sizes,
        "lrs": [plan.lr(k) for k in plan.factors],
        "branch_steps": [plan.steps(k) for k in plan.factors],
        "base_loss": base_loss,
        "losses": losses,
        "stable": stable,
        "passes": passed,
        "local_cbs": cbs,
    }
