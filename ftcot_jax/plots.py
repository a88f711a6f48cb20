"""Figures without a display: matplotlib's headless backend, and one way to save a figure.

Every plot of the project (the run report's, the comparisons') is drawn on `pyplot()` and written by
`save_figure`: laid out, rendered to PNG and written atomically, to a local path or a `gs://` store alike.
matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import io

from ftcot_jax.files import write_bytes_atomic
from ftcot_jax.paths import AnyPath

DPI = 110


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | AnyPath) -> AnyPath:
    """Lay out `fig`, write it to `path` as a PNG (atomically; one object on a store) and close it."""
    plt = pyplot()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())
