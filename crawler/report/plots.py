"""The report's plots as inline SVG (matplotlib, object API: no pyplot, no global state, no display).

Each function takes the ``Report`` and returns one ``<svg>`` element ready to paste into HTML: text stays
text (selectable, searchable, small), and the XML prolog, metadata and namespace declarations are removed,
so the page holds no URL at all (HTML parses inline SVG without them). Only domains and counts are plotted.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Callable

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from crawler.report.model import ALIVE, OUTCOMES, Report
from crawler.report.text import pair_label, run_label

WIDE, TALL = (9.0, 3.6), (9.0, 4.4)
# ok in green; the other outcomes keep one colour each across every page (tab20 minus its greens).
_PALETTE = ["#d62728", "#ff9896", "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#9467bd", "#c5b0d5", "#8c564b",
            "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d", "#17becf", "#9edae5"]
OUTCOME_COLOURS = {ALIVE: "#2ca02c", "placeholder": "#ff7f0e"}
OUTCOME_COLOURS.update({word: colour for word, colour in zip(
    [w for w in OUTCOMES if w not in OUTCOME_COLOURS], [c for c in _PALETTE if c != "#ff7f0e"])})
DRIFT_COLOURS = {"near": "#1f77b4", "changed": "#d62728", "new": "#2ca02c", "unknown": "#7f7f7f"}


def to_svg(fig: Figure, title: str) -> str:
    """``fig`` as an inline ``<svg>`` element titled ``title`` (no prolog, metadata or URLs)."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "refwatch-report"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, count=1, flags=re.DOTALL)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    opening = text.index(">") + 1
    label = html.escape(title)
    return f'{text[:opening - 1]} role="img" aria-label="{label}">\n <title>{label}</title>{text[opening:]}'


def _figure(size: tuple[float, float] = WIDE) -> Figure:
    return Figure(figsize=size, layout="constrained")


