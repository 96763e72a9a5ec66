"""Kaplan-Meier survival of references, from per-reference first-alive / first-death / last-seen run indexes.

Runs observe references at discrete times (each run's start, in days since the series' first run). A
reference enters the study when it is first seen alive (delayed entry: references dead in the first run
that come back later are counted from then on); its event is the first later run that fetched it and did
not find it alive; with no such run it is censored at the last run that fetched it. At run ``j`` the
references at risk are those that entered before ``j`` and had neither died nor been censored before ``j``,
so a reference censored at ``j`` still counts at ``j`` (the usual convention: censoring after deaths).

The database reduces the references to a few (entry, death, last) groups with counts; everything here is
arithmetic over one value per run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crawler.report.model import Survival, SurvivalPoint


def kaplan_meier(run_ids: Sequence[str], days: Sequence[float], groups: Sequence[tuple[int, int | None, int, int]]
                 ) -> Survival:
    """The curve at each run from ``(entry, death or None, last, references)`` groups of run indexes."""
    runs = len(run_ids)
    entry = np.array([g[0] for g in groups], dtype=np.int64)
    death = np.array([-1 if g[1] is None else g[1] for g in groups], dtype=np.int64)
    last = np.array([g[2] for g in groups], dtype=np.int64)
    count = np.array([g[3] for g in groups], dtype=np.int64)
    died = death >= 0
    entered = np.bincount(entry, weights=count, minlength=runs).astype(np.int64)
    events = np.bincount(death[died], weights=count[died], minlength=runs).astype(np.int64)
    censored = np.bincount(last[~died], weights=count[~died], minlength=runs).astype(np.int64)
    left = events + censored
    at_risk = np.concatenate(([0], np.cumsum(entered)[:-1] - np.cumsum(left)[:-1]))
    hazard = np.divide(events, at_risk, out=np.zeros(runs), where=at_risk > 0)
    survival = np.cumprod(1.0 - hazard)
    std_error = survival * np.sqrt(np.cumsum(_greenwood_terms(events, at_risk)))
    points = [
        SurvivalPoint(run_id=run_ids[j], days=round(float(days[j]), 4), at_risk=int(at_risk[j]),
                      events=int(events[j]), censored=int(censored[j]), entered=int(entered[j]),
                      survival=round(float(survival[j]), 6), std_error=round(float(std_error[j]), 6))
        for j in range(runs)
    ]
    below = np.flatnonzero(survival <= 0.5)
    median = round(float(days[below[0]]), 4) if below.size else None
    return Survival(subjects=int(count.sum()), events=int(events.sum()), points=points, median_days=median)


def _greenwood_terms(events: np.ndarray, at_risk: np.ndarray) -> np.ndarray:
    """d / (n (n - d)) per run; 0 where nobody is at risk or everybody died (the curve is 0 from there)."""
    denominator = at_risk * (at_risk - events)
    return np.divide(events, denominator, out=np.zeros(events.size), where=denominator > 0)
