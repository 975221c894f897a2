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
import io
import math
import time
import weakref
from typing import Any

from .metrics import QueueStats, percentiles
from .request import Request, RequestStatus
from .request_queue import RequestQueue

try:
    import ipywidgets as widgets
    from IPython.display import HTML, display
except ImportError as e:  # pragma: no cover - the notebook extra is missing
    raise ImportError("the dashboard needs the notebook extra: pip install 'queuelab[notebook]' (make lab does it)") from e

CSS = """<style>
.ql-panel{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;border:1px solid #d0d7de;
 border-radius:6px;padding:6px 10px;min-width:260px;background:#fafbfc}
.ql-panel h4{margin:0 0 4px 0;font-size:13px}
.ql-panel table{border-collapse:collapse;margin:0}
.ql-panel td,.ql-panel th{padding:0 8px 0 0;text-align:left;white-space:nowrap;line-height:1.35;border:none}
.ql-big{font-size:15px;font-weight:bold}.ql-ok{color:#1a7f37}.ql-bad{color:#cf222e}
</style>"""


def _fmt(x: float, spec: str) -> str:
    return "–" if x is None or math.isnan(x) else format(x, spec)


def _fmt_s(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x * 1e3:.0f} ms" if x < 1 else f"{x:.2f} s"


def _table(rows: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _panel(title: str, body: str) -> str:
    return f'<div class="ql-panel"><h4>{html.escape(title)}</h4>{body}</div>'


def _uptime(s: float) -> str:
    s = int(s)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def stats_panel(s: QueueStats) -> str:
    e2e = s.latency["e2e"]
    return _panel("Queue statistics", _table([
        ("Uptime", _uptime(s.uptime_s)),
        ("Queue size", f'<span class="ql-big">{s.queue_size}</span>'),
        ("Processing", f'<span class="ql-big">{s.processing}</span>'),
        ("Submitted", s.submitted), ("Completed", s.completed), ("Failed", s.failed),
        ("Cancelled", s.cancelled), ("Rejected", s.rejected),
        (f"Req/s ({s.window_s:.0f} s)", f"{s.req_per_s:.2f}"),
        (f"Tokens/s ({s.window_s:.0f} s)", f"{s.tokens_per_s:.1f}"),
        ("e2e p50 / p99", f"{_fmt_s(e2e.p50)} / {_fmt_s(e2e.p99)}"),
    ]))


def active_panel(s: QueueStats) -> str:
    if not s.active:
        return _panel("Active request", "<i>idle: nothing is processing</i>")
    a = s.active[0]
    return _panel("Active request", _table([
        ("Request", f"#{a.id}"), ("Prompt", html.escape(a.prompt_preview)),
        ("Elapsed", f"{a.elapsed_s:.1f} s"), ("Tokens so far", a.tokens),
    ]))


def recent_panel(s: QueueStats, n: int = 10) -> str:
    if not s.recent:
        return _panel("Recent completions", "<i>none yet</i>")
    head = "<tr><th>#</th><th>status</th><th>wait</th><th>e2e</th><th>tok</th><th>answer / error</th></tr>"
    rows = "".join(
        f"<tr><td>{r.id}</td><td class=\"{'ql-ok' if r.status == 'completed' else 'ql-bad'}\">{r.status}</td>"
        f"<td>{_fmt_s(r.wait)}</td><td>{_fmt_s(r.e2e)}</td><td>{r.tokens}</td><td>{html.escape(r.preview[:40])}</td></tr>"
        for r in s.recent[:n])
    return _panel("Recent completions", f"<table>{head}{rows}</table>")


def health_panel(s: QueueStats) -> str:
    h, m = s.health, s.health.model
    alive = ('<span class="ql-ok">yes</span>' if h.worker_alive
             else '<span class="ql-bad">no</span>' if h.state == "broken" else "no (queue stopped)")
    rows = [("Model", html.escape(str(m.get("name", "?")))), ("Parameters", f"{m.get('parameters', 0):,}"),
            ("Device / dtype", f"{m.get('device', '?')} / {m.get('dtype', '?')}"),
            ("Memory", f"{m.get('memory_bytes', 0) / 1e6:.0f} MB"), ("Worker alive", alive),
            ("Event-loop lag", _fmt_s(h.loop_lag_s)), ("Queue state", h.state)]
    if h.error:
        rows.append(("Error", f'<span class="ql-bad">{html.escape(h.error)}</span>'))
    return _panel("Health", _table(rows))


def _png(fig: Any, dpi: int = 72) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


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
            snapshot = HTML(CSS + self.snapshot_html())
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
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="760px")) if plot else None
        self._png = b""
        self._last_plot = -math.inf
        grid = widgets.GridBox(list(self.panels.values()),
                               layout=widgets.Layout(grid_template_columns="repeat(2, minmax(280px, 1fr))",
                                                     grid_gap="6px"))
        self.root = widgets.VBox([widgets.HTML(CSS), grid] + ([self.image] if self.image is not None else []))

    def show(self) -> Dashboard:
        self._start(self.root)
        return self

    def _same_source(self, other: _LiveView) -> bool:
        return isinstance(other, Dashboard) and other.queue is self.queue

    def _finished(self) -> bool:
        return self.queue.state in ("stopped", "broken")

    def _panel_html(self, s: QueueStats) -> dict[str, str]:
        return {"stats": stats_panel(s), "active": active_panel(s), "recent": recent_panel(s), "health": health_panel(s)}

    async def refresh(self) -> None:
        s = self.queue.stats()
        for key, value in self._panel_html(s).items():
            self._set(self.panels[key], value=value)
        now = time.perf_counter()
        if self.image is not None and (now - self._last_plot >= self.plot_interval or self._finished()):
            self._last_plot = now
            tl = self.queue.timeline()
            if len(tl) >= 2:
                tl = tl[tl.t >= tl.t.iloc[-1] - self.plot_window_s]
                # Rendering takes tens of ms: do it in a thread so the loop (and the queue) keep going.
                self._png = await asyncio.to_thread(_render_timeline, tl)
                self._set(self.image, value=self._png)

    def final_refresh(self) -> None:
        s = self.queue.stats()
        for key, value in self._panel_html(s).items():
            self._set(self.panels[key], value=value)
        tl = self.queue.timeline()
        if self.image is not None and len(tl) >= 2:
            self._png = _render_timeline(tl[tl.t >= tl.t.iloc[-1] - self.plot_window_s])
            self._set(self.image, value=self._png)

    def snapshot_html(self) -> str:
        s = self.queue.stats()
        panels = "".join(f'<div style="display:inline-block;vertical-align:top;margin:3px">{p}</div>'
                         for p in self._panel_html(s).values())
        return f"<div>{panels}</div>{_img_tag(self._png)}"


