"""What a report holds: plain frozen values, computed once and rendered three ways (terminal, JSON, HTML).

Keys of ``Report.as_dict()`` are the JSON contract (documented in docs/report.md): every outcome word and
every drift word is always present (zero when absent), so a consumer never has to guess a missing key.
Percentages are of the run's references, rounded to 4 decimals; counts are exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from crawler.outcomes import Outcome

REPORT_FORMAT, REPORT_VERSION = "refwatch-report", 1
ALIVE = Outcome.OK.value
OUTCOMES: tuple[str, ...] = tuple(o.value for o in Outcome)
DRIFTS: tuple[str, ...] = ("same", "near", "changed", "new", "unknown")
MATCH_SOURCES: tuple[str, ...] = ("live_only", "recorded_only", "both")


def pct(count: int, total: int) -> float:
    """``count`` as a percentage of ``total``, 4 decimals; 0 when there is nothing to divide."""
    return round(100.0 * count / total, 4) if total else 0.0


@dataclass(frozen=True, slots=True)
class RunStats:
    """One run's picture of the snapshot (carried rows included: they are its best knowledge)."""

    run_id: str
    started_at: str
    days: float  # since the series' first run started
    recheck_of: str | None
    only: list[str] | None
    references: int
    carried: int  # rows copied from an earlier run by a partial re-check, not fetched in this run
    alive: int
    alive_pct: float
    placeholders: int
    outcomes: dict[str, int]
    outcome_pct: dict[str, float]
    drift: dict[str, int]
    matches: dict[str, int]  # live_only, recorded_only, both
    unauditable: int  # no live image hashed (outcome not ok) and no hash recorded by the snapshot
    unauditable_pct: float


@dataclass(frozen=True, slots=True)
class DomainTransition:
    """What happened on one registrable domain between two consecutive runs."""

    domain: str
    compared: int
    alive_before: int
    alive_to_dead: int
    dead_to_alive: int
    alive_to_changed: int


@dataclass(frozen=True, slots=True)
class OutcomeChange:
    """References whose outcome went from ``before`` to ``after`` between two consecutive runs."""

    before: str
    after: str
    references: int


@dataclass(frozen=True, slots=True)
class Transition:
    """Changes between consecutive runs, counted on references the later run fetched itself."""

    from_run: str
    to_run: str
    days: float
    compared: int
    stayed_alive: int
    stayed_dead: int
    alive_to_dead: int
    alive_to_dead_by_outcome: dict[str, int]  # by the outcome it died with
    dead_to_alive: int
    dead_to_alive_by_outcome: dict[str, int]  # by the outcome it was dead with
    alive_to_changed: int
    outcome_changes: list[OutcomeChange]  # every (before, after) pair seen, most references first
    top_domains: list[DomainTransition]  # most alive_to_dead first


@dataclass(frozen=True, slots=True)
class SurvivalPoint:
    """The Kaplan-Meier estimate just after the run at ``days``."""

    run_id: str
    days: float
    at_risk: int
    events: int  # references first observed dead here after being seen alive
    censored: int  # references last observed (alive) here
    entered: int  # references first seen alive here
    survival: float
    std_error: float  # Greenwood's


@dataclass(frozen=True, slots=True)
class Survival:
    """Time from the series' first run to a reference's first observed death after it was seen alive."""

    subjects: int  # references seen alive at least once
    events: int
    points: list[SurvivalPoint]
    median_days: float | None  # first time the curve is at or below 0.5; None if it never gets there


@dataclass(frozen=True, slots=True)
class DomainLoss:
    """Alive references of one domain in the series' first run and in its last."""

    domain: str
    references: int  # in the first run
    alive_first: int
    alive_last: int
    loss: int
    loss_pct: float  # of alive_first


@dataclass(frozen=True, slots=True)
class DomainLosses:
    min_references: int
    by_absolute: list[DomainLoss]
    by_relative: list[DomainLoss]


@dataclass(frozen=True, slots=True)
class Report:
    series: str
    snapshots: list[str]
    runs: list[RunStats]
    transitions: list[Transition]
    survival: Survival
    domain_losses: DomainLosses
    top_domains: int
    notes: list[str]

    def as_dict(self) -> dict[str, Any]:
        """The JSON document: ``format``/``version`` first, then the fields in declaration order."""
        return {"format": REPORT_FORMAT, "version": REPORT_VERSION, **asdict(self)}
