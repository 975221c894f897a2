"""`progress=True` in a notebook: the widget bar, where a Jupyter kernel with ipywidgets runs."""

from __future__ import annotations

from queuelab.load.progress import Progress


def notebook_bar() -> Progress | None:
    """The dashboard's `ProgressBar` in a Jupyter kernel with ipywidgets; None elsewhere."""
    try:
        from IPython import get_ipython

        if type(get_ipython()).__name__ != "ZMQInteractiveShell":
            return None
        # Imported only here: ipywidgets is the optional notebook extra.
        from queuelab.observe.dashboard import ProgressBar
    except ImportError:
        return None
    return ProgressBar()
