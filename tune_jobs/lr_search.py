"""The learning-rate search: one Optuna study per (batch size, seed), with ask/tell.

Ray-free on purpose: the Tune searcher (:mod:`tune_jobs.searcher`) wraps it, and the search
efficiency benchmark drives it in-process. Vocabulary of the tuning playbook: batch size is
the scientific hyperparameter, the learning rate the nuisance one, searched separately at
each batch size (one study each).

The objective of a trial is its steps to target; a trial that never reaches the target ranks
behind every trial that does, ordered by how close its best metric came (:func:`objective`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import optuna

from tune_jobs import lr_rules
from tune_jobs.config import LINE_SEARCH, LR_ALGORITHMS
from tune_jobs.lr_rules import SEED_STEP

optuna.logging.set_verbosity(optuna.logging.WARNING)

LAG_FROM = 0.5  # behind() applies from this fraction of the fastest trial's steps on


@dataclass(frozen=True)
class Proposal:
    """One trial to run: study name, its batch size and seed, the LR, the Optuna trial number."""

    study: str
    batch_size: int
    seed: int
    lr: float
    number: int


@dataclass(frozen=True)
class Outcome:
    """What a finished trial tells its study.

    ``steps_to_target``: first step at which the target was met (None if never);
    ``best_metric``: best value of the target metric seen (None if never evaluated);
    ``steps_run``: steps actually taken (compute spent);
    ``censored_at``: set when the trial was stopped by the steps bound without reaching the
    target: all we know is that it needed more steps than this;
    ``curve``: (step, target metric) at its reports, when the caller kept them: the fastest
    reached trial's curve is what :meth:`LRSearch.behind` compares running trials with.
    """

    status: str
    steps_to_target: float | None
    best_metric: float | None
    steps_run: int
    censored_at: float | None = None
    curve: tuple[tuple[float, float], ...] | None = None


WAIT = "wait"  # ask() result: nothing to propose until running trials report


def study_name(batch_size: int, seed: int) -> str:
    return f"bs{batch_size}-seed{seed}"


def objective(outcome: Outcome, max_steps: int, target: float, direction: str) -> float:
    """Value to minimise. Reached: steps to target (<= max_steps). Not reached: above every
    reached value, ``max_steps * (2 + gap)``, gap >= 0 growing with the distance of the best
    metric from the target (log ratio for positive metrics); never evaluated: far behind."""
    if outcome.steps_to_target is not None:
        return float(outcome.steps_to_target)
    best = outcome.best_metric
    if outcome.censored_at is not None:
        # Stopped by the steps bound while still on its way: it needed more than
        # `censored_at` steps. Behind every reached trial, ahead of every plain miss, ordered
        # among its kind by how close its metric came.
        gap = abs(math.log(best / target)) if best and best > 0 and target > 0 else 20.0
        return max_steps * (1.0 + 0.5 * min(gap, 20.0) / 20.0)
    if best is None or not math.isfinite(best):
        return max_steps * 1e3
    if best > 0 and target > 0:
        gap = abs(math.log(best / target))
    else:
        gap = abs(best - target) / (abs(target) + 1e-12)
    return max_steps * (2.0 + min(gap, 900.0))


class LRSearch:
    """Studies for every (batch size, seed), proposing learning rates round-robin.

    ``algorithm``: ``line_search`` (a bracketing line search in log LR, first trials from the
    neighbouring batch sizes' best LR scaled by the linear and square-root rules; Optuna TPE,
    seeded per study, where it has nothing to propose), ``random`` (log-uniform), or ``grid``
    (a log grid of ``n_trials`` points). ``storage``: an Optuna storage URL
    (``sqlite:///.../optuna.db``) so studies survive a killed driver.

    ``converge_tol`` (``line_search`` only; None: off): a study stops before ``n_trials`` once
    its line search has converged: its best reached trial has a worse trial on each side and
    the steps still to gain inside that bracket, estimated from a parabola in log LR, are
    below this fraction (:meth:`converged`). ``lag``: the margin of :meth:`behind` (0: off).
    ``cascade`` (``line_search`` only): batch sizes one at a time from the largest down
    (:meth:`ask`). ``pipeline`` (``line_search`` only, not with ``cascade``; 0: off): every
    batch size in flight at once, each study ``pipeline`` trials behind the next larger one
    (:meth:`ask`).
    """

    def __init__(
        self,
        batch_sizes: list[int],
        seeds: list[int],
        lr_min: float,
        lr_max: float,
        n_trials: int,
        seed: int = 0,
        algorithm: str = LINE_SEARCH,
        log: bool = True,
        storage: str | None = None,
        widen_on_edge: bool = True,
        synchronous: bool = True,
        cross_slack: float = 1.5,
        converge_tol: float | None = None,
        lag: float = 0.0,
        cascade: bool = False,
        pipeline: int = 0,
    ):
        if algorithm not in LR_ALGORITHMS:
            raise ValueError(
                f"algorithm: unknown {algorithm!r}; use one of {', '.join(LR_ALGORITHMS)}"
            )
        self.batch_sizes = sorted(batch_sizes)
        self.seeds = list(seeds)
        self.lr_min, self.lr_max, self.log = lr_min, lr_max, log
        self.n_trials, self.algorithm, self.widen_on_edge = n_trials, algorithm, widen_on_edge
        self.range: dict[str, tuple[float, float]] = {}
        self.asked: dict[str, int] = {}
        self.told: dict[str, int] = {}
        self.synchronous = synchronous
        self.cross_slack = cross_slack
        self.converge_tol = converge_tol if algorithm == LINE_SEARCH else None
        self.lag = lag
        self.cascade = cascade and algorithm == LINE_SEARCH
        self.pipeline = pipeline if algorithm == LINE_SEARCH and not self.cascade else 0
        # Pipeline: each study's state after each of its results (best, stop bound, diverged
        # LRs, converged), so that another study sees it as of a count fixed by the pipeline,
        # not by which trial happened to finish first (:meth:`_view`).
        self.history: dict[str, list[tuple]] = {}
        self.visible: dict[str, int] = {}  # study -> its results in the current view
        self.done: set[str] = set()  # studies whose line search converged (no more trials)
        self.curves: dict[str, list[tuple[float, float]]] = {}  # study -> fastest trial's curve
        self.sign = 1.0  # +1: lower target metric is better; set by tell()
        self.studies: dict[str, optuna.Study] = {}
        self.best: dict[
            str, tuple[float, float]
        ] = {}  # study -> (objective, lr) of best told trial
        self.stop_bound: dict[str, float] = {}  # study -> best steps-to-target so far
        self.results: dict[str, dict[float, float]] = {}  # study -> {lr: objective} told
        self.reached_cut = math.inf
        self.diverged: dict[str, list[float]] = {}  # study -> LRs that diverged
        self.unknown: dict[str, list[float]] = {}  # study -> LRs stopped, not known worse
        # Synchronous rounds: results wait here until every study has reported the round,
        # then apply in a fixed order, so what a proposal or a stop rule sees never depends on
        # which trial of the round finished first (Tune suggests one trial at a time as slots
        # free up, so a round's later proposals would otherwise see its earlier results).
        self.pending: list[tuple] = []
        idx = 0
        for s in self.seeds:
            for b in self.batch_sizes:
                name = study_name(b, s)
                sampler: optuna.samplers.BaseSampler
                if algorithm == "random" or algorithm == "grid":
                    sampler = optuna.samplers.RandomSampler(seed=seed + idx)
                else:
                    sampler = optuna.samplers.TPESampler(
                        seed=seed + idx,
                        n_startup_trials=max(2, min(4, n_trials // 3)),
                        multivariate=False,
                    )
                study = optuna.create_study(
                    study_name=name,
                    storage=storage,
                    sampler=sampler,
                    direction="minimize",
                    load_if_exists=True,
                )
                self.studies[name] = study
                self.range[name] = (lr_min, lr_max)
                self.asked[name] = 0
                self.told[name] = 0
                idx += 1
                if algorithm == "grid":
                    for lr in self._grid(n_trials):
                        study.enqueue_trial({"lr": lr}, skip_if_exists=True)

    # ---- proposals ---------------------------------------------------------------------------
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

    def remaining(self) -> int:
        return sum(self.n_trials - a for n, a in self.asked.items() if n not in self.done)

    def finished(self, name: str) -> bool:
        """Converged, or all its trials asked and told."""
        return name in self.done or self.told[name] >= self.n_trials

    def _may_start(self, name: str) -> bool:
        """Cascade: a study starts once the next larger batch size's study (same seed) has
        finished, so it starts from a converged neighbour. Pipeline: its k-th trial starts
        once that study has told k + ``pipeline`` trials or finished."""
        b, s = _parse(name)
        larger = [bb for bb in self.batch_sizes if bb > b]
        if not larger:
            return True
        nxt = study_name(min(larger), s)
        if self.pipeline:
            return self.finished(nxt) or self.told[nxt] >= self.asked[name] + self.pipeline
        return self.asked[name] > 0 or self.finished(nxt)

    def ask(self) -> Proposal | str | None:
        """Next trial to run, from the study with the fewest trials asked; ``None`` when every
        study has asked its trials or converged; :data:`WAIT` when (synchronous) the round is
        in flight, or (cascade) the studies that may run wait for their trials or neighbours.

        Cascade (``line_search``): studies run one batch size at a time per seed, from the largest
        (fewest steps, cheapest) down, each trial once the study's previous one has reported:
        a line search is sequential, and a smaller batch size starts from the best LR of
        converged larger ones, where the expensive small batch sizes need few trials.
        Deterministic whatever the completion order (a study sees only finished larger ones).
        """
        open_ = [n for n in self.studies if self.asked[n] < self.n_trials and n not in self.done]
        if not open_:
            return None
        if self.cascade or self.pipeline:
            open_ = [n for n in open_ if self.asked[n] == self.told[n] and self._may_start(n)]
            if not open_:
                return WAIT
        elif self.synchronous:
            # A converged study is out of the rounds: it must not hold the others back.
            r = min(self.told[n] for n in self.studies if n not in self.done)
            open_ = [n for n in open_ if self.asked[n] == r]
            if not open_:
                return WAIT
        name = min(open_, key=lambda n: (self.asked[n], list(self.studies).index(n)))
        return self.ask_study(name)

    def ask_study(self, name: str) -> Proposal:
        study = self.studies[name]
        b, s = _parse(name)
        if self.algorithm == LINE_SEARCH:  # neighbours' best LR, then a line search (_next_lr)
            with self._view(name):
                lr_next = self._next_lr(name, b, s)
            if lr_next is not None:
                lo, hi = self.range[name]
                self.range[name] = (min(lo, lr_next), max(hi, lr_next))
                study.enqueue_trial({"lr": lr_next})
        lo, hi = self.range[name]
        trial = study.ask()
        lr = trial.suggest_float("lr", lo, hi, log=self.log)
        self.asked[name] += 1
        return Proposal(name, b, s, lr, trial.number)

    def _next_lr(self, name: str, b: int, s: int) -> float | None:
        """A line search in log LR on this study's own results, else its neighbours' best LR.

        Steps-to-target is unimodal in log LR (too small: slow; too large: noise floor or
        divergence), and the best LR moves smoothly with the batch size. So: with no reached
        trial yet, start where the neighbours point (:meth:`_seed_lrs`); once the best reached
        trial has a worse trial on each side, take the vertex of the parabola through it and
        its neighbours (log steps against log LR; golden section, at most one step, when a
        neighbour did not reach); if it is the largest or smallest LR tried, step out: by ``SEED_STEP`` from a
        seed the neighbours predicted, 2x from one they did not, then twice the distance to
        the next LR tried (an expanding search). ``None``: nothing to suggest (TPE proposes).
        The numbers come from :mod:`tune_jobs.lr_rules` (:func:`~tune_jobs.lr_rules.step_out`,
        :func:`~tune_jobs.lr_rules.bracket_lr`); this picks the points and the step.
        """
        pts = sorted((math.log(lr), v) for lr, v in self.results.get(name, {}).items())
        tried = [x for x, _ in pts]

        # A reached trial slower than what smaller batch sizes show is achievable here (the
        # slack-scaled cross bound) is no anchor for a line search: start from the neighbours.
        cut = min(self.reached_cut, self._cross_bound(b, s, examples=False))
        if not [v for _, v in pts if v <= cut]:
            for lr in self._seed_lrs(b, s):
                if lr_rules.fresh(math.log(lr), tried):
                    return lr
            chained = self.cascade or self.pipeline
            if chained and b == self.batch_sizes[-1] and not self._neighbour_bests(b, s):
                # The first study of a cascade, nothing known: start at the top of the range
                # and halve until a trial reaches the target. The largest batch size has the
                # largest best LR, and a too large LR fails fast (diverges, or stalls at its
                # noise floor: early stopping) where a too small one runs for long.
                return self.range[name][1] if not pts else math.exp(pts[0][0]) / 2
            if not pts or min(v for _, v in pts) > self.reached_cut:
                return None  # nothing reached here yet, the neighbours' LRs tried: TPE
        i = min(range(len(pts)), key=lambda j: pts[j][1])
        xb = pts[i][0]
        step = math.log(SEED_STEP) if self._predicted(b, s) else math.log(2)
        if i in (0, len(pts) - 1):
            gap = None
            if len(pts) > 1:
                # Expand (twice the last step) only when the best is the newest trial and
                # improved on its inner neighbour, the trial before it, which reached too: a
                # slope to follow (a first reach below an unreached LR is no slope).
                order = list(self.results[name])
                j = 1 if i == 0 else len(pts) - 2
                inner = pts[j][0]
                newest = [math.log(lr) for lr in order[-2:]]
                if newest == [inner, xb] and pts[j][1] <= self.reached_cut:
                    gap = abs(xb - inner)
            return lr_rules.step_out(xb, step, up=i == len(pts) - 1, slope_gap=gap)
        return lr_rules.bracket_lr(pts[i - 1], pts[i], pts[i + 1], self.reached_cut, step, tried)

    @contextmanager
    def _view(self, name: str):
        """Pipeline: while in this block, the other studies look as study ``name`` may see
        them whatever the completion order: the larger batch sizes of its seed as of their
        first k + ``pipeline`` results (k: results ``name`` has; they have at least that
        many, or finished with fewer), the smaller ones and other seeds as not started.
        A no-op in the other modes."""
        if not self.pipeline:
            yield
            return
        b, s = _parse(name)
        saved = self.best, self.stop_bound, self.diverged, self.done
        best, bound, diverged = {}, {}, {name: self.diverged.get(name, [])}
        done = {name} & self.done
        if name in self.best:
            best[name] = self.best[name]
        if name in self.stop_bound:
            bound[name] = self.stop_bound[name]
        self.visible = {}
        for other, hist in self.history.items():
            bb, ss = _parse(other)
            if ss != s or bb <= b:
                continue
            count = self.visible[other] = min(len(hist), self.told[name] + self.pipeline)
            if count:
                best_, bound_, diverged_, done_ = hist[count - 1]
                if best_ is not None:
                    best[other] = best_
                if bound_ is not None:
                    bound[other] = bound_
                diverged[other] = list(diverged_)
                if done_:
                    done.add(other)
        self.best, self.stop_bound, self.diverged, self.done = best, bound, diverged, done
        try:
            yield
        finally:
            self.best, self.stop_bound, self.diverged, self.done = saved

    def _neighbour_bests(self, b: int, s: int) -> list[tuple[int, float]]:
        """(batch size, best LR) of the other studies whose best trial reached the target."""
        out = []
        for bb in self.batch_sizes:
            best = self.best.get(study_name(bb, s))
            if bb != b and best is not None and best[0] <= self.reached_cut:
                out.append((bb, best[1]))
        return out

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
            return name in self.done or self.visible.get(name, 0) >= self.n_trials
        return self.finished(name)

    def _seed_lrs(self, b: int, s: int) -> list[float]:
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
            for lr in self.diverged.get(study_name(bb, s), ())
        ]
        done = sorted(self._neighbour_bests(b, s))
        return lr_rules.seed_lrs(done, b, diverged_below=min(bad, default=math.inf))

    # ---- results -----------------------------------------------------------------------------
    def tell(
        self, proposal: Proposal, outcome: Outcome, max_steps: int, target: float, direction: str
    ) -> float:
        """Record a result (applied now, or at the end of its round when synchronous)."""
        value = objective(outcome, max_steps, target, direction)
        if self.cascade or self.pipeline or not self.synchronous:
            self._apply(proposal, outcome, max_steps, target, direction)
            return value
        self.pending.append((proposal, outcome, max_steps, target, direction))
        self._publish_if_round_done()
        return value

    def _publish_if_round_done(self) -> None:
        live = [n for n in self.studies if n not in self.done]
        if not live:
            return
        r = min(self.told[n] for n in live)
        reported = dict(self.told)
        for item in self.pending:
            reported[item[0].study] += 1
        if any(reported[n] < min(r + 1, self.n_trials) for n in live):
            return
        order = {n: i for i, n in enumerate(self.studies)}
        pending, self.pending = self.pending, []
        for item in sorted(pending, key=lambda it: (order[it[0].study], it[0].number)):
            if item[1] is None:
                self._apply_fail(item[0])
            else:
                self._apply(*item)

    def _apply(
        self, proposal: Proposal, outcome: Outcome, max_steps: int, target: float, direction: str
    ) -> None:
        value = objective(outcome, max_steps, target, direction)
        self.reached_cut = float(max_steps)  # objectives <= max_steps are steps of reached trials
        self.sign = 1.0 if direction == "min" else -1.0
        if outcome.status == "diverged":
            self.diverged.setdefault(proposal.study, []).append(proposal.lr)
        stopped = outcome.steps_to_target is None and outcome.status == "stopped_early"
        if stopped and outcome.censored_at is None:  # ASHA: behind early, as a lower LR may be
            self.unknown.setdefault(proposal.study, []).append(proposal.lr)
        self.results.setdefault(proposal.study, {})[proposal.lr] = value
        study = self.studies[proposal.study]
        study.tell(proposal.number, value)
        self.told[proposal.study] += 1
        best = self.best.get(proposal.study)
        if best is None or value < best[0]:
            self.best[proposal.study] = (value, proposal.lr)
        if outcome.steps_to_target is not None:
            fastest = outcome.steps_to_target < self.stop_bound.get(proposal.study, math.inf)
            if fastest and outcome.curve:
                run, kept = math.inf, []
                for step, v in sorted(outcome.curve):
                    run = min(run, self.sign * v)  # best so far, lower is better
                    kept.append((float(step), run))
                self.curves[proposal.study] = kept
            self.stop_bound[proposal.study] = min(
                self.stop_bound.get(proposal.study, math.inf), float(outcome.steps_to_target)
            )
        if self.widen_on_edge and self.algorithm == LINE_SEARCH:
            self._maybe_widen(proposal.study)
        with self._view(proposal.study):
            converged = self.converged(proposal.study)
        if converged:
            self.done.add(proposal.study)
        self._record(proposal.study)

    def _record(self, name: str) -> None:
        """Pipeline: keep the study's state after this result (:meth:`_view`)."""
        if self.pipeline:
            self.history.setdefault(name, []).append(
                (
                    self.best.get(name),
                    self.stop_bound.get(name),
                    tuple(self.diverged.get(name, ())),
                    name in self.done,
                )
            )

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
        b, s = _parse(name)
        pts = sorted((math.log(lr), v) for lr, v in self.results.get(name, {}).items())
        if len(pts) < 3:
            return False
        i = min(range(len(pts)), key=lambda j: pts[j][1])
        cut = min(self.reached_cut, self._cross_bound(b, s, examples=False))
        if not 0 < i < len(pts) - 1 or pts[i][1] > cut:
            return False
        xl, xr = pts[i - 1][0], pts[i + 1][0]
        unknown = self.unknown.get(name, ())
        if math.exp(xl) in unknown or math.exp(xr) in unknown:
            return False  # stopped by a rule that does not say it was worse (ASHA)
        bad = self.diverged.get(name, ())
        return lr_rules.bracket_converged(
            pts[i - 1],
            pts[i],
            pts[i + 1],
            self.reached_cut,
            self.converge_tol,
            side_diverged=any(math.exp(x) in bad for x in (xl, xr)),
        )

    def behind(self, name: str, step: float, best_value: float) -> bool:
        """Has a running trial of this study fallen behind its fastest reached trial by more
        than ``lag``: at ``step`` its best target metric so far is worse than that trial's
        best at ``(1 - lag) * step``? Only from half the fastest trial's steps on: a lower LR
        starts slower and catches up late (lower noise floor), and lags of 10% or so are
        normal among near-optimal LRs. ``False`` when off (lag 0) or nothing to compare."""
        ref, bound = self.curves.get(name), self.stop_bound.get(name)
        if self.lag <= 0 or not ref or bound is None or step < LAG_FROM * bound:
            return False
        u, ref_value = (1 - self.lag) * step, None
        for st, v in ref:  # ref's best so far at its last report at or before u (lenient)
            if st > u:
                break
            ref_value = v
        return ref_value is not None and self.sign * best_value > ref_value

    def fail(self, proposal: Proposal) -> None:
        """A trial that errored (not diverged: divergence is a result) leaves its study."""
        if self.cascade or self.pipeline or not self.synchronous:
            self._apply_fail(proposal)
            return
        self.pending.append((proposal, None, 0, 0.0, ""))
        self._publish_if_round_done()

    def _apply_fail(self, proposal: Proposal) -> None:
        self.studies[proposal.study].tell(proposal.number, state=optuna.trial.TrialState.FAIL)
        self.told[proposal.study] += 1
        self._record(proposal.study)

    def _maybe_widen(self, name: str) -> None:
        lo, hi = self.range[name]
        _, lr = self.best[name]
        edge = 0.1 * math.log(hi / lo)  # within 10% (log) of an edge
        if math.log(hi / lr) < edge:
            self.range[name] = (lo, hi * 4)
        elif math.log(lr / lo) < edge:
            self.range[name] = (lo / 4, hi)

    def _cross_bound(self, b: int, s: int, examples: bool = True) -> float:
        """Steps this batch size needs at its best LR at most, from the other batch sizes'
        best steps so far (:func:`tune_jobs.lr_rules.cross_bound`: a smaller batch size's
        steps, a larger one's examples). Measured steps are noisy (a lucky trial, a quantised
        accuracy target), so the bound gets slack; 1.0 suits exact problems (the NQM
        benchmark). ``examples=False``: the smaller batch sizes' bound only (loose: in the
        linear regime S(B) is about S(B/2) / 2, so a trial slower than it is far from the best
        LR; the examples bound is tight there)."""
        best = {bb: self.stop_bound.get(study_name(bb, s), math.inf) for bb in self.batch_sizes}
        return lr_rules.cross_bound(best, b, self.cross_slack, examples)

    def steps_bound(self, name: str) -> float:
        """Best steps-to-target of a study so far, or the bound from the other batch sizes if
        lower (inf if none): a trial of that study still running past this step can no longer
        win (or is far from this batch size's best LR) and may be stopped."""
        b, s = _parse(name)
        with self._view(name):
            return min(self.stop_bound.get(name, math.inf), self._cross_bound(b, s))

    def best_lr(self, name: str) -> float | None:
        return self.best.get(name, (None, None))[1]

    # ---- resume ------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "asked": dict(self.asked),
            "told": dict(self.told),
            "range": dict(self.range),
            "best": dict(self.best),
            "stop_bound": dict(self.stop_bound),
            "results": {k: dict(v) for k, v in self.results.items()},
            "diverged": {k: list(v) for k, v in self.diverged.items()},
            "unknown": {k: list(v) for k, v in self.unknown.items()},
            "curves": {k: list(v) for k, v in self.curves.items()},
            "done": sorted(self.done),
            "reached_cut": self.reached_cut,
            "sign": self.sign,
            "pending": list(self.pending),
            "history": {k: list(v) for k, v in self.history.items()},
        }

    def load_state(self, state: dict, live_numbers: dict[str, set[int]]) -> None:
        """Restore counters; Optuna trials left RUNNING by a killed driver that Tune does not
        know (``live_numbers``) are marked failed so they neither count nor block TPE."""
        self.asked.update(state["asked"])
        self.told.update(state.get("told", {}))
        self.range.update({k: tuple(v) for k, v in state["range"].items()})
        self.best.update({k: tuple(v) for k, v in state["best"].items()})
        self.stop_bound.update(state["stop_bound"])
        self.results.update({k: dict(v) for k, v in state.get("results", {}).items()})
        self.diverged.update({k: list(v) for k, v in state.get("diverged", {}).items()})
        self.unknown.update({k: list(v) for k, v in state.get("unknown", {}).items()})
        self.curves.update({k: [tuple(x) for x in v] for k, v in state.get("curves", {}).items()})
        self.done.update(state.get("done", ()))
        self.reached_cut = state.get("reached_cut", self.reached_cut)
        self.sign = state.get("sign", self.sign)
        self.pending = list(state.get("pending", []))
        self.history.update(
            {
                k: [(*h[:2], tuple(h[2]), *h[3:]) for h in v]
                for k, v in state.get("history", {}).items()
            }
        )
        for name, study in self.studies.items():
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if t.number not in live_numbers.get(name, set()):
                    study.tell(t.number, state=optuna.trial.TrialState.FAIL)


def _parse(name: str) -> tuple[int, int]:
    b, s = name.removeprefix("bs").split("-seed")
    return int(b), int(s)
