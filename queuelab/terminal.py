"""Rich renderings for the terminal: the four-panel monitor and the live table of waves."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from .progress import WaveTally


def _s(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x * 1e3:.0f} ms" if x < 1 else f"{x:.2f} s"


def _kv(rows: list[tuple[str, Any]]) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows:
        t.add_row(k, str(v))
    return t


def monitor_view(s: dict[str, Any], url: str) -> Group:
    """The seed lesson's four panels, from a server's /stats JSON."""
    up = int(s["uptime_s"])
    e2e = s["latency"]["e2e"]
    stats = _kv([("Uptime", f"{up // 3600:02d}:{up % 3600 // 60:02d}:{up % 60:02d}"),
                 ("Queue size", s["queue_size"]), ("Processing", s["processing"]),
                 ("Submitted", s["submitted"]), ("Completed", s["completed"]), ("Failed", s["failed"]),
                 ("Cancelled", s["cancelled"]), ("Rejected", s["rejected"]),
                 (f"Req/s ({s['window_s']:.0f} s)", f"{s['req_per_s']:.2f}"),
                 (f"Tokens/s ({s['window_s']:.0f} s)", f"{s['tokens_per_s']:.1f}"),
                 ("e2e p50 / p99", f"{_s(e2e['p50'])} / {_s(e2e['p99'])}")])
    if s["active"]:
        a = s["active"][0]
        active: Any = _kv([("Request", f"#{a['id']}"), ("Prompt", a["prompt_preview"]),
                           ("Elapsed", f"{a['elapsed_s']:.1f} s"), ("Tokens so far", a["tokens"])])
    else:
        active = "[dim]idle: nothing is processing[/dim]"
    recent = Table("#", "status", "wait", "e2e", "tok", "answer / error", box=None, padding=(0, 1))
    for r in s["recent"][:10]:
        colour = "green" if r["status"] == "completed" else "red"
        recent.add_row(str(r["id"]), f"[{colour}]{r['status']}[/{colour}]", _s(r["wait"]), _s(r["e2e"]),
                       str(r["tokens"]), r["preview"][:40])
    h, m = s["health"], s["health"]["model"]
    health = _kv([("Server", url), ("Model", m.get("name")), ("Parameters", f"{m.get('parameters', 0):,}"),
                  ("Device / dtype", f"{m.get('device')} / {m.get('dtype')}"),
                  ("Memory", f"{(m.get('memory_bytes') or 0) / 1e6:.0f} MB"),
                  ("Worker alive", "yes" if h["worker_alive"] else "NO"),
                  ("Event-loop lag", _s(h["loop_lag_s"])), ("Queue state", h["state"])])
    top, bottom = Table.grid(expand=True), Table.grid(expand=True)
    top.add_row(Panel(stats, title="Queue statistics"), Panel(active, title="Active request"))
    bottom.add_row(Panel(recent, title="Recent completions"), Panel(health, title="Health"))
    return Group(top, bottom)


class RichWaves(WaveTally):
    """A live terminal table of waves, filled in while a stress experiment runs (pass as progress=)."""

    def __init__(self, *, quiet: bool = False) -> None:
        super().__init__()
        self.quiet = quiet
        self.live: Live | None = None

    def table(self) -> Table:
        t = Table("wave", "sent", "done", "success", "req/s", "e2e p50", "e2e p99",
                  title=f"{self.title}: {self.done_count}{f' of {self.total}' if self.total else ''} done")
        for r in self.rows():
            t.add_row(str(r["wave"]), str(r["sent"]), str(r["done"]),
                      "–" if math.isnan(r["success_rate"]) else f"{r['success_rate']:.0%}",
                      "–" if math.isnan(r["req_per_s"]) else f"{r['req_per_s']:.2f}",
                      _s(r["e2e_p50"]), _s(r["e2e_p99"]))
        return t

    def start(self, total: int | None, desc: str) -> None:
        super().start(total, desc)
        if not self.quiet:
            # Rich refreshes on its own thread at 4 Hz, reading our counts: never once per request.
            self.live = Live(get_renderable=self.table, refresh_per_second=4, transient=False)
            self.live.start()

    def close(self) -> None:
        super().close()
        if self.live is not None:
            self.live.stop()
