"""matplotlib, imported on first use, drawing on the headless Agg backend.

Charts are files, never windows. Each figure gets its own Agg canvas instead of going through
``pyplot``: that needs no display (servers, CI, the test suite), keeps no global figure state
(safe from threads, nothing to close), and leaves the backend of a user's own session alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from refground.errors import MissingDependencyError


def new_figure(width: float, height: float) -> Any:
    """A ``matplotlib.figure.Figure`` (inches) on an Agg canvas; MissingDependencyError when
    matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError(
            "charts need matplotlib: pip install 'refground[viz]'") from exc
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Any, path: Path, dpi: int = 120) -> Path:
    """Write ``figure`` as PNG (parent directories created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=dpi)
    return path
