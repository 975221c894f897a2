"""Live ipywidgets views: the four-panel `Dashboard` of a queue, and `StressView`, a per-wave table.

One asyncio ticker per view, on the kernel's loop, refreshes the widgets a few times a second and
sends only what changed: never one update per request, so a flood of traffic cannot flood the
frontend. When a view stops, its output is replaced by a static HTML snapshot of its final state,
so a saved notebook shows it to a reader who has no live kernel (on GitHub, say).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import html
import math
import time
import weakref
from typing import Any

from queuelab.engine.request_queue import RequestQueue
from queuelab.load.progress import WaveTally
from queuelab.metrics import format_number, format_seconds
from queuelab.observe import panels

try:
    import ipywidgets as widgets
    from IPython.display import HTML, display
except ImportError as e:  # pragma: no cover - the notebook extra is missing
    raise ImportError("the dashboard needs the notebook extra: pip install 'queuelab[notebook]' (make lab does it)") from e

# Inline styles, not a <style> block: JupyterLab drops <style> from the outputs of an untrusted
# notebook (every saved notebook opened anew), and its own table rules (right-aligned, zebra rows)
# win over class selectors but not over inline styles. So the live panels and the saved snapshot
# look the same, trusted or not.
STYLE = {
    "panel": ("font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;color:#1f2328;"
              "border:1px solid #d0d7de;border-radius:6px;padding:6px 10px;min-width:260px;max-width:100%;"
              "box-sizing:border-box;background:#fafbfc;overflow:hidden"),
    "title": "margin:0 0 4px 0;font-size:13px;font-weight:bold",
    "table": "border-collapse:collapse;margin:0;border:none",
    "row": "background:transparent;border:none",
    "cell": "padding:0 8px 0 0;text-align:left;white-space:nowrap;line-height:1.35;border:none;background:transparent",
    # A cell's text stops at its column: a long prompt ends in "…" instead of widening the panel.
    "clip": "max-width:36ch;overflow:hidden;text-overflow:ellipsis;white-space:nowrap",
    "big": "font-size:15px;font-weight:bold", "ok": "color:#1a7f37", "bad": "color:#cf222e",
}


def _cell(content: str, *, tag: str = "td", style: str = "") -> str:
    inner = f'<div style="{STYLE["clip"]}">{content}</div>' if tag == "td" else content
    return f'<{tag} style="{STYLE["cell"]};{style}">{inner}</{tag}>'


def _rows(rows: list[list[str]], head: list[str] | None = None) -> str:
    """A table of cells already rendered with `_cell`."""
    trs = ([f'<tr style="{STYLE["row"]}">' + "".join(_cell(h, tag="th") for h in head) + "</tr>"] if head else [])
    trs += [f'<tr style="{STYLE["row"]}">' + "".join(r) + "</tr>" for r in rows]
    return f'<table style="{STYLE["table"]}">' + "".join(trs) + "</table>"


def _span(text: str, style: str) -> str:
    return f'<span style="{STYLE[style]}">{text}</span>'


def _table(rows: list[tuple[str, str]]) -> str:
    cells = []
    for label, text in rows:
        value = html.escape(text)
        if label in ("Queue size", "Processing"):
            value = _span(value, "big")
        elif label == "Worker alive" and text in ("yes", "no"):
            value = _span(value, "ok" if text == "yes" else "bad")
        elif label == "Error":
            value = _span(value, "bad")
        cells.append([_cell(html.escape(label)), _cell(value)])
    return _rows(cells)


def _panel(title: str, body: str) -> str:
    return f'<div style="{STYLE["panel"]}"><div style="{STYLE["title"]}">{html.escape(title)}</div>{body}</div>'


def recent_table(s: dict[str, Any]) -> str:
    rows = panels.recent_rows(s)
    if not rows:
        return "<i>none yet</i>"
    return _rows([[_cell(r["id"]), _cell(r["status"], style=STYLE["ok" if r["status"] == "completed" else "bad"]),
                   _cell(r["wait"]), _cell(r["e2e"]), _cell(r["tokens"]), _cell(html.escape(r["preview"]))]
                  for r in rows], head=["#", "status", "wait", "e2e", "tok", "answer / error"])


def panel_html(s: dict[str, Any]) -> dict[str, str]:
    """The four panels of a `QueueStats.as_dict()` snapshot, as HTML."""
    active = panels.active_rows(s)
    return {"stats": _panel("Queue statistics", _table(panels.stats_rows(s))),
            "active": _panel("Active request", _table(active) if active else "<i>idle: nothing is processing</i>"),
            "recent": _panel("Recent completions", recent_table(s)),
            "health": _panel("Health", _table(panels.health_rows(s)))}


def _img_tag(png: bytes) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}"/>' if png else ""


class _LiveView:
    """Shared mechanics: one ticker task, change-only widget updates, a static snapshot at the end."""

    interval: float
    _views: weakref.WeakSet[_LiveView] = weakref.WeakSet()

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._handle: Any = None
        self.updates = 0  # widget trait changes sent to the frontend, for tests and the curious
        self.stopped = False

    def _set(self, widget: Any, **values: Any) -> None:
        changed = {k: v for k, v in values.items() if getattr(widget, k) != v}
        if changed:
            with widget.hold_sync():  # one comm message per widget per tick
                for k, v in changed.items():
                    setattr(widget, k, v)
            self.updates += 1

    def _start(self, root: Any) -> None:
        for other in list(_LiveView._views):  # re-running a cell: the old view on the same source stops
            if other is not self and other._same_source(self):
                other.stop()
        _LiveView._views.add(self)
        self._handle = display(root, display_id=True)
        self._task = asyncio.get_event_loop().create_task(self._tick())

    def _same_source(self, other: _LiveView) -> bool:
        return False

    async def _tick(self) -> None:
        try:
            while not self.stopped:
                await self.refresh()
                if self._finished():
                    break
                await asyncio.sleep(self.interval)
        finally:
            if not self.stopped:
                self._finish_static()

    def _finished(self) -> bool:
        return False

    async def refresh(self) -> None:
        raise NotImplementedError

    def final_refresh(self) -> None:
        """Bring the view up to date synchronously, just before the snapshot."""

    def snapshot_html(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the ticker and leave a static snapshot of the final state in the output.

        Calling it again re-publishes the snapshot: end a notebook with it, so the saved file shows it.
        """
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._finish_static()

    def _finish_static(self) -> None:
        self.stopped = True
        _LiveView._views.discard(self)
        self.final_refresh()
        if self._handle is not None:
            snapshot = HTML(self.snapshot_html())
            # Published from an empty context: ipykernel then attributes it to the cell running now,
            # not to the (long finished) cell whose context the ticker task inherited. A headless
            # executor (nbclient, nbval) only records output attributed to the running cell.
            contextvars.Context().run(self._handle.update, snapshot)


