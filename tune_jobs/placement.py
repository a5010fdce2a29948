"""Where a sweep's trials go: what each one asks of the Ray cluster, and how many run at once
(the parallel search's virtual clock has that many workers, tune_jobs/vclock.py)."""

from __future__ import annotations

from typing import Any

from tune_jobs.config import JobConfig, ResourcesConfig


def trial_resources(resources: ResourcesConfig, config: dict[str, Any]) -> Any:
    """Tune's resource request for one trial: ``resources.gpus_from_batch_size`` gives the
    large batch sizes more of a GPU than the small ones, which pack several to a GPU."""
    from ray.tune import PlacementGroupFactory

    b = config.get("batch_size")
    gpus = (
        resources.gpus_for(b)
        if b is not None  # Tune may ask without a trial's config: the largest ask then
        else max([resources.gpus, *resources.gpus_from_batch_size.values()])
    )
    return PlacementGroupFactory([{"CPU": resources.cpus, **({"GPU": gpus} if gpus else {})}])


def search_slots(job: JobConfig) -> int:
    """How many search trials the sweep runs at once: ``max_concurrent`` where the job sets it,
    else as many as the Ray cluster holds now (:func:`cluster_fits`). The parallel search's
    virtual clock has as many workers (tune_jobs/vclock.py), so its trials start on the clock
    as on the cluster; 0: no limit known (one worker per study). A cluster that grows later is
    seen at this size: set ``max_concurrent`` to the size it runs at."""
    return job.max_concurrent or cluster_fits(job)


def cluster_fits(job: JobConfig) -> int:
    """How many trials the Ray cluster's CPUs and GPUs hold now (each trial's ``resources``;
    with ``gpus_from_batch_size``, the smallest ask); 0: not known (a resource the trials ask
    for that the cluster has none of yet, as on a cluster whose GPU workers an autoscaler
    starts later)."""
    import ray

    have = ray.cluster_resources()
    r = job.resources
    gpus = min([r.gpus, *r.gpus_from_batch_size.values()])
    fits = [int(have.get("CPU", 0) / r.cpus + 1e-9)] if r.cpus > 0 else []
    if gpus > 0:
        fits.append(int(have.get("GPU", 0) / gpus + 1e-9))
    return min(fits) if fits and min(fits) > 0 else 0