def _style(ax: Axes) -> None:
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def alive_over_time(report: Report) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    days = [run.days for run in report.runs]
    alive = [run.alive_pct for run in report.runs]
    ax.plot(days, alive, marker="o", color=OUTCOME_COLOURS[ALIVE], label="alive (ok)")
    ax.plot(days, [run.outcome_pct["placeholder"] + run.alive_pct for run in report.runs], linestyle="--",
            color=OUTCOME_COLOURS["placeholder"], label="alive or placeholder")
    for x, y in zip(days, alive):
        ax.annotate(f"{y:.1f}%", (x, y), textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
    ax.margins(y=0.15)  # room for the value labels under the points
    ax.set_xlabel("days since the first run")
    ax.set_ylabel("% of references")
    ax.legend(loc="lower left", frameon=False)
    _style(ax)
    return to_svg(fig, "Alive references over time")


def outcome_mix(report: Report) -> str:
    fig = _figure(TALL)
    ax = fig.add_subplot()
    labels = _run_ticks(report)
    seen = [w for w in report.runs[0].outcomes if any(run.outcomes.get(w) for run in report.runs)]
    order = [ALIVE] + sorted((w for w in seen if w != ALIVE),
                             key=lambda w: -sum(run.outcomes.get(w, 0) for run in report.runs))
    bottom = [0.0] * len(report.runs)
    for word in order:
        heights = [run.outcome_pct.get(word, 0.0) for run in report.runs]
        ax.bar(labels, heights, bottom=bottom, label=word, color=OUTCOME_COLOURS.get(word, "#555555"))
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_ylabel("% of references")
    ax.set_ylim(0, 100)
    handles, names = ax.get_legend_handles_labels()  # reversed: the legend reads top-down like the stack
    ax.legend(handles[::-1], names[::-1], loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
    _style(ax)
    return to_svg(fig, "Outcome mix per run")


def _run_ticks(report: Report) -> list[str]:
    """Bar labels: '#N' and the date while they fit side by side, '#N' alone beyond (the tables say when)."""
    if len(report.runs) > 6:
        return [f"#{i + 1}" for i in range(len(report.runs))]
    return [run_label(i, run).replace(" ", "\n") for i, run in enumerate(report.runs)]


def survival_curve(report: Report) -> str:
    fig = _figure(TALL)
    ax = fig.add_subplot()
    points = report.survival.points
    ticks = [p.days for p in points]
    # the curve holds its last value a little past the last run, so the last drop reads as a step
    days = ticks + [ticks[-1] + max(1.0, 0.03 * (ticks[-1] - ticks[0]))]
    survival = [p.survival for p in points] + [points[-1].survival]
    errors = [p.std_error for p in points] + [points[-1].std_error]
    low = [max(0.0, s - 1.96 * e) for s, e in zip(survival, errors)]
    high = [min(1.0, s + 1.96 * e) for s, e in zip(survival, errors)]
    ax.fill_between(days, low, high, step="post", alpha=0.25, color="#1f77b4", label="95% interval (Greenwood)")
    ax.step(days, survival, where="post", color="#1f77b4", label="share still alive")
    ax.set_xticks(ticks, [f"{d:g}\n{p.at_risk:,}" for d, p in zip(ticks, points)], fontsize=8)
    ax.set_xlabel("days since the first run (second line: references at risk)")
    ax.set_ylabel("survival")
    ax.set_ylim(max(0.0, min(low) - 0.05), 1.005)
    ax.legend(loc="lower left", frameon=False)
    _style(ax)
    return to_svg(fig, "Survival of references (Kaplan-Meier)")


def domains_losing_most(report: Report) -> str | None:
    losses = report.domain_losses.by_absolute
    if not losses:
        return None
    fig = _figure((9.0, 0.9 + 0.32 * len(losses)))
    ax = fig.add_subplot()
    names = [d.domain for d in losses][::-1]
    values = [d.loss for d in losses][::-1]
    bars = ax.barh(names, values, color="#d62728")
    ax.bar_label(bars, [f"{d.loss:,} ({d.loss_pct:.1f}%)" for d in losses][::-1], padding=3, fontsize=8)
    ax.set_xlabel("alive references lost, first run → last (share of the domain's alive references)")
    ax.margins(x=0.2)
    ax.spines[["top", "right"]].set_visible(False)
    return to_svg(fig, "Domains losing most alive references")


def drift_over_time(report: Report) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    days = [run.days for run in report.runs]
    for word, colour in DRIFT_COLOURS.items():
        share = [100.0 * run.drift[word] / run.alive if run.alive else 0.0 for run in report.runs]
        ax.plot(days, share, marker="o", color=colour, label=word)
    ax.set_xlabel("days since the first run")
    ax.set_ylabel("% of alive references")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title="drift ('same': the rest)")
    _style(ax)
    return to_svg(fig, "Drift over time")


def transitions_per_pair(report: Report) -> str | None:
    if not report.transitions:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    labels = [pair_label(report, t) for t in report.transitions]
    positions = range(len(labels))
    series = (("alive→dead", "alive_to_dead", "#d62728"), ("dead→alive", "dead_to_alive", "#2ca02c"),
              ("alive→changed", "alive_to_changed", "#1f77b4"))
    for offset, (label, field, colour) in zip((-0.27, 0.0, 0.27), series):
        ax.bar([p + offset for p in positions], [getattr(t, field) for t in report.transitions], width=0.27,
               label=label, color=colour)
    ax.set_xticks(list(positions), labels)
    ax.set_ylabel("references")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _style(ax)
    return to_svg(fig, "Transitions between consecutive runs")


PLOTS: tuple[tuple[str, Callable[[Report], str | None]], ...] = (
    ("alive", alive_over_time),
    ("outcomes", outcome_mix),
    ("survival", survival_curve),
    ("domains", domains_losing_most),
    ("drift", drift_over_time),
    ("transitions", transitions_per_pair),
)
