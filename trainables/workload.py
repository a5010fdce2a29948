"""What a workload is: a model, its data, its loss and its metrics behind one small interface.

The built-in workloads register a :class:`Workload` in :mod:`trainables.registry`; a user's
``module:function`` becomes one in :mod:`trainables.user_code`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainables.api import Report, Target, TrialConfig


@dataclass(frozen=True)
class Workload:
    """One entry of the registry.

    ``metrics`` maps every metric the workload reports (beyond the required ones) to its
    direction ("min" or "max"); a job's target must name one of these or ``train_loss`` /
    ``train_loss_ema``. ``train_size`` is the number of training examples at data_fraction 1
    (used to turn epochs into steps before a trial starts); ``None`` if it depends on data
    on disk. ``build(config, device) -> Task`` for supervised workloads, or
    ``train(config, report, state)`` for workloads with their own loop.
    """

    name: str
    description: str
    metrics: dict[str, str]
    default_target: Target
    train_size: int | None = None
    build: Callable[..., Any] | None = None
    train: Callable[[TrialConfig, Report, dict | None], None] | None = None
    dataset: str | None = None  # on-disk dataset it reads (for `critbatch data`), if any
    cpu_friendly: bool = True  # small enough to run on a laptop CPU
    # Why a batch cannot be cut into parts (micro-batches, B_simple's two half batches);
    # "" when it can. Job fields that would cut it are refused with this reason.
    whole_batches: str = ""
    # Declared options: a dataclass with defaults and docs (trainables.options); None = none.
    options: type | None = None

    def all_metrics(self) -> dict[str, str]:
        return {"train_loss": "min", "train_loss_ema": "min", **self.metrics}

    def check_options(self, options: dict[str, Any]) -> Any:
        """The options checked against the declared schema; raises InputError naming a bad one."""
        from trainables.options import parse_options

        return parse_options(self.options, options, self.name)

    def run(self, config: TrialConfig, report: Report, state: dict | None = None) -> None:
        self.check_options(config.options)
        if self.train is not None:
            self.train(config, report, state)
            return
        from trainables.loop import train_supervised

        train_supervised(self, config, report, state)
