"""The Ray internals critbatch relies on, in one place, each behind a small function.

Ray offers no public API for these three needs, so they use private modules:
- an ASHA bracket per study (:class:`ray.tune.schedulers.async_hyperband._Bracket`): Tune's
  ``ASHAScheduler`` keeps brackets per experiment, critbatch needs one per batch size;
- the cluster launcher's offline validation (``ray.autoscaler._private.util``), the same
  checks ``ray up`` runs before it touches a cloud;
- sending ``~/.ray/auth_token`` to a cluster with token authentication, as ``ray start`` does,
  and writing it 0600 (``ray._private.authentication``);
- a local Ray bound to loopback only (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``);
- letting go of what Tune's controller keeps of a finished trial that nothing reads again
  (:func:`release_finished_trial`): a driver of a 10,000-trial sweep otherwise grows by
  ~90 KiB per trial.
- letting a trial the scheduler held at a report (``TrialScheduler.NOOP``) go on later
  (:func:`resume_training`): Tune's schedulers may stop another trial (``stop_trial``) but
  have no call to continue one.
- a fit that does not read every trial's results into pandas at its end
  (:func:`no_result_frames`): ~0.4 GiB and ~20 s at 10,000 trials, for a ``ResultGrid``
  critbatch never reads.

``RAY_VERSION`` is the version these were checked against; ``tests/test_ray_internals.py``
fails when the installed Ray differs or the signatures used here change, so an upgrade is
a deliberate step, not a surprise on a cluster.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

RAY_VERSION = "2.60.0"


def asha_bracket(grace: int, max_t: int, reduction_factor: float) -> Any:
    """A single asynchronous successive-halving bracket; ``on_result(trial, step, reward)``
    returns ``TrialScheduler.STOP`` or ``CONTINUE``. Higher reward is better."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    return _Bracket(grace, max_t, reduction_factor, 0, stop_last_trials=False)


def validate_cluster_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Ray's offline checks of a cluster.yaml mapping: provider defaults filled in
    (``prepare_config``), then the launcher's JSON schema and node-type rules
    (``validate_config``, raises ``jsonschema.ValidationError`` or ``ValueError``)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # "setting max workers" chatter
    cfg = prepare_config(cfg)
    validate_config(cfg)
    return cfg


def use_auth_token_if_present() -> None:
    """Make Ray clients send the local auth token (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN``)
    when there is one, as ``ray start`` and ``ray.init`` do; the Jobs client alone does not."""
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = auth_log.level
    auth_log.setLevel(logging.ERROR)  # its "enabled for this Ray cluster" is about a local one
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        auth_log.setLevel(level)


def loopback_only_local_ray() -> None:
    """A local Ray listens on 127.0.0.1 only: GCS, raylet, workers, agents and the metrics
    export. ``ray.init(_node_ip_address="127.0.0.1")`` does not do it (Ray swaps a loopback
    node address for the machine's routable one); Ray's own switch for single-machine use
    (the one it applies on macOS and Windows) makes the node address loopback, and every
    server then binds to it. The env var reaches Ray's child processes; the constant, this
    process, where ray was already imported. Only for a local start: a driver that joins a
    cluster must advertise an address the other nodes can reach (cluster.yaml)."""
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def write_private_auth_token() -> None:
    """Ray writes its token to ~/.ray/auth_token with the umask's mode (0644: readable by every
    user of the machine). Write it first, 0600, with Ray's own generator; tighten an
    existing one."""
    from ray._private.authentication.authentication_token_generator import (
        generate_new_authentication_token,
    )
    from ray._private.authentication.authentication_token_setup import _get_default_token_path

    path = _get_default_token_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return
    with os.fdopen(fd, "w") as f:
        f.write(generate_new_authentication_token())


