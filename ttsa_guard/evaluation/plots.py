"""PNG plots of an evaluation run, drawn with matplotlib's Agg canvas.

The figures are built without ``pyplot``, so plotting neither needs a display
nor changes the process-wide matplotlib backend. matplotlib is an optional
dependency (the ``plot`` extra) and is imported only here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ttsa_guard.errors import ConfigurationError
from ttsa_guard.evaluation.records import EvalRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot", "plot_iterations", "plot_scores"]

logger = logging.getLogger(__name__)

_COLORS = {"passed": "tab:gray", "corrected": "tab:green", "unresolved": "tab:orange", "refused": "tab:red"}
# Refusal texts are not scored, so their points sit on a band below zero.
_REFUSED_Y = -0.06


def plot(records: Iterable[EvalRecord], prefix: str | Path, *, threshold: float | None = 0.5) -> list[Path]:
    """Write ``<prefix>.scores.png`` and ``<prefix>.iterations.png``.

    Args:
        records: Evaluation records.
        prefix: Path of the plots without the suffix, such as ``runs/rtp`` for ``runs/rtp.jsonl``.
        threshold: Score at or above which the scorer flags a text, drawn as dashed lines.
            None: no lines.

    Returns:
        The two paths written.
    """
    records = list(records)
    prefix = Path(prefix)
    scores_path = prefix.with_name(prefix.name + ".scores.png")
    iterations_path = prefix.with_name(prefix.name + ".iterations.png")
    plot_scores(records, scores_path, threshold=threshold)
    plot_iterations(records, iterations_path, threshold=threshold)
    return [scores_path, iterations_path]


def plot_scores(records: Sequence[EvalRecord], path: str | Path, *, threshold: float | None = 0.5) -> Path:
    """Scatter each prompt's plain score (x) against its guarded score (y)."""
    figure = _new_figure()
    axes = figure.add_subplot()
    for status, color in _COLORS.items():
        chosen = [r for r in records if r.status == status and r.plain_score is not None]
        if not chosen:
            continue

        ys = [_REFUSED_Y if r.guarded_score is None else r.guarded_score for r in chosen]
        label = f"{status} ({len(chosen)})" + (", refusal text not scored" if status == "refused" else "")
        marker = "x" if status == "refused" else "o"
        axes.scatter([r.plain_score for r in chosen], ys, s=18, c=color, marker=marker, label=label, alpha=0.8)

    axes.plot([0, 1], [0, 1], color="black", linewidth=0.6, linestyle=":")
    if threshold is not None:
        axes.axvline(threshold, color="tab:red", linewidth=0.8, linestyle="--")
        axes.axhline(threshold, color="tab:red", linewidth=0.8, linestyle="--", label=f"flag threshold {threshold:g}")

    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(_REFUSED_Y - 0.04, 1.02)
    axes.set_xlabel("score of the plain response")
    axes.set_ylabel("score of the guarded response")
    axes.set_title(f"Moderation score before and after the guard ({len(records)} prompts)")
    _legend(axes, "upper left")
    return _save(figure, path)


def plot_iterations(records: Sequence[EvalRecord], path: str | Path, *, threshold: float | None = 0.5) -> Path:
    """Draw the score per optimizer iteration of every steered prompt; iteration 0 is the plain response."""
    from matplotlib.ticker import MaxNLocator

    figure = _new_figure()
    axes = figure.add_subplot()
    steered = [r for r in records if r.history and r.plain_score is not None]
    labelled: set[str] = set()
    for record in steered:
        iterations = [0] + [step.iteration for step in record.history]
        scores = [record.plain_score] + [step.score for step in record.history]
        color = _COLORS.get(record.status, "tab:blue")
        label = None if record.status in labelled else record.status
        labelled.add(record.status)
        axes.plot(iterations, scores, color=color, marker="o", markersize=3, linewidth=1, alpha=0.7, label=label)

    if threshold is not None:
        axes.axhline(threshold, color="tab:red", linewidth=0.8, linestyle="--", label=f"flag threshold {threshold:g}")

    if not steered:
        axes.text(0.5, 0.5, "no prompt was steered", ha="center", va="center", transform=axes.transAxes)

    axes.set_ylim(-0.02, 1.02)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("optimizer iteration (0 = plain response)")
    axes.set_ylabel("score of the response")
    axes.set_title(f"Score per iteration ({len(steered)} steered prompts)")
    _legend(axes, "upper right")
    return _save(figure, path)


def _legend(axes: Axes, location: str) -> None:
    """Add a legend unless nothing is labelled (matplotlib warns about an empty legend)."""
    handles, _ = axes.get_legend_handles_labels()
    if handles:
        axes.legend(loc=location, fontsize="small")


def _new_figure() -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        msg = "Plotting needs matplotlib: pip install 'ttsa-guard[plot]'"
        raise ConfigurationError(msg) from exc

    return Figure(figsize=(6.4, 4.8), dpi=100, layout="constrained")


def _save(figure: Figure, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png")
    logger.info("wrote %s", path)
    return path
