"""The parallel search's own rules (``lr_search.parallel``): where a study's first trials
go while no fit predicts its best LR (a coarse pass from the top of the range, then a low
placeholder), when a running seeding trial is obsolete, and how its line search reads ties
and flat steps against its neighbours.

:class:`ParallelRules` is a base of :class:`tune_jobs.lr_policy.LinePolicy`, which provides
the neighbours' best LRs and the fit through them (``_neighbour_bests``, ``_seed_lrs``) and
the settings read here; Optuna-free.
"""

from __future__ import annotations

import math

from tune_jobs import lr_rules
from tune_jobs.lr_rules import STEP_MAX
from tune_jobs.lr_study import StudyState, study_name


class ParallelRules:
    """The parallel mode's rules, on the states of :class:`~tune_jobs.lr_search.LRSearch`."""

    states: dict[str, StudyState]
    batch_sizes: list[int]
    lr_min: float
    parallel: bool
    reached_cut: float

    def _toward_guess(self, xb: float, step: float, up: bool, b: int, s: int) -> float:
        """Parallel: the step out (log LR) from a best that is the study's outermost LR on the
        side it steps to (``up``) and gained less than the convergence tolerance on the trial
        inside it (:meth:`_flat`, a tie included): at least as far as the neighbours' best guess
        (:meth:`_seed_lrs`, finished or not) when that lies further out on that side, at
        most ``STEP_MAX``. The study's own trials show only that the optimum lies beyond;
        the neighbours say how far. (On digits bs16 climbed from 0.094 in steps of the fit's
        error, 1.13x, all at 420 steps, and ran out of trials at 0.15; its neighbours' best
        LRs were 0.26 and 0.28.)"""
        x = self._guess(b, s)
        if x is None or (x > xb) != up:
            return step
        return max(step, min(abs(x - xb), math.log(STEP_MAX)))

    def _guess(self, b: int, s: int) -> float | None:
        """Parallel: the neighbours' best guess of ``b``'s best LR (log; the first of
        :meth:`_seed_lrs`, finished studies or not), ``None`` with no neighbour reached."""
        guess = self._seed_lrs(b, s, finished_only=False)
        return math.log(guess[0]) if guess else None

    def _best_index(self, pts: list[tuple[float, float]], b: int, s: int) -> int:
        """Index of the best of a study's (log LR, objective) points, sorted by LR. Of equal
        bests (steps are counted at eval reports, so ties are common near the optimum) the
        lowest LR, except in parallel mode: there the tie says nothing of which side the
        optimum lies on, so the one nearest the neighbours' best guess
        (:meth:`_seed_lrs`, finished or not), else the highest (a too low LR is the
        parallel search's usual miss: its placeholders are low on purpose). On digits, bs16
        tied at 0.094 and 0.103 (420 steps each) and stepped down from 0.094 three times,
        its neighbours' best LRs being 0.26 and 0.28."""
        v = min(p[1] for p in pts)
        ties = [j for j, p in enumerate(pts) if p[1] == v]
        if not self.parallel or len(ties) == 1:
            return ties[0]
        x = self._guess(b, s)
        if x is None:
            return ties[-1]
        return min(ties, key=lambda j: (abs(pts[j][0] - x), -j))

    def _fit_trusted(self, b: int, s: int) -> bool:
        """Parallel: does the fit through the finished batch sizes predict ``b``'s best LR
        (:func:`~tune_jobs.lr_rules.fit_trusted`: one near enough, one on each side, or the
        nearest two above on the linear part of the curve)?"""
        done = sorted(self._neighbour_bests(b, s))
        bracketed = any(bb < b for bb, _ in done) and any(bb > b for bb, _ in done)
        above = [(bb, lr) for bb, lr in done if bb > b][:2]
        return lr_rules.fit_trusted(self._fit_distance(b, s), bracketed, above)

    def _low_guess(self, name: str, b: int, s: int) -> float | None:
        """Parallel: the LR of a study's trial while no fit predicts its best LR (nothing
        finished near enough, :meth:`_fit_trusted`). First a coarse pass of
        :data:`~tune_jobs.lr_rules.COARSE_TRIALS` trials down from the top of the range by
        :data:`~tune_jobs.lr_rules.COARSE_STEP` each: where the best LR sits near the
        stability edge (large batch sizes) it reaches the target, and where it does not a
        too large LR fails fast (diverges or stalls at its noise floor); it starts below
        any LR that failed in a larger batch size's coarse pass (:meth:`_failed_above`).
        Then a placeholder, low on purpose: the best LR so far of the nearest batch size
        that reached the target (finished or not) scaled by the linear rule (the best LR
        grows more slowly than B; from a smaller batch size its LR unscaled, as the best LR
        grows with B), or the floor if that is higher or nothing reached: the job's
        ``lr_search.min`` (not a range widened below it) or, if higher, the lowest LR that
        can reach the target within the step budget (:meth:`_feasible_floor`). A too low LR
        runs on (a too high one stops soon and takes a trial of the budget), so the trial
        stays in flight until :meth:`obsolete` withdraws it. ``None``: a fit is trusted, or (the
        largest batch size, nothing reached) the cascade's start from the top of the range
        applies."""
        if self._fit_trusted(b, s):
            return None
        done = self._neighbour_bests(b, s, finished_only=False)
        if not done and b == self.batch_sizes[-1]:
            return None
        coarse = self._coarse_lr(name, b, s)
        if coarse is not None:
            return coarse
        lo = self._floor(s)
        if not done:
            return lo
        nb, lr_nb = lr_rules.nearest(done, b)
        return max(min(lr_nb * b / nb, lr_nb), lo)  # from a smaller one: its LR, not more

    def _coarse_lr(self, name: str, b: int, s: int) -> float | None:
        """Parallel: the LR of the study's next coarse-pass trial (:meth:`_low_guess`), or
        ``None`` once its first :data:`~tune_jobs.lr_rules.COARSE_TRIALS` results are in or
        the pass has reached the floor. Only meaningful where no fit is trusted."""
        st = self.states[name]
        if len(st.results) >= lr_rules.COARSE_TRIALS:
            return None
        lo = self._floor(s)
        top = st.range[1] if not st.results else min(st.results) / lr_rules.COARSE_STEP
        top = max(min(top, self._failed_above(b, s) / lr_rules.COARSE_STEP), lo)
        return top if lr_rules.fresh(math.log(top), [math.log(lr) for lr in st.results]) else None

    def _floor(self, s: int) -> float:
        """Parallel: the lowest LR a coarse-pass trial or placeholder may have: the job's
        ``lr_search.min`` or, if higher, :meth:`_feasible_floor`."""
        return max(self.lr_min, self._feasible_floor(s))

    def _failed_above(self, b: int, s: int) -> float:
        """Parallel: the lowest LR of a larger batch size's coarse pass (its first
        :data:`~tune_jobs.lr_rules.COARSE_TRIALS` results) that failed: diverged, or stopped
        by a rule that shows it worse (not ASHA's ``unknown``), or ran out of steps. The
        stability edge is no higher and the noise floor no lower at a smaller batch size,
        so the coarse pass here starts below it; inf if none."""
        out = math.inf
        for bb in self.batch_sizes:
            if bb <= b:
                continue
            other = self.states[study_name(bb, s)]
            for lr in list(other.results)[: lr_rules.COARSE_TRIALS]:
                if other.results[lr] > self.reached_cut and lr not in other.unknown:
                    out = min(out, lr)
        return out

    def _feasible_floor(self, s: int) -> float:
        """Parallel: the lowest LR a placeholder may have, from the step budget: the least
        "time" (LR x steps to target) any reached trial of seed ``s`` took, times
        :data:`~tune_jobs.lr_rules.FEASIBLE_MARGIN`, over ``max_steps``. Below it a trial
        cannot reach the target within the budget (at a small LR training follows the
        gradient flow, whose time to the target is the same at every batch size, and noise
        only adds to it): it runs to ``max_steps`` and costs a trial of the study's budget.
        0 while nothing reached or the budget is unbounded."""
        if not math.isfinite(self.reached_cut):
            return 0.0
        times = [
            lr * v
            for bb in self.batch_sizes
            for lr, v in self.states[study_name(bb, s)].results.items()
            if v <= self.reached_cut
        ]
        if not times:
            return 0.0
        return lr_rules.FEASIBLE_MARGIN * min(times) / self.reached_cut

    def _near_best(self, pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """Parallel: the (log LR, objective) points a study's line search brackets with:
        its reached trials, and the others no further than
        :data:`~tune_jobs.lr_rules.FAR_MISS` from its best. A trial that failed far away
        (the coarse first pass from the top of the range) bounds nothing near the best,
        and as a bracket side it would send the next trial far out. All points elsewhere."""
        if not self.parallel:
            return pts
        xb = min(pts, key=lambda p: p[1])[0]
        return [p for p in pts if p[1] <= self.reached_cut or abs(p[0] - xb) <= lr_rules.FAR_MISS]

    def _fit_distance(self, b: int, s: int) -> float:
        """Parallel: what the provisional fit at batch size ``b`` stands on, as the distance
        (log batch size) to the nearest finished batch size with a reached best; inf if none."""
        done = self._neighbour_bests(b, s)
        return min((abs(math.log(bb / b)) for bb, _ in done), default=math.inf)

    def obsolete(self, proposal) -> bool:
        """Parallel: should this running trial be stopped and withdrawn? Only a study's
        seeding trials (none of its trials reached the target yet) are judged. With a
        trusted fit (:meth:`_fit_trusted`): since the trial was proposed a batch size nearer
        to ``b`` has finished (a low guess counts as proposed with none), and the fit
        through the finished ones (:meth:`_seed_lrs`, best guess first) now puts the best
        LR more than :data:`~tune_jobs.lr_rules.OBSOLETE` away from the trial's
        (:func:`~tune_jobs.lr_rules.off_fit`). Without one: the low guess
        (:meth:`_low_guess`) has risen more than that factor above the trial's LR. Always
        false in the other modes."""
        if not self.parallel:
            return False
        b, s = proposal.batch_size, proposal.seed
        st = self.states[proposal.study]
        if any(v <= self.reached_cut for v in st.results.values()):
            return False  # its own line search leads now
        if not self._fit_trusted(b, s):
            # Only for a low guess the study would try next (one it tried is not proposed
            # again: withdrawing for it would repeat forever).
            low = self._low_guess(proposal.study, b, s)
            tried = [math.log(lr) for lr in st.results]
            return (
                low is not None
                and low > proposal.lr * lr_rules.OBSOLETE
                and lr_rules.fresh(math.log(low), tried)
            )
        basis = st.basis.get(proposal.number, math.inf)
        now = self._fit_distance(b, s)
        seeds = self._seed_lrs(b, s)
        error = lr_rules.fit_error(sorted(self._neighbour_bests(b, s))) or 0.0
        return bool(seeds) and lr_rules.off_fit(proposal.lr, seeds[0], basis, now, error)
