"""The report as one self-contained HTML page: inline SVG plots first, then the tables the terminal shows.

Nothing is fetched when the page is opened (no scripts, fonts, styles or images from elsewhere), so it can
be mailed or archived as it is. The page holds domains, counts and run ids only: the report never reads
URLs or hashes, and the series identity (which may be a digest) is shown as the snapshot file names.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

from crawler.report.model import Report
from crawler.report.plots import PLOTS
from crawler.report.text import (
    DOMAIN_LOSS_HEADERS,
    DOMAIN_TRANSITION_HEADERS,
    SURVIVAL_HEADERS,
    TRANSITION_HEADERS,
    count,
    domain_loss_rows,
    domain_transition_rows,
    pair_label,
    run_label,
    run_rows,
    survival_rows,
    transition_rows,
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } .meta { color: #555; margin-top: 0; }
figure { margin: 1.5rem 0; } figcaption { font-weight: 600; margin-bottom: 0.4rem; }
figure svg { max-width: 100%; height: auto; }
table { border-collapse: collapse; margin: 0.6rem 0 1.6rem; font-size: 0.9rem; }
th, td { padding: 0.2rem 0.6rem; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; } thead th { border-bottom: 2px solid #999; }
.notes { background: #fff8e1; padding: 0.6rem 1rem; border-left: 4px solid #f0b400; }
p.definitions { color: #444; font-size: 0.9rem; }
"""

_DEFINITIONS = (
    "Alive: the host served a decodable image (outcome ok); a placeholder is not alive. Transitions count "
    "references present in two consecutive runs and fetched by the later one. Alive→changed: alive in both, "
    "and the later run's drift is 'changed'. Unauditable: not alive and no hash recorded by the snapshot. "
    "Survival: time from the first run to a reference's first observed death after it was seen alive "
    "(Kaplan-Meier, censored at the last run that fetched it)."
)


def render_html(report: Report, generated_at: datetime | None = None) -> str:
    """The whole page as a string."""
    moment = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    runs = report.runs
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>refwatch report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>refwatch report</h1>",
        (f'<p class="meta">{len(runs)} runs of {escape(", ".join(report.snapshots) or "?")}, '
         f"{escape(runs[0].started_at[:10])} to {escape(runs[-1].started_at[:10])}, "
         f"{count(runs[-1].references)} references in the last run. Generated {escape(moment)}.</p>"),
    ]
    if report.notes:
        parts.append('<div class="notes"><strong>Notes</strong><ul>'
                     + "".join(f"<li>{escape(note)}</li>" for note in report.notes) + "</ul></div>")
    parts.append(f'<p class="definitions">{escape(_DEFINITIONS)}</p>')
    for name, plot in PLOTS:
        svg = plot(report)
        if svg is not None:
            caption = svg.split("<title>", 1)[1].split("</title>", 1)[0]
            parts.append(f'<figure id="plot-{name}"><figcaption>{caption}</figcaption>{svg}</figure>')
    parts += _tables(report)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _tables(report: Report) -> list[str]:
    labels = [run_label(i, run) for i, run in enumerate(report.runs)]
    legend = [[f"#{i + 1}", run.run_id, run.recheck_of or "", ",".join(run.only or [])]
              for i, run in enumerate(report.runs)]
    out = [
        "<h2>Runs</h2>",
        _table(["", *labels], [[label, *values] for label, values in run_rows(report)]),
        _table(["run", "run id", "re-check of", "only"], legend),
    ]
    if report.transitions:
        out += ["<h2>Transitions between consecutive runs</h2>", _table(TRANSITION_HEADERS, transition_rows(report))]
        for t in report.transitions:
            summary = f"{pair_label(report, t)}: domains with most deaths, every way of dying"
            out += [f"<details><summary>{escape(summary)}</summary>",
                    _table(DOMAIN_TRANSITION_HEADERS, domain_transition_rows(t)),
                    _table(["died as", "references"],
                           [[word, count(n)] for word, n in t.alive_to_dead_by_outcome.items()]),
                    "</details>"]
    losses = report.domain_losses
    out += [f"<h2>Domains losing most (at least {losses.min_references} references)</h2>",
            _table(DOMAIN_LOSS_HEADERS, domain_loss_rows(report)),
            "<h2>Survival (Kaplan-Meier)</h2>",
            _table(SURVIVAL_HEADERS, survival_rows(report))]
    return out


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