def _render_timeline(tl: Any) -> bytes:
    from . import plots

    return _png(plots.timeline(tl, size=(8, 3.6)))


class StressView(_LiveView):
    """A live per-wave table for a stress experiment: pass it as `progress=`.

        view = ql.StressView().show()
        run = await ql.stress.incremental(queue, waves=[10, 20], progress=view)
    """

    def __init__(self, *, interval: float = 0.25) -> None:
        super().__init__()
        self.interval = interval
        self.table = widgets.HTML()
        self.title = "stress run"
        self.total: int | None = None
        self.waves: dict[int, dict[str, Any]] = {}
        self._wave_of: dict[Request, int] = {}
        self._closed = False

    def show(self) -> StressView:
        self.table.value = CSS + _panel(self.title, "<i>waiting for the experiment to start</i>")
        self._start(self.table)
        return self

    # -- the Progress protocol (called by the experiment, on the loop) -------------------------------
    def start(self, total: int | None, desc: str) -> None:
        self.title, self.total, self.waves, self._wave_of, self._closed = desc, total, {}, {}, False
        if self._task is None:
            self.show()

    def sent(self, req: Request, wave: int) -> None:
        w = self.waves.setdefault(wave, {"sent": 0, "completed": 0, "failed": 0, "first": req.arrived,
                                         "last": None, "e2e": []})
        w["sent"] += 1
        self._wave_of[req] = wave

    def done(self, req: Request) -> None:
        w = self.waves[self._wave_of.pop(req)]
        ok = req.status is RequestStatus.COMPLETED
        w["completed" if ok else "failed"] += 1
        w["last"] = req.finished
        if ok and req.e2e is not None:
            w["e2e"].append(req.e2e)

    def close(self) -> None:
        self._closed = True
        self.stop()  # synchronously, inside the experiment's cell: its output keeps the final table

    # -- rendering ------------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        out = []
        for k in sorted(self.waves):
            w = self.waves[k]
            done = w["completed"] + w["failed"]
            span = (w["last"] - w["first"]) if w["last"] else math.nan
            p = percentiles(w["e2e"])
            out.append({"wave": k, "sent": w["sent"], "done": done, "completed": w["completed"],
                        "success_rate": w["completed"] / done if done else math.nan,
                        "req_per_s": w["completed"] / span if span and span > 0 else math.nan,
                        "e2e_p50": p.p50, "e2e_p99": p.p99})
        return out

    def _html(self) -> str:
        rows = self.rows()
        head = ("<tr><th>wave</th><th>sent</th><th>done</th><th>success</th><th>req/s</th>"
                "<th>e2e p50</th><th>e2e p99</th></tr>")
        body = "".join(
            f"<tr><td>{r['wave']}</td><td>{r['sent']}</td><td>{r['done']}</td><td>{_fmt(r['success_rate'], '.0%')}</td>"
            f"<td>{_fmt(r['req_per_s'], '.2f')}</td><td>{_fmt_s(r['e2e_p50'])}</td><td>{_fmt_s(r['e2e_p99'])}</td></tr>"
            for r in rows)
        done = sum(r["done"] for r in rows)
        total = f" of {self.total}" if self.total else ""
        state = "finished" if self._closed else "running"
        return _panel(f"{self.title}: {done}{total} requests done ({state})", f"<table>{head}{body}</table>")

    async def refresh(self) -> None:
        self.final_refresh()

    def final_refresh(self) -> None:
        self._set(self.table, value=CSS + self._html())

    def _finished(self) -> bool:
        return self._closed

    def snapshot_html(self) -> str:
        return self._html()
