"""The proposal policy of the line search: which LR a study tries next, and when it has
converged. The numbers come from :mod:`tune_jobs.lr_rules` (pure functions); this gathers
what they need from the studies' states (:class:`~tune_jobs.lr_study.StudyState`).

:class:`LinePolicy` is a base of :class:`tune_jobs.lr_search.LRSearch`, which holds the states
and the settings read here; Optuna-free. The parallel mode's own rules (coarse pass,
placeholders, withdrawals, ties) are in :mod:`tune_jobs.lr_parallel`, a base of this.
"""

from __future__ import annotations

import math

from tune_jobs import lr_rules
from tune_jobs.lr_parallel import ParallelRules
from tune_jobs.lr_rules import COARSE_STEP, SEED_STEP, STEP_MAX
from tune_jobs.lr_study import CENSORED_MAX, StudyState, parse_study_name, study_name


class LinePolicy(ParallelRules):
    """The line search's proposals and stop rule, on the states of :class:`LRSearch`.

    Reads ``states`` (in pipeline mode: as study ``name`` may see them, :meth:`LRSearch._view`)
    and the search's settings; writes only ``range`` (:meth:`_maybe_widen`)."""

    states: dict[str, StudyState]
    batch_sizes: list[int]
    lr_min: float
    lr_max: float
    log: bool
    n_trials: int
    cross_slack: float
    converge_tol: float | None
    cascade: bool
    pipeline: int
    parallel: bool
    reached_cut: float
    visible: dict[str, int]
    coarse_pick: bool = False  # the last _next_lr proposal was a coarse-pass trial

    def finished(self, name: str) -> bool:
        """Converged, or all its trials asked and told."""
        st = self.states[name]
        return st.converged or st.told >= self.n_trials + st.free

    def _grid(self, n: int) -> list[float]:
        if n == 1:
            return [
                math.sqrt(self.lr_min * self.lr_max)
                if self.log
                else (self.lr_min + self.lr_max) / 2
            ]
        if self.log:
            lo, hi = math.log(self.lr_min), math.log(self.lr_max)
            pts = [math.exp(lo + (hi - lo) * i / (n - 1)) for i in range(n)]
            return [min(max(p, self.lr_min), self.lr_max) for p in pts]  # no ulp past the edges
        return [self.lr_min + (self.lr_max - self.lr_min) * i / (n - 1) for i in range(n)]

    def _next_lr(self, name: str, b: int, s: int) -> float | None:
        """A line search in log LR on this study's own results, else its neighbours' best LR.

        Steps-to-target is unimodal in log LR (too small: slow; too large: noise floor or
        divergence), and the best LR moves smoothly with the batch size. So: with no reached
        trial yet, start where the neighbours point (:meth:`_seed_lrs`), and once their LRs
        are tried split the widest stretch of the range not tried yet
        (:func:`~tune_jobs.lr_rules.widest_gap`); once the best reached
        trial has a worse trial on each side, take the vertex of the parabola through it and
        its neighbours (log steps against log LR; golden section, at most one step, when a
        neighbour did not reach); if it is the largest or smallest LR tried, step out: by ``SEED_STEP`` from a
        seed the neighbours predicted, 2x from one they did not, then twice the distance to
        the next LR tried (an expanding search; in parallel mode no step past ``STEP_MAX``).
        ``None``: nothing to suggest (TPE proposes:
        the first trial of a study with no neighbour to start from, or a range used up).
        The numbers come from :mod:`tune_jobs.lr_rules` (:func:`~tune_jobs.lr_rules.step_out`,
        :func:`~tune_jobs.lr_rules.bracket_lr`); this picks the points and the step.
        """
        self.coarse_pick = False
        results = self.states[name].results
        pts = sorted((math.log(lr), v) for lr, v in results.items())
        tried = [x for x, _ in pts]

        # A reached trial slower than what smaller batch sizes show is achievable here (the
        # slack-scaled cross bound) is no anchor for a line search: start from the neighbours.
        cut = min(self.reached_cut, self._cross_bound(b, s, examples=False))
        if not [v for _, v in pts if v <= cut]:
            reached = any(v <= self.reached_cut for _, v in pts)
            if self.parallel and reached:
                # Parallel: it reached, slower than a smaller batch size (still searching)
                # shows is possible: the neighbours' bests so far point the way.
                for lr in self._seed_lrs(b, s, finished_only=False):
                    if lr_rules.fresh(math.log(lr), tried):
                        return lr
            low = self._low_guess(name, b, s) if self.parallel else None
            if low is not None and lr_rules.fresh(math.log(low), tried):
                self.coarse_pick = low == self._coarse_lr(name, b, s)
                return low
            for lr in self._seed_lrs(b, s):
                if lr_rules.fresh(math.log(lr), tried):
                    return lr
        if self.parallel and any(v <= self.reached_cut for _, v in pts):
            pass  # parallel, nothing else to try: a line search from its own best, slow as it is
        elif not [v for _, v in pts if v <= cut]:
            if self.paced and b == self.batch_sizes[-1] and not self._neighbour_bests(b, s):
                # The first study of a cascade, nothing known: start at the top of the range
                # and halve until a trial reaches the target. The largest batch size has the
                # largest best LR, and a too large LR fails fast (diverges, or stalls at its
                # noise floor: early stopping) where a too small one runs for long.
                self.coarse_pick = self.parallel and len(pts) < lr_rules.COARSE_TRIALS
                return self.states[name].range[1] if not pts else math.exp(pts[0][0]) / 2
            if not pts or min(v for _, v in pts) > self.reached_cut:
                # Nothing reached here yet, the neighbours' LRs tried: split the widest
                # stretch of the range not tried yet (TPE when nothing was tried at all).
                lo, hi = self.states[name].range
                x = lr_rules.widest_gap(tried, math.log(lo), math.log(hi))
                return None if x is None else math.exp(x)
        pts = self._near_best(pts)
        i = self._best_index(pts, b, s)
        xb = pts[i][0]
        step = self._first_step(b, s)
        if self.parallel and len(pts) > 1 and i in (0, len(pts) - 1):
            # Parallel: a failure just past the best on one side (the coarse pass steps down
            # from the top by COARSE_STEP): the optimum is near it, step out finely.
            side = pts[1] if i == 0 else pts[-2]
            near = abs(side[0] - xb) <= math.log(COARSE_STEP) + 1e-9
            if side[1] > self.reached_cut and near:
                step = math.log(SEED_STEP)
            elif side[1] <= self.reached_cut and self._flat(side[1], pts[i][1]):
                step = self._toward_guess(xb, step, i == len(pts) - 1, b, s)
        if i in (0, len(pts) - 1):
            gap = None
            if len(pts) > 1:
                # Expand (twice the last step) only when the best is the newest trial and
                # improved on its inner neighbour, the trial before it, which reached too: a
                # slope to follow (a first reach below an unreached LR is no slope).
                order = list(results)
                j = 1 if i == 0 else len(pts) - 2
                inner = pts[j][0]
                newest = [math.log(lr) for lr in order[-2:]]
                if newest == [inner, xb] and pts[j][1] <= self.reached_cut:
                    gap = abs(xb - inner)
                    if self.parallel and self._flat(pts[j][1], pts[i][1]):
                        gap = None  # a flat bottom: expanding would overshoot the optimum
                    elif self.parallel:
                        # no step past STEP_MAX: on digits a 2x step that gained was
                        # followed by 4x into a failure, a trial of five lost (the NQM's
                        # parallel search never expands that far)
                        gap = min(gap, math.log(STEP_MAX) / 2)
            return lr_rules.step_out(xb, step, up=i == len(pts) - 1, slope_gap=gap)
        return lr_rules.bracket_lr(pts[i - 1], pts[i], pts[i + 1], self.reached_cut, step, tried)

    def _flat(self, inner: float, best: float) -> bool:
        """Parallel: did the last step gain (``inner`` to ``best`` steps) less than the
        convergence tolerance? Then the search is at the curve's flat bottom, not on a slope:
        the next step out is one step, not twice the last (measured on the NQM: the doubled
        step overshoots, and at the smallest batch size a trial there costs the most)."""
        return bool(self.converge_tol) and best > (1 - self.converge_tol) * inner

    def _neighbour_bests(
        self, b: int, s: int, finished_only: bool = True
    ) -> list[tuple[int, float]]:
        """(batch size, best LR) of the other studies whose best trial reached the target;
        in parallel mode only of finished ones (a study still searching can be far off),
        unless ``finished_only`` is false."""
        out = []
        for bb in self.batch_sizes:
            other = study_name(bb, s)
            best = self.states[other].best
            reached = bb != b and best is not None and best[0] <= self.reached_cut
            if reached and (not (self.parallel and finished_only) or self.finished(other)):
                out.append((bb, best[1]))
        return out

    def _first_step(self, b: int, s: int) -> float:
        """The first step out of a line search (log LR): 2x where the neighbours do not
        predict the best LR (:meth:`_predicted`), ``SEED_STEP`` where they do. In parallel
        mode, where they do, the fit's own error on this problem if larger
        (:func:`~tune_jobs.lr_rules.fit_error`, at most 2x), and 2x while too few batch
        sizes have finished to measure it (the seed is then a placeholder, not the fit's):
        on digits the finished batch sizes' best LRs scatter 1.5-2x around the fit, and
        steps of 1.1x left the small batch sizes' line searches climbing 1.33x in three
        trials, short of their optimum. On the NQM the fit is exact and the step stays
        ``SEED_STEP``."""
        if not self._predicted(b, s):
            return math.log(2)
        if not self.parallel:
            return math.log(SEED_STEP)
        error = lr_rules.fit_error(sorted(self._neighbour_bests(b, s)))
        if error is None:
            return math.log(2)  # the fit's error not measured yet: no finer than unpredicted
        return min(max(math.log(SEED_STEP), error), math.log(STEP_MAX))

    def _predicted(self, b: int, s: int) -> bool:
        """Can the neighbours predict this batch size's best LR: has the nearest study with a
        reached best finished (converged or out of trials)? Early in a sweep that runs all
        batch sizes together the neighbours' bests can be far off."""
        done = self._neighbour_bests(b, s)
        if not done:
            return False
        nb, _ = lr_rules.nearest(done, b)
        name = study_name(nb, s)
        if self.pipeline:  # as of the view: converged, or out of trials
            return self.states[name].converged or self.visible.get(name, 0) >= self.n_trials
        return self.finished(name)

    def _seed_lrs(self, b: int, s: int, finished_only: bool = True) -> list[float]:
        """First LRs to try at batch size ``b``, best guess first, from the neighbours' best LRs.

        The best LR grows with B between linear scaling and flat: McCandlish et al.'s
        eps_max / (1 + B_noise / B), i.e. 1 / LR linear in 1 / B. Through the nearest two
        reached neighbours (one on each side when there are), that line gives the first guess
        (a power law through them if it cannot: falling LR), kept between the nearest one's
        LR and its linearly scaled LR. Then that neighbour's LR scaled by the linear rule, the
        square-root rule, and unscaled. Never at or above an LR that diverged at this or a
        smaller batch size (the stability edge barely moves with B): the neighbour's own best
        LR instead, which reaches the target at a larger batch size no later than there.
        (:func:`tune_jobs.lr_rules.seed_lrs`; this gathers the neighbours and diverged LRs.)
        """
        bad = [
            lr
            for bb in self.batch_sizes
            if bb <= b
            for lr in self.states[study_name(bb, s)].diverged
        ]
        done = sorted(self._neighbour_bests(b, s, finished_only))
        return lr_rules.seed_lrs(done, b, diverged_below=min(bad, default=math.inf))

    def converged(self, name: str) -> bool:
        """Has this study's line search converged (``converge_tol``)? Its best reached trial
        has a worse trial on each side (in LR), and the steps still to gain inside that
        bracket are below ``converge_tol`` (relative): from the vertex of the parabola in
        (log LR, log steps) through the three when both neighbours reached the target; when
        one did not, from the reached side's curvature with the optimum put halfway towards
        the other (the unreached side is steep: noise floor or divergence). A neighbour stopped
        by a rule that does not show it worse (``censored_at`` unset: ASHA) blocks it. With an unreached
        side the bracket must also span at most ``SEED_STEP`` squared in LR; with both
        sides stopped by the steps bound (none diverged) that narrow bracket suffices.
        The test on the bracket is :func:`tune_jobs.lr_rules.bracket_converged`."""
        if self.converge_tol is None:
            return False
        b, s = parse_study_name(name)
        st = self.states[name]
        pts = self._near_best(sorted((math.log(lr), v) for lr, v in st.results.items()))
        if len(pts) < 3:
            return False
        i = self._best_index(pts, b, s)
        cut = min(self.reached_cut, self._cross_bound(b, s, examples=self.parallel))
        if not 0 < i < len(pts) - 1 or pts[i][1] > cut:
            return False
        xl, xr = pts[i - 1][0], pts[i + 1][0]
        if math.exp(xl) in st.unknown or math.exp(xr) in st.unknown:
            return False  # stopped by a rule that does not say it was worse (ASHA)
        return lr_rules.bracket_converged(
            pts[i - 1],
            pts[i],
            pts[i + 1],
            self.reached_cut,
            self.converge_tol,
            side_diverged=any(math.exp(x) in st.diverged for x in (xl, xr)),
        )

    def _maybe_widen(self, name: str) -> None:
        """Widen the study's range by 4x past an edge its best LR sits at (within 10% of the
        range, in log), when the best points out there: it is the outermost LR tried on that
        side (a trial further out that did worse shows the optimum is not out there; ASHA's
        ``unknown`` stops do not count), and it reached the target, or missed it in a way a
        step further out may mend: at the top, by running out of steps (too slow); at the
        bottom, by a stop that shows it stalled or slow (censored, e.g. a noise floor). A
        diverged best widens nothing. (Without these checks a high LR that stalled, best
        among failures, widened the range above one that diverged, and TPE proposed there:
        7.9 and 11 after 3.0 diverged, a trial of the quickstart's five each.)"""
        st = self.states[name]
        lo, hi = st.range
        assert st.best is not None  # called after a result
        value, lr = st.best
        if lr in st.diverged:
            return
        cut, top = self.reached_cut, CENSORED_MAX * self.reached_cut  # lr_study.objective
        reached, censored, missed = value <= cut, cut < value <= top, value > top
        tried = [x for x in st.results if x not in st.unknown]
        edge = 0.1 * math.log(hi / lo)  # within 10% (log) of an edge
        at_top = math.log(hi / lr) < edge
        at_bottom = not at_top and math.log(lr / lo) < edge
        if at_top and not any(x > lr for x in tried) and (reached or missed):
            st.range = (lo, hi * 4)
        elif at_bottom and not any(x < lr for x in tried) and (reached or censored):
            st.range = (lo / 4, hi)

    def _cross_bound(self, b: int, s: int, examples: bool = True) -> float:
        """Steps this batch size needs at its best LR at most, from the other batch sizes'
        best steps so far (:func:`tune_jobs.lr_rules.cross_bound`: a smaller batch size's
        steps, a larger one's examples). Measured steps are noisy (a lucky trial, a quantised
        accuracy target), so the bound gets slack; 1.0 suits exact problems (the NQM
        benchmark). ``examples=False``: the smaller batch sizes' bound only (loose: in the
        linear regime S(B) is about S(B/2) / 2, so a trial slower than it is far from the best
        LR; the examples bound is tight there)."""
        best = {bb: self.states[study_name(bb, s)].bound() for bb in self.batch_sizes}
        return lr_rules.cross_bound(best, b, self.cross_slack, examples)
