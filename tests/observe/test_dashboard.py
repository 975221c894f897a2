import asyncio
import re
import time
from html.parser import HTMLParser

import nbformat
import pytest
from nbclient import NotebookClient

import queuelab as ql
from queuelab import stress
from tests.conftest import wait_until


class _Tables(HTMLParser):
    """Each table row's cell texts, as a browser would show them (tags and styles dropped)."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def cell(html: str, label: str) -> str:
    values = [row[1] for row in _Tables(html).rows if len(row) >= 2 and row[0] == label]
    assert values, f"{label} not in panel"
    return values[0]


async def test_widgets_hold_the_final_state_and_the_ticker_stops():
    q = await ql.RequestQueue(ql.SimulatedModel(0.005), sample_interval=0.05).start()
    dash = ql.Dashboard(q, interval=0.1).show()
    reqs = [q.submit(f"question {i}", max_new_tokens=2) for i in range(6)]
    bad = q.submit("")
    await asyncio.gather(*reqs)
    await wait_until(lambda: cell(dash.panels["stats"].value, "Completed") == "6", what="the panel to show 6 done")
    stats = dash.panels["stats"].value
    assert (cell(stats, "Queue size"), cell(stats, "Processing")) == ("0", "0")
    assert (cell(stats, "Submitted"), cell(stats, "Completed"), cell(stats, "Rejected")) == ("7", "6", "1")
    recent_ids = [int(row[0]) for row in _Tables(dash.panels["recent"].value).rows if row[0].isdigit()]
    assert recent_ids == [r.id for r in reversed(reqs)] + [bad.id]  # newest first; the rejection came first
    assert "idle" in dash.panels["active"].value
    assert cell(dash.panels["health"].value, "Worker alive") == "yes"
    await q.stop()
    await asyncio.wait_for(asyncio.shield(dash._task), 5)  # it stops by itself when the queue stops
    assert dash.stopped
    assert cell(dash.panels["health"].value, "Queue state") == "stopped"
    assert dash.plot.value.count("<svg") == 2 and "queue depth" in dash.plot.value
    assert dash._png.startswith(b"\x89PNG")  # drawn once, for the static snapshot


async def test_active_request_shows_progress():
    async with ql.RequestQueue(ql.SimulatedModel(0.4)) as q:
        dash = ql.Dashboard(q, interval=0.1, plot=False).show()
        req = q.submit("a slow one", max_new_tokens=4)
        await wait_until(lambda: "Tokens so far" in dash.panels["active"].value
                         and int(cell(dash.panels["active"].value, "Tokens so far")) >= 1)
        active = dash.panels["active"].value
        assert cell(active, "Request") == f"#{req.id}" and cell(active, "Prompt") == "a slow one"
        assert int(cell(active, "Tokens so far")) >= 1
        await req
    dash.stop()


async def test_updates_stay_bounded_under_a_flood():
    async with ql.RequestQueue(ql.SimulatedModel(0), max_queue_size=10_000) as q:
        dash = ql.Dashboard(q, interval=0.2).show()
        t0 = time.perf_counter()
        run = await stress.poisson(q, rate=1000, duration=1.5, max_new_tokens=1, progress=False)
        elapsed = time.perf_counter() - t0
    dash.stop()
    assert run.summary["sent"] > 1000
    ticks = elapsed / 0.2 + 2
    assert dash.updates <= ticks * 5  # at most one message per widget per tick, whatever the traffic


def test_svg_chart_scales_to_the_data():
    svg = ql.dashboard.svg_chart([0, 1, 2], [([0, 5, 10], "#000", "depth")], title="t", width=100, height=60, step=True)
    points = re.search(r'points="([^"]+)"', svg).group(1).split()
    assert len(points) == 5  # a step line: a corner before each new value
    ys = [float(p.split(",")[1]) for p in points]
    assert ys[0] == max(ys) and ys[-1] == min(ys) and ">10<" in svg


async def test_showing_again_replaces_the_old_view():
    async with ql.RequestQueue(ql.SimulatedModel(0)) as q:
        first = ql.Dashboard(q, interval=0.1).show()
        second = ql.Dashboard(q, interval=0.1).show()
        await wait_until(lambda: first.stopped)
        assert not second.stopped
    await asyncio.wait_for(asyncio.shield(second._task), 5)
    assert second.stopped
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []


async def test_stress_view_fills_in_per_wave():
    view = ql.StressView(interval=0.05)
    async with ql.RequestQueue(ql.SimulatedModel(0.003), max_queue_size=12) as q:
        run = await stress.incremental(q, waves=[3, 5, 15], max_new_tokens=1, progress=view)
    rows = view.rows()
    assert [(r["wave"], r["sent"], r["done"], r["completed"]) for r in rows] == [(1, 3, 3, 3), (2, 5, 5, 5), (3, 15, 15, 12)]
    assert rows[2]["success_rate"] == pytest.approx(12 / 15)
    assert view.stopped and "finished" in view.table.value
    assert list(run.waves.succeeded) == [r["completed"] for r in rows]


def test_bad_interval():
    with pytest.raises(ValueError, match="interval"):
        ql.Dashboard(ql.RequestQueue(ql.SimulatedModel(0)), interval=0)


def test_headless_notebook_does_not_hang_and_keeps_a_static_snapshot(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in (
        "import queuelab as ql\nq = await ql.RequestQueue(ql.SimulatedModel(0.005), sample_interval=0.05).start()",
        "dash = ql.Dashboard(q, interval=0.2).show()",
        "run = await ql.stress.incremental(q, waves=[5, 10], max_new_tokens=2, progress=ql.StressView())",
        "await q.stop()\ndash.stop()",
        "ql.plots.timeline(run)",
        "q2 = await ql.RequestQueue(ql.SimulatedModel(0.002)).start()\n"
        "flood = await ql.stress.rapid_fire(q2, n=12, max_new_tokens=1, progress=True)\nawait q2.stop()",
    )]
    NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    dash_out, = nb.cells[1].outputs
    view_out = [o for o in nb.cells[2].outputs if o.output_type == "display_data"]
    assert "text/html" in dash_out.data and "application/vnd.jupyter.widget-view+json" not in dash_out.data
    assert "Queue statistics" in dash_out.data["text/html"] and "data:image/png;base64" in dash_out.data["text/html"]
    assert "15 of 15 requests done (finished)" in view_out[-1].data["text/html"]
    assert "image/png" in nb.cells[4].outputs[0].data  # a returned Figure shows as a picture
    bar, = [o for o in nb.cells[5].outputs if o.output_type == "display_data"]
    # progress=True in a notebook is saved at its final count, not at the 0 % it started from.
    assert "12/12 (100%)" in bar.data["text/html"] and "application/vnd.jupyter.widget-view+json" not in bar.data


async def test_notebook_and_terminal_show_the_same_panels():
    from rich.console import Console

    from queuelab.observe import panels
    from queuelab.observe.dashboard import panel_html
    from queuelab.observe.terminal import monitor_view

    async with ql.RequestQueue(ql.SimulatedModel(0.002, fail_if=lambda p: "[b]" in p, name="[b]sim")) as q:
        await asyncio.gather(*(q.submit(p) for p in ("ok", "[b]x", "fine")), return_exceptions=True)
        snapshot = q.stats().as_dict()
    console = Console(record=True, width=160)
    console.print(monitor_view(snapshot, "http://x"))
    terminal = console.export_text()
    notebook = "".join(panel_html(snapshot).values())
    for label, text in panels.stats_rows(snapshot) + panels.health_rows(snapshot):
        assert label in terminal and label in notebook
        assert cell(notebook, label) == text
    assert "[b]sim" in terminal  # text from the server shows as text, never as Rich markup


async def test_panels_carry_their_styles_inline_and_clip_long_text():
    # JupyterLab drops <style> blocks from untrusted notebooks and restyles tables by class: the
    # panels must look the same without either.
    from queuelab.observe.dashboard import STYLE, panel_html

    async with ql.RequestQueue(ql.SimulatedModel(0.3)) as q:
        q.submit("word " * 400, max_new_tokens=1)
        await wait_until(lambda: q.stats().processing == 1, what="the long prompt to be processing")
        panels_ = panel_html(q.stats().as_dict())
    for markup in panels_.values():
        assert "<style" not in markup and "class=" not in markup
        assert markup.count(f'<div style="{STYLE["clip"]}">') == markup.count("<td")
    assert "text-overflow:ellipsis" in STYLE["clip"] and "max-width" in STYLE["clip"]
    assert cell(panels_["active"], "Prompt").startswith("word word")
