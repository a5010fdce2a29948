"""Which batch size to train at: the answer on top of every result.

Two criteria over the measured time and device-hours to target per batch size
(``analysis.cost.time_and_cost``), both thresholds stated with the answer:

- the recommendation: the fastest batch size whose device-hours are within
  ``max_extra_cost`` of the cheapest one (1.0: at most 2x the cheapest device-hours);
- for speed: the cheapest batch size whose time to target is within ``max_slowdown`` of the
  fastest one (1.0: at most 2x the fastest time).

The defaults (2x) follow McCandlish et al. (2018): at B = B_crit both the steps and the
examples to target are twice their minimum. The answer also says where time stops falling
("beyond B = 2048 nothing gets faster": no larger batch size is more than
``PLATEAU_TOLERANCE`` faster), and says so when the measured range shows no plateau (time
still falls at the largest B) or no linear regime (device-hours already rise from the
smallest B), since the best batch size may then lie outside the range measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis.cost import format_duration
from analysis.frame import AnalysisError

DEFAULT_MAX_EXTRA_COST = 1.0  # the recommended B may cost up to 2x the cheapest
DEFAULT_MAX_SLOWDOWN = 1.0  # the speed option may take up to 2x the fastest time
PLATEAU_TOLERANCE = 0.05  # "faster" means more than 5% less time; less is measurement noise


@dataclass(frozen=True)
class Choice:
    batch_size: int
    time_h: float
    device_hours: float
    devices: float
    cost: float | None


@dataclass(frozen=True)
class Recommendation:
    recommended: Choice  # the fastest within max_extra_cost of the cheapest
    faster: Choice  # the cheapest within max_slowdown of the fastest (may be `recommended`)
    fastest: Choice
    cheapest: Choice
    plateau_from: int | None  # no larger B is faster; None: time still falls at the largest
    no_linear_regime: bool  # device-hours already rise from the smallest B measured
    max_slowdown: float
    max_extra_cost: float
    device_kind: str = "GPU"
    largest: int = 0
    smallest: int = 0

    def text(self) -> str:
        """One paragraph: the answer, the faster option, where time stops falling, caveats."""
        r, k = self.recommended, self.device_kind
        money = f", {r.cost:.3g} in money" if r.cost is not None else ""
        on = f"{r.devices:g} {k}{'s' if r.devices != 1 else ''}"
        parts = [
            f"B = {r.batch_size}: target in {format_duration(r.time_h)} on {on} at "
            f"{r.device_hours:.3g} {k}-h{money} (the fastest within {1 + self.max_extra_cost:g}x "
            "the cheapest cost)."
        ]
        f = self.faster
        if f.time_h < r.time_h / (1 + PLATEAU_TOLERANCE):
            parts.append(
                f"B = {f.batch_size} is {r.time_h / f.time_h:.2g}x faster at "
                f"{f.device_hours / r.device_hours:.2g}x the cost (the cheapest within "
                f"{1 + self.max_slowdown:g}x the fastest time)."
            )
        elif self.fastest.batch_size != r.batch_size:
            parts.append(
                f"It is within {1 + self.max_slowdown:g}x the fastest time (B = "
                f"{self.fastest.batch_size}, {format_duration(self.fastest.time_h)})."
            )
        if self.plateau_from is None:
            parts.append(
                f"Time still falls at the largest B measured ({self.largest}): a larger batch "
                "may be faster still (no plateau measured)."
            )
        elif self.plateau_from < self.largest:
            parts.append(f"Beyond B = {self.plateau_from} nothing gets faster.")
        if self.no_linear_regime:
            parts.append(
                f"Device-hours rise from the smallest B measured ({self.smallest}): a smaller "
                "batch may be cheaper still (no linear regime measured)."
            )
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {
            "text": self.text(),
            "recommended_batch_size": self.recommended.batch_size,
            "recommended_time_to_target_h": self.recommended.time_h,
            "recommended_device_hours": self.recommended.device_hours,
            "faster_batch_size": self.faster.batch_size,
            "fastest_batch_size": self.fastest.batch_size,
            "cheapest_batch_size": self.cheapest.batch_size,
            "plateau_from": self.plateau_from,
            "no_linear_regime": self.no_linear_regime,
            "max_slowdown": self.max_slowdown,
            "max_extra_cost": self.max_extra_cost,
            "device_kind": self.device_kind,
        }


def _choice(row) -> Choice:
    cost = row.get("cost")
    return Choice(int(row["batch_size"]), float(row["time_to_target_h"]),
                  float(row["device_hours"]), float(row["devices"]),
                  None if cost is None or not math.isfinite(cost) else float(cost))  # fmt: skip


def check_thresholds(max_slowdown: float, max_extra_cost: float) -> None:
    for name, value in (("--max-slowdown", max_slowdown), ("--max-extra-cost", max_extra_cost)):
        if not (math.isfinite(value) and value >= 0):
            raise AnalysisError(f"{name} must be a fraction >= 0 (0.5 = 50%), got {value}")


def recommend(
    table: pd.DataFrame,
    max_slowdown: float = DEFAULT_MAX_SLOWDOWN,
    max_extra_cost: float = DEFAULT_MAX_EXTRA_COST,
    device_kind: str = "GPU",
) -> Recommendation:
    """The recommendation from one strategy's rows of a cost table (columns batch_size,
    time_to_target_h, device_hours, devices, optional cost); rows that never reached the
    target (NaN time) are left out."""
    check_thresholds(max_slowdown, max_extra_cost)
    t = table.dropna(subset=["time_to_target_h", "device_hours"])
    t = t[(t["time_to_target_h"] > 0) & (t["device_hours"] > 0)]
    if t.empty:
        raise AnalysisError(
            "no batch size has a time to target (none reached it, or no step time): nothing "
            "to recommend"
        )
    if t["batch_size"].duplicated().any():
        raise AnalysisError("recommend takes one strategy's rows: a batch size appears twice")
    t = t.sort_values("batch_size").reset_index(drop=True)
    time, hours = t["time_to_target_h"], t["device_hours"]

    def first(rows: pd.DataFrame, by: list[str]) -> pd.Series:
        return rows.sort_values(by, kind="stable").iloc[0]

    # Ties: the same time at less cost, the same cost in less time, then the smaller B.
    fastest = first(t, ["time_to_target_h", "device_hours", "batch_size"])
    cheapest = first(t, ["device_hours", "time_to_target_h", "batch_size"])
    ok_cost = t[hours <= (1 + max_extra_cost) * cheapest["device_hours"]]
    recommended = first(ok_cost, ["time_to_target_h", "device_hours", "batch_size"])
    ok_time = t[time <= (1 + max_slowdown) * fastest["time_to_target_h"]]
    faster = first(ok_time, ["device_hours", "time_to_target_h", "batch_size"])
    # The plateau starts at the smallest B that no larger B beats by more than the tolerance.
    plateau_from = None
    for i in range(len(t)):
        later = time.iloc[i + 1 :]
        if later.empty or (later >= time.iloc[i] / (1 + PLATEAU_TOLERANCE)).all():
            plateau_from = int(t["batch_size"].iloc[i])
            break
    if plateau_from == int(t["batch_size"].iloc[-1]) and len(t) > 1:
        plateau_from = None  # only the largest B is beaten by none: time still falls there
    no_linear = (
        len(t) > 1
        and hours.iloc[1] > hours.iloc[0] * (1 + PLATEAU_TOLERANCE)
        and int(cheapest["batch_size"]) == int(t["batch_size"].iloc[0])
    )
    return Recommendation(
        _choice(recommended), _choice(faster), _choice(fastest), _choice(cheapest),
        plateau_from, bool(no_linear), max_slowdown, max_extra_cost, device_kind,
        int(t["batch_size"].iloc[-1]), int(t["batch_size"].iloc[0]),
    )  # fmt: skip
