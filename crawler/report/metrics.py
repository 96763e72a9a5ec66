"""Every figure of the report, as SQL over the ``obs`` table (see ``tables``); Python only shapes the results.

Definitions (docs/report.md says the same for readers of the report):

* alive: outcome ``ok``; every other outcome (``placeholder`` included) is dead.
* a transition is a reference present in two consecutive runs and fetched by the later one (a partial
  re-check's carried rows are not observations: they would show an old outcome as if it were new).
* alive->changed: alive in both runs and the later run's drift is ``changed``.
* unauditable: not alive (no live image hashed) and the snapshot recorded no hash for it either.
* domains: the registrable domain the crawl wrote (the later row's, else the earlier's); rows without one
  are not ranked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from crawler.report.model import (
    ALIVE,
    DRIFTS,
    MATCH_SOURCES,
    OUTCOMES,
    DomainLoss,
    DomainLosses,
    DomainTransition,
    OutcomeChange,
    Report,
    RunStats,
    Transition,
    pct,
)
from crawler.report.selection import Selection
from crawler.report.survival import kaplan_meier

DEFAULT_TOP_DOMAINS = 10
DEFAULT_MIN_DOMAIN_REFERENCES = 20


def build_report(con: duckdb.DuckDBPyConnection, selection: Selection, *, top_domains: int = DEFAULT_TOP_DOMAINS,
                 min_domain_references: int = DEFAULT_MIN_DOMAIN_REFERENCES) -> Report:
    """The whole report of the selection, whose rows ``con`` holds in ``obs``."""
    days = run_days(selection)
    run_ids = [run.run_id for run in selection.runs]
    notes = list(selection.notes) + duplicate_notes(con, run_ids) + unknown_word_notes(con)
    return Report(
        series=selection.series,
        snapshots=list(selection.runs[0].snapshots),
        runs=run_stats(con, selection, days),
        transitions=transitions(con, run_ids, days, top_domains),
        survival=kaplan_meier(run_ids, days, survival_groups(con)),
        domain_losses=domain_losses(con, len(run_ids) - 1, top_domains, min_domain_references),
        top_domains=top_domains,
        notes=notes,
    )


def run_days(selection: Selection) -> list[float]:
    """Each run's start in days since the first run's start."""
    origin = selection.runs[0].started_at
    return [round((run.started_at - origin).total_seconds() / 86400, 4) for run in selection.runs]


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    result = con.execute(sql, list(params))
    names = [column[0] for column in result.description]
    return [dict(zip(names, row)) for row in result.fetchall()]


def run_stats(con: duckdb.DuckDBPyConnection, selection: Selection, days: Sequence[float]) -> list[RunStats]:
    """Per run: references, alive, every outcome, drift, matches by source, unauditable."""
    drift_counts = ", ".join(f"count(*) FILTER (WHERE drift = '{word}') AS drift_{word}" for word in DRIFTS)
    totals = {row["run"]: row for row in _rows(con, f"""
        SELECT run, count(*) AS refs, count(*) FILTER (WHERE carried) AS carried,
               count(*) FILTER (WHERE matched AND NOT recorded_matched) AS live_only,
               count(*) FILTER (WHERE recorded_matched AND NOT matched) AS recorded_only,
               count(*) FILTER (WHERE matched AND recorded_matched) AS both,
               count(*) FILTER (WHERE outcome <> '{ALIVE}' AND NOT has_recorded) AS unauditable,
               {drift_counts}
        FROM obs GROUP BY run
    """)}
    outcomes: dict[int, dict[str, int]] = {}
    for row in _rows(con, "SELECT run, outcome, count(*) AS n FROM obs GROUP BY run, outcome ORDER BY outcome"):
        outcomes.setdefault(row["run"], {})[row["outcome"]] = row["n"]
    stats = []
    for index, run in enumerate(selection.runs):
        row = totals.get(index, {})
        refs = row.get("refs", 0)
        counts = _outcome_counts(outcomes.get(index, {}))
        stats.append(RunStats(
            run_id=run.run_id,
            started_at=run.started_at.isoformat().replace("+00:00", "Z"),
            days=days[index],
            recheck_of=run.recheck_of,
            only=list(run.only) if run.only is not None else None,
            references=refs,
            carried=row.get("carried", 0),
            alive=counts[ALIVE],
            alive_pct=pct(counts[ALIVE], refs),
            placeholders=counts["placeholder"],
            outcomes=counts,
            outcome_pct={word: pct(n, refs) for word, n in counts.items()},
            drift={word: row.get(f"drift_{word}", 0) for word in DRIFTS},
            matches={source: row.get(source, 0) for source in MATCH_SOURCES},
            unauditable=row.get("unauditable", 0),
            unauditable_pct=pct(row.get("unauditable", 0), refs),
        ))
    return stats


def _outcome_counts(found: dict[str, int]) -> dict[str, int]:
    """Every known outcome word (0 if absent), then any other word the run wrote, in sorted order."""
    counts = {word: found.get(word, 0) for word in OUTCOMES}
    counts.update({word: n for word, n in sorted(found.items()) if word not in counts})
    return counts


# One join of consecutive runs feeds two groupings: outcome pairs per run, and per run and domain.
_TRANSITIONS_SQL = f"""
    CREATE TEMP TABLE transition_groups AS
    WITH pairs AS (
        SELECT b.run AS run, a.outcome AS before, b.outcome AS after, b.drift AS drift,
               coalesce(b.domain, a.domain) AS domain
        FROM obs a JOIN obs b ON a.ref_id = b.ref_id AND b.run = a.run + 1
        WHERE NOT b.carried
    )
    SELECT grouping(domain) = 1 AS by_outcome, run, before, after, domain, count(*) AS compared,
           count(*) FILTER (WHERE before = '{ALIVE}') AS alive_before,
           count(*) FILTER (WHERE before = '{ALIVE}' AND after <> '{ALIVE}') AS alive_to_dead,
           count(*) FILTER (WHERE before <> '{ALIVE}' AND after = '{ALIVE}') AS dead_to_alive,
           count(*) FILTER (WHERE before = '{ALIVE}' AND after = '{ALIVE}' AND drift = 'changed') AS alive_to_changed
    FROM pairs
    GROUP BY GROUPING SETS ((run, before, after), (run, domain))
