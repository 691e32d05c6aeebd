"""PNG figures of curves, drawn with matplotlib's Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

Curve = tuple[Sequence[float], Sequence[float]]  # (x values, y values), equal lengths


def plot_panels(path: str | os.PathLike, panels: Mapping[str, Mapping[str, Curve]], *,
                xlabel: str, ylabel: str, logy: bool = False, floor: float = 1e-16) -> None:
    """Write one panel per entry of ``panels`` (title → {label: (x, y)}) side by side as a PNG.

    With ``logy`` the y axis is logarithmic and values below ``floor`` are drawn at ``floor``.
    """
    # Imported here: matplotlib takes about a second to import and most callers never plot.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(len(panels), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    width, height = 4.5 * cols, 3.6 * rows  # inches
    fig = Figure(figsize=(width, height))
    # Fixed margins in inches: a layout engine would cost about a second per figure.
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.15 / width, bottom=0.6 / height,
                        top=1 - 0.4 / height, wspace=0.3, hspace=0.5)
    FigureCanvasAgg(fig)
    for i, (title, curves) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for label, (xs, ys) in curves.items():
            ys = [max(float(y), floor) for y in ys] if logy else list(ys)
            ax.plot(list(xs), ys, label=label, linewidth=1.4)
        if logy:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, format="png", dpi=110)
