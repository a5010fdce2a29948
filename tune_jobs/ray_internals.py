"""The Ray internals critbatch relies on, in one place, each behind a small function.

Ray offers no public API for these three needs, so they use private modules:
- an ASHA bracket per study (:class:`ray.tune.schedulers.async_hyperband._Bracket`): Tune's
  ``ASHAScheduler`` keeps brackets per experiment, critbatch needs one per batch size;
- the cluster launcher's offline validation (``ray.autoscaler._private.util``), the same
  checks ``ray up`` runs before it touches a cloud;
- sending ``~/.ray/auth_token`` to a cluster with token authentication, as ``ray start`` does
  (``ray._private.authentication``).

``RAY_VERSION`` is the version these were checked against; ``tests/test_ray_internals.py``
fails when the installed Ray differs or the signatures used here change, so an upgrade is
a deliberate step, not a surprise on a cluster.
"""

from __future__ import annotations

import logging
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