"""


def transitions(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str], days: Sequence[float],
                top_domains: int) -> list[Transition]:
    """Alive->dead (by outcome), dead->alive, alive->changed between each pair of consecutive runs."""
    if len(run_ids) < 2:
        return []
    con.execute(_TRANSITIONS_SQL)
    pairs: dict[int, list[dict[str, Any]]] = {}
    for row in _rows(con, "SELECT * FROM transition_groups WHERE by_outcome ORDER BY compared DESC, before, after"):
        pairs.setdefault(row["run"], []).append(row)
    domains: dict[int, list[DomainTransition]] = {}
    for row in _rows(con, """
        SELECT run, domain, compared, alive_before, alive_to_dead, dead_to_alive, alive_to_changed
        FROM transition_groups WHERE NOT by_outcome AND domain IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY run ORDER BY alive_to_dead DESC, compared DESC, domain) <= ?
        ORDER BY run, alive_to_dead DESC, compared DESC, domain
    """, [top_domains]):
        run = row.pop("run")
        domains.setdefault(run, []).append(DomainTransition(**row))
    con.execute("DROP TABLE transition_groups")
    return [_transition(run_ids, days, later, pairs.get(later, []), domains.get(later, []))
            for later in range(1, len(run_ids))]


def _transition(run_ids: Sequence[str], days: Sequence[float], later: int, pairs: list[dict[str, Any]],
                domains: list[DomainTransition]) -> Transition:
    died = {row["after"]: row["compared"] for row in pairs if row["before"] == ALIVE and row["after"] != ALIVE}
    revived = {row["before"]: row["compared"] for row in pairs if row["before"] != ALIVE and row["after"] == ALIVE}
    return Transition(
        from_run=run_ids[later - 1],
        to_run=run_ids[later],
        days=round(days[later] - days[later - 1], 4),
        compared=sum(row["compared"] for row in pairs),
        stayed_alive=sum(row["compared"] for row in pairs if row["before"] == ALIVE == row["after"]),
        stayed_dead=sum(row["compared"] for row in pairs if ALIVE not in (row["before"], row["after"])),
        alive_to_dead=sum(died.values()),
        alive_to_dead_by_outcome=_by_count(died),
        dead_to_alive=sum(revived.values()),
        dead_to_alive_by_outcome=_by_count(revived),
        alive_to_changed=sum(row["alive_to_changed"] for row in pairs),
        outcome_changes=[OutcomeChange(row["before"], row["after"], row["compared"]) for row in pairs],
        top_domains=domains,
    )


def _by_count(counts: dict[str, int]) -> dict[str, int]:
    """Most first, ties by name, so the JSON and the tables read the same every time."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def survival_groups(con: duckdb.DuckDBPyConnection) -> list[tuple[int, int | None, int, int]]:
    """(first run seen alive, first later run seen dead or None, last run fetched, references) groups."""
    return [tuple(row) for row in con.execute(f"""
        WITH entries AS (
            SELECT ref_id, min(run) AS entry FROM obs WHERE outcome = '{ALIVE}' AND NOT carried GROUP BY ref_id
        ), lives AS (
            SELECT e.entry AS entry,
                   min(o.run) FILTER (WHERE o.outcome <> '{ALIVE}' AND o.run > e.entry) AS death,
                   max(o.run) AS last
            FROM obs o JOIN entries e USING (ref_id)
            WHERE NOT o.carried
            GROUP BY o.ref_id, e.entry
        )
        SELECT entry, death, last, count(*) FROM lives GROUP BY ALL ORDER BY ALL
    """).fetchall()]