class Dashboard(_LiveView):
    """Four live panels (statistics, active request, recent completions, health) and a live plot.

    `Dashboard(queue).show()` in one cell; run requests or a stress experiment in the next. It stops
    by itself when the queue stops, or with `dashboard.stop()`.
    """

    def __init__(self, queue: RequestQueue, *, interval: float = 0.5, plot_interval: float = 1.0,
                 plot_window_s: float = 120.0, plot: bool = True) -> None:
        super().__init__()
        if not 0.1 <= interval <= 10:
            raise ValueError(f"interval must be between 0.1 and 10 seconds, got {interval}")
        self.queue, self.interval, self.plot_interval, self.plot_window_s = queue, interval, plot_interval, plot_window_s
        self.panels = {k: widgets.HTML() for k in ("stats", "active", "recent", "health")}
        self.plot = widgets.HTML() if plot else None
        self._png = b""
        self._last_plot = -math.inf
        grid = widgets.GridBox(list(self.panels.values()),
                               layout=widgets.Layout(grid_template_columns="repeat(2, minmax(0, 1fr))",
                                                     grid_gap="6px"))
        self.root = widgets.VBox([grid] + ([self.plot] if self.plot is not None else []))

    def show(self) -> Dashboard:
        self._start(self.root)
        return self

    def _same_source(self, other: _LiveView) -> bool:
        return isinstance(other, Dashboard) and other.queue is self.queue

    def _finished(self) -> bool:
        return self.queue.state in ("stopped", "broken")

    def _update_panels(self) -> None:
        for key, value in panel_html(self.queue.stats().as_dict()).items():
            self._set(self.panels[key], value=value)

    async def refresh(self) -> None:
        self._update_panels()
        now = time.perf_counter()
        if self.plot is not None and now - self._last_plot >= self.plot_interval:
            self._last_plot = now
            self._set(self.plot, value=live_plot_html(self.queue.timeline(self.plot_window_s)))

    def final_refresh(self) -> None:
        self._update_panels()
        tl = self.queue.timeline(self.plot_window_s)
        if self.plot is not None and len(tl) >= 2:
            self._set(self.plot, value=live_plot_html(tl))
            self._png = _render_timeline(tl)  # once, for the static snapshot

    def snapshot_html(self) -> str:
        boxes = "".join(f'<div style="display:inline-block;vertical-align:top;margin:3px">{p}</div>'
                        for p in panel_html(self.queue.stats().as_dict()).values())
        return f"<div>{boxes}</div>{_img_tag(self._png)}"