def release_finished_trial(tune_controller: Any, trial: Any) -> None:
    """Drop what Tune's driver keeps per finished trial and critbatch never reads, so a long
    sweep's driver memory stays bounded (BENCHMARKS.md, "Driver memory at 10,000 trials").
    Called by the sweep's scheduler when ``trial`` completes or is removed, after its last
    result was processed (the callbacks still see ``trial.last_result`` and ``config``).

    - ``trial.run_metadata.metric_analysis`` / ``metric_n_steps``: Tune's running max, min,
      mean and last-5/10 averages of every reported metric, two ``deque`` objects per metric
      (~25 KiB per trial of 16 metrics, and ~10 KiB more in the trial's cached JSON state,
      which the controller keeps for every trial to write its experiment snapshot). They
      serve ``ResultGrid``/``ExperimentAnalysis`` "best trial" queries; critbatch reads every
      trial's own ``result.json`` (analysis/load_ray.py) and the journal instead. Each trial's
      ``last_result`` is kept.
    - ``trial._default_result_or_future``: the ``ObjectRef`` of the actor's first auto-filled
      metrics, read only while the trial has no result of its own; an ObjectRef held keeps an
      entry in the driver's reference table (outside Python's heap).
    - the queued tasks of cancelled actor requests (:func:`drop_cancelled_actor_tasks`).
    - the list of reports in ``last_result`` when it is a packet (analysis/packets.py: up to
      a window's worth of reports, kilobytes a trial); its top level, the last report, stays.
    """
    import ray

    from analysis.packets import POINTS

    meta = trial.run_metadata
    if POINTS in meta.last_result:  # (setting it invalidates the cached JSON state)
        meta.last_result = {k: v for k, v in meta.last_result.items() if k != POINTS}
        tune_controller._mark_trial_to_checkpoint(trial)
    if meta.last_result and isinstance(trial._default_result_or_future, ray.ObjectRef):
        trial._default_result_or_future = None
    if meta.metric_analysis or meta.metric_n_steps:
        meta.metric_analysis = {}  # (setting them invalidates the cached JSON state)
        meta.metric_n_steps = {}
        tune_controller._mark_trial_to_checkpoint(trial)  # its snapshot entry, recomputed
    drop_cancelled_actor_tasks(tune_controller)


def resume_training(tune_controller: Any, trial: Any) -> None:
    """Let ``trial`` go on past the report its scheduler answered ``NOOP`` to: what Tune does
    for a ``CONTINUE`` (``TuneController._schedule_trial_train``). A function trainable waits
    inside its ``report`` until then (Tune's function sessions report synchronously), so a
    held trial spends nothing while it waits. ``tune_controller``: what Tune hands the
    scheduler (its restricted wrapper, or the controller itself)."""
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    controller._schedule_trial_train(trial)


@contextmanager
def no_result_frames() -> Iterator[None]:
    """Within this block a Tune fit returns its ``ResultGrid`` without each trial's metrics
    DataFrame (``Result.metrics_dataframe`` is None; ``metrics``, ``path`` and ``error`` are
    as usual). Tune ends every fit by building an ``ExperimentAnalysis``, which reads every
    trial's ``result.json`` into a pandas DataFrame and keeps them all
    (``_fetch_trial_dataframes``): ~390 MiB and ~20 s at the end of a 10,000-trial sweep,
    measured on its run folder; the sweep reads the journal and ``result.json`` itself."""
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    fetch = ExperimentAnalysis._fetch_trial_dataframes
    ExperimentAnalysis._fetch_trial_dataframes = lambda self: {}
    try:
        yield
    finally:
        ExperimentAnalysis._fetch_trial_dataframes = fetch


def drop_cancelled_actor_tasks(tune_controller: Any) -> None:
    """The queued tasks of cancelled actor requests of Tune's actor manager, dropped
    (:func:`drop_cancelled_tasks_of`)."""
    drop_cancelled_tasks_of(tune_controller._actor_manager)


def drop_cancelled_tasks_of(actor_manager: Any) -> int:
    """``RayActorManager._pending_actors_to_enqueued_actor_tasks``: a request for a new trial
    actor that Tune cancels (``reuse_actors``: the trial got a cached actor instead) leaves
    its queued tasks there forever (Ray 2.60 pops the entry only when the actor starts):
    nearly one entry per trial, each holding the trial's queued calls and their arguments.
    Entries of actors that are neither pending nor live can never run: dropped. Returns how
    many."""
    queued = actor_manager._pending_actors_to_enqueued_actor_tasks
    pending = actor_manager._pending_actors_to_attrs
    live = actor_manager._live_actors_to_ray_actors_resources
    stale = [a for a in queued if a not in pending and a not in live]
    for actor in stale:
        del queued[actor]
    return len(stale)