def domain_losses(con: duckdb.DuckDBPyConnection, last: int, top: int, min_references: int) -> DomainLosses:
    """Domains whose alive references fell most from the first run to the last (absolute and relative).

    References are matched by ref_id, and a reference's domain is the last run's (else the first's): a
    first run written before domains were recorded still counts.
    """
    con.execute(f"""
        CREATE TEMP TABLE domain_loss AS
        WITH per_domain AS (
            SELECT coalesce(l.domain, f.domain) AS domain, count(f.ref_id) AS refs,
                   count(*) FILTER (WHERE f.outcome = '{ALIVE}') AS alive_first,
                   count(*) FILTER (WHERE l.outcome = '{ALIVE}') AS alive_last
            FROM (SELECT ref_id, outcome, domain FROM obs WHERE run = 0) f
            FULL JOIN (SELECT ref_id, outcome, domain FROM obs WHERE run = ?) l USING (ref_id)
            GROUP BY ALL
        )
        SELECT domain, refs AS "references", alive_first, alive_last, alive_first - alive_last AS loss,
               (alive_first - alive_last) / alive_first AS loss_share
        FROM per_domain
        WHERE domain IS NOT NULL AND refs >= ? AND alive_first > alive_last
    """, [last, min_references])
    columns = 'domain, "references", alive_first, alive_last, loss'
    by_absolute = _rows(con, f"SELECT {columns} FROM domain_loss ORDER BY loss DESC, domain LIMIT ?", [top])
    by_relative = _rows(con, f"SELECT {columns} FROM domain_loss ORDER BY loss_share DESC, loss DESC, domain "
                             "LIMIT ?", [top])
    con.execute("DROP TABLE domain_loss")
    return DomainLosses(min_references=min_references, by_absolute=[_domain_loss(r) for r in by_absolute],
                        by_relative=[_domain_loss(r) for r in by_relative])


def _domain_loss(row: dict[str, Any]) -> DomainLoss:
    return DomainLoss(**row, loss_pct=pct(row["loss"], row["alive_first"]))


def duplicate_notes(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]) -> list[str]:
    """A note per run with a ref_id on several rows: its transitions count every pair of rows."""
    rows = con.execute("""
        SELECT run, count(*) FROM (SELECT run FROM obs GROUP BY run, ref_id HAVING count(*) > 1)
        GROUP BY run ORDER BY run
    """).fetchall()
    return [f"run {run_ids[run]}: {n} ref_ids appear on more than one row (transitions count every pair)"
            for run, n in rows]


def unknown_word_notes(con: duckdb.DuckDBPyConnection) -> list[str]:
    """A note for outcome or drift words this refwatch does not know (counted as dead / not counted)."""
    known_outcomes = ", ".join(f"'{word}'" for word in OUTCOMES)
    known_drifts = ", ".join(f"'{word}'" for word in DRIFTS)
    rows = con.execute(f"""
        SELECT 'outcome', outcome, count(*) FROM obs WHERE outcome NOT IN ({known_outcomes}) GROUP BY outcome
        UNION ALL
        SELECT 'drift', drift, count(*) FROM obs WHERE drift NOT IN ({known_drifts}) GROUP BY drift
        ORDER BY 1, 2
    """).fetchall()
    return [f"{n} rows have the unknown {kind} {word!r}" + (" (counted as dead)" if kind == "outcome" else "")
            for kind, word, n in rows]