def _render_timeline(tl: Any) -> bytes:
    """The full-quality timeline figure, for the static snapshot (drawn once, when the view stops)."""
    from queuelab.observe import plots

    return plots.to_png(plots.timeline(tl, size=(8, 3.6)), dpi=72)


def svg_chart(x: Any, series: list[tuple[Any, str, str]], *, title: str, width: int = 360, height: int = 130,
              step: bool = False) -> str:
    """A tiny SVG line chart. The browser draws it, so a live update costs the kernel well under a
    millisecond (a matplotlib PNG costs ~100 ms, with the GIL held: event-loop lag for everyone)."""
    pad_l, pad_b, pad_t = 34, 16, 28
    w, h = width - pad_l - 6, height - pad_b - pad_t
    x = [float(v) for v in x]
    x0, x1 = (x[0], x[-1]) if len(x) > 1 and x[-1] > x[0] else (0.0, 1.0)
    top = max([1.0] + [float(v) for ys, _, _ in series for v in ys])
    sx = lambda v: pad_l + (v - x0) / (x1 - x0) * w  # noqa: E731
    sy = lambda v: pad_t + h - float(v) / top * h  # noqa: E731
    lines, legend = [], []
    for i, (ys, colour, label) in enumerate(series):
        ys = list(ys)
        pts: list[str] = []
        for j, (xv, yv) in enumerate(zip(x, ys)):
            if step and j:
                pts.append(f"{sx(xv):.1f},{sy(ys[j - 1]):.1f}")
            pts.append(f"{sx(xv):.1f},{sy(yv):.1f}")
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(pts)}"/>')
        legend.append(f'<text x="{pad_l + 4 + 90 * i}" y="{pad_t - 5}" fill="{colour}" font-size="10">{html.escape(label)}</text>')
    axes = (f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#888"/>'
            f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" stroke="#888"/>'
            f'<text x="{pad_l - 4}" y="{pad_t + 8}" font-size="10" text-anchor="end">{top:.3g}</text>'
            f'<text x="{pad_l - 4}" y="{pad_t + h}" font-size="10" text-anchor="end">0</text>'
            f'<text x="{pad_l}" y="{height - 3}" font-size="10">{x0 - x1:.0f} s</text>'
            f'<text x="{pad_l + w}" y="{height - 3}" font-size="10" text-anchor="end">now</text>'
            f'<text x="{pad_l + w / 2}" y="11" font-size="11" text-anchor="middle">{html.escape(title)}</text>')
    return f'<svg width="{width}" height="{height}" style="font-family:sans-serif">{axes}{"".join(lines)}{"".join(legend)}</svg>'


def live_plot_html(tl: Any) -> str:
    """Queue depth and processing, and throughput, over the timeline window, as two SVG charts."""
    if len(tl) < 2:
        return "<i>collecting samples…</i>"
    x = tl.t.to_numpy()
    depth = svg_chart(x, [(tl.queue_depth, "#4c72b0", "queue depth"), (tl.processing, "#c44e52", "processing (batch size)")],
                      title="queue depth and processing", step=True)
    rate = svg_chart(x, [(tl.req_per_s, "#55a868", "req/s")], title="completed requests / s (sliding window)")
    return f"<div>{depth}{rate}</div>"


