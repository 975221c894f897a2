"""Rich renderings for the terminal: the four-panel monitor and the live table of waves."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from queuelab.load.progress import WaveTally
from queuelab.metrics import format_number, format_seconds
from queuelab.observe import panels


def _kv(rows: list[tuple[str, str]]) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows:
        t.add_row(k, escape(v))
    return t


def monitor_view(s: dict[str, Any], url: str) -> Group:
    """The four panels (the notebook dashboard's, from `panels`) of a server's /stats JSON."""
    active = panels.active_rows(s)
    recent = Table("#", "status", "wait", "e2e", "tok", "answer / error", box=None, padding=(0, 1))
    for r in panels.recent_rows(s, preview=40):
        colour = "green" if r["status"] == "completed" else "red"
        recent.add_row(r["id"], f"[{colour}]{r['status']}[/{colour}]", r["wait"], r["e2e"], r["tokens"],
                       escape(r["preview"]))
    top, bottom = Table.grid(expand=True), Table.grid(expand=True)
    top.add_row(Panel(_kv(panels.stats_rows(s)), title="Queue statistics"),
                Panel(_kv(active) if active else "[dim]idle: nothing is processing[/dim]", title="Active request"))
    bottom.add_row(Panel(recent, title="Recent completions"),
                   Panel(_kv([("Server", url), *panels.health_rows(s)]), title="Health"))
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
                      format_number(r["success_rate"], ".0%"), format_number(r["req_per_s"], ".2f"),
                      format_seconds(r["e2e_p50"]), format_seconds(r["e2e_p99"]))
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
