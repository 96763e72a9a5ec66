"""The report as terminal tables (rich): runs as columns, so a series reads left to right like a timeline.

The same cell texts feed the HTML page's tables (``run_rows``, ``transition_rows``, ...), so the two
never disagree. On a terminal the runs are split into as many tables as the width needs; piped output is
plain text (no colour codes), wide enough for every run.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table

from crawler.report.model import ALIVE, DRIFTS, Report, RunStats, Transition

LABEL_WIDTH, RUN_COLUMN_WIDTH = 28, 13
MATCH_LABELS = {"live_only": "matches: live only", "recorded_only": "matches: recorded only", "both": "matches: both"}


def count(n: int) -> str:
    return f"{n:,}"


def percent(value: float) -> str:
    return f"{value:.2f}%"


def run_label(index: int, run: RunStats) -> str:
    """``#N YYYY-MM-DD``: run ids are long; the legend maps labels to ids."""
    return f"#{index + 1} {run.started_at[:10]}"


def run_rows(report: Report) -> list[tuple[str, list[str]]]:
    """(metric, one cell per run) rows; outcomes no run saw are left out to keep the table short."""
    runs = report.runs
    rows: list[tuple[str, list[str]]] = [
        ("days since first run", [f"{run.days:g}" for run in runs]),
        ("references", [count(run.references) for run in runs]),
    ]
    if any(run.carried for run in runs):
        rows.append(("carried (not re-fetched)", [count(run.carried) for run in runs]))
    rows.append(("alive (ok)", [percent(run.alive_pct) for run in runs]))
    seen = [word for word in runs[0].outcomes if word != ALIVE and any(run.outcomes.get(word) for run in runs)]
    rows += [(f"  {word}", [percent(run.outcome_pct.get(word, 0.0)) for run in runs]) for word in seen]
    rows.append(("placeholders", [count(run.placeholders) for run in runs]))
    rows.append(("unauditable", [percent(run.unauditable_pct) for run in runs]))
    rows += [(f"drift: {word}", [count(run.drift[word]) for run in runs]) for word in DRIFTS]
    rows += [(label, [count(run.matches[source]) for run in runs]) for source, label in MATCH_LABELS.items()]
    return rows


TRANSITION_HEADERS = ("runs", "days", "compared", "alive→dead", "of which", "dead→alive", "alive→changed")


def pair_label(report: Report, transition: Transition) -> str:
    """``#1→#2``: the runs' positions in the series, as the run tables number them."""
    index = {run.run_id: i + 1 for i, run in enumerate(report.runs)}
    return f"#{index[transition.from_run]}→#{index[transition.to_run]}"


def transition_rows(report: Report, separator: str = ", ") -> list[list[str]]:
    """One row per pair of consecutive runs; 'of which' names the three commonest ways to die."""
    rows = []
    for t in report.transitions:
        ways = separator.join(f"{word} {count(n)}" for word, n in list(t.alive_to_dead_by_outcome.items())[:3])
        rows.append([pair_label(report, t), f"{t.days:g}", count(t.compared), count(t.alive_to_dead), ways or "-",
                     count(t.dead_to_alive), count(t.alive_to_changed)])
    return rows


DOMAIN_TRANSITION_HEADERS = ("domain", "compared", "alive before", "alive→dead", "dead→alive", "alive→changed")


def domain_transition_rows(transition: Transition) -> list[list[str]]:
    return [[d.domain, count(d.compared), count(d.alive_before), count(d.alive_to_dead), count(d.dead_to_alive),
             count(d.alive_to_changed)] for d in transition.top_domains]


DOMAIN_LOSS_HEADERS = ("domain", "references", "alive first", "alive last", "loss", "loss %")


def domain_loss_rows(report: Report) -> list[list[str]]:
    return [[d.domain, count(d.references), count(d.alive_first), count(d.alive_last), count(d.loss),
             percent(d.loss_pct)] for d in report.domain_losses.by_absolute]


SURVIVAL_HEADERS = ("run", "days", "entered", "at risk", "died", "censored", "survival")


def survival_rows(report: Report) -> list[list[str]]:
    return [[f"#{i + 1}", f"{p.days:g}", count(p.entered), count(p.at_risk), count(p.events), count(p.censored),
             percent(100 * p.survival)] for i, p in enumerate(report.survival.points)]


def _table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], plain: bool,
           caption: str | None = None) -> Table:
    table = Table(title=title, caption=caption, box=box.ASCII if plain else box.SIMPLE_HEAVY, title_justify="left",
                  caption_justify="left")
    for position, header in enumerate(headers):
        table.add_column(header, justify="left" if position == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def render_text(report: Report, console: Console) -> None:
    """Print every table of the report to ``console``."""
    plain = not console.is_terminal
    console.print(f"series {report.series}: {len(report.runs)} runs of {', '.join(report.snapshots) or '?'}")
    for i, run in enumerate(report.runs):
        partial = f" (re-check of {run.recheck_of}, only {','.join(run.only or [])})" if run.recheck_of else ""
        console.print(f"  #{i + 1} = {run.run_id}{partial}")
    _print_runs(report, console, plain)
    if report.transitions:
        console.print(_table("Transitions between consecutive runs (references the later run fetched)",
                             TRANSITION_HEADERS, transition_rows(report, separator=", " if plain else "\n"), plain))
        last = report.transitions[-1]
        console.print(_table(f"Domains with most deaths, {pair_label(report, last)}", DOMAIN_TRANSITION_HEADERS,
                             domain_transition_rows(last), plain))
    losses = report.domain_losses
    console.print(_table(f"Domains losing most alive references, first run → last (≥ {losses.min_references} "
                         "references)", DOMAIN_LOSS_HEADERS, domain_loss_rows(report), plain,
                         caption=None if losses.by_absolute else "no such domain lost alive references"))
    median = report.survival.median_days
    console.print(_table("Survival of references seen alive (Kaplan-Meier)", SURVIVAL_HEADERS,
                         survival_rows(report), plain,
                         caption=f"{count(report.survival.subjects)} references seen alive; median survival "
                                 f"{'not reached' if median is None else f'{median:g} days'}"))


def _print_runs(report: Report, console: Console, plain: bool) -> None:
    """The runs table, split into as many tables as the console's width needs."""
    rows = run_rows(report)
    labels = [run_label(i, run).replace(" ", "\n") for i, run in enumerate(report.runs)]
    per_table = max(1, (console.width - LABEL_WIDTH) // RUN_COLUMN_WIDTH)
    for start in range(0, len(labels), per_table):
        shown = slice(start, start + per_table)
        console.print(_table("Runs", ["", *labels[shown]], [[label, *values[shown]] for label, values in rows],
                             plain))


def text_width(report: Report) -> int:
    """Width that fits every run in one table: used when the output is not a terminal."""
    return LABEL_WIDTH + RUN_COLUMN_WIDTH * max(len(report.runs), 6)