class _HTMLView(_LiveView):
    """A view that is one HTML widget, redrawn from `_html()` until `closed`; its snapshot is the same HTML."""

    widget: Any
    closed: bool

    def _html(self) -> str:
        raise NotImplementedError

    async def refresh(self) -> None:
        self.final_refresh()

    def final_refresh(self) -> None:
        self._set(self.widget, value=self._html())

    def _finished(self) -> bool:
        return self.closed

    def snapshot_html(self) -> str:
        return self._html()


class StressView(_HTMLView, WaveTally):
    """A live per-wave table for a stress experiment: pass it as `progress=`.

        view = ql.StressView()
        run = await ql.stress.incremental(queue, waves=[10, 20], progress=view)
    """

    def __init__(self, *, interval: float = 0.25) -> None:
        _LiveView.__init__(self)
        WaveTally.__init__(self)
        self.interval = interval
        self.table = self.widget = widgets.HTML()

    def show(self) -> StressView:
        self.table.value = _panel(self.title, "<i>waiting for the experiment to start</i>")
        self._start(self.table)
        return self

    def start(self, total: int | None, desc: str) -> None:
        WaveTally.start(self, total, desc)
        if self._task is None:
            self.show()

    def close(self) -> None:
        WaveTally.close(self)
        self.stop()  # synchronously, inside the experiment's cell: its output keeps the final table

    def _html(self) -> str:
        body = [[_cell(str(r["wave"])), _cell(str(r["sent"])), _cell(str(r["done"])),
                 _cell(format_number(r["success_rate"], ".0%")), _cell(format_number(r["req_per_s"], ".2f")),
                 _cell(format_seconds(r["e2e_p50"])), _cell(format_seconds(r["e2e_p99"]))] for r in self.rows()]
        total = f" of {self.total}" if self.total else ""
        state = "finished" if self.closed else "running"
        return _panel(f"{self.title}: {self.done_count}{total} requests done ({state})",
                      _rows(body, head=["wave", "sent", "done", "success", "req/s", "e2e p50", "e2e p99"]))



class ProgressBar(_HTMLView):
    """`progress=True` in a notebook: a bar that moves while the experiment runs and is saved at its
    final count. (A tqdm widget is saved as its text fallback, written when it was created: "0%".)"""

    def __init__(self, *, interval: float = 0.25) -> None:
        super().__init__()
        self.interval = interval
        self.total: int | None = None
        self.desc, self.n, self.closed = "", 0, False
        self._t0 = time.perf_counter()
        self.html = self.widget = widgets.HTML()

    # -- the Progress protocol ----------------------------------------------------------------------
    def start(self, total: int | None, desc: str) -> None:
        self.total, self.desc, self.n, self.closed, self._t0 = total, desc, 0, False, time.perf_counter()
        self.html.value = self._html()
        self._start(self.html)

    def sent(self, req: Any, wave: int) -> None:
        pass

    def done(self, req: Any) -> None:
        self.n += 1

    def close(self) -> None:
        self.closed = True
        self.stop()  # synchronously, inside the experiment's cell: its output keeps the final bar

    def _html(self) -> str:
        elapsed = time.perf_counter() - self._t0
        share = self.n / self.total if self.total else None
        rate = f"{self.n / elapsed:.2f} req/s" if elapsed > 0 and self.n else "? req/s"
        count = f"{self.n}/{self.total} ({share:.0%})" if share is not None else f"{self.n}"
        bar = (f'<div style="display:inline-block;width:240px;height:10px;background:#e6e8eb;border-radius:3px;'
               f'vertical-align:middle;margin:0 8px"><div style="width:{100 * (share or 0):.1f}%;height:100%;'
               f'background:#1a7f37;border-radius:3px"></div></div>')
        return (f'<div style="font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px">'
                f'{html.escape(self.desc)}{bar}{count} · {elapsed:.1f} s · {rate}</div>')
