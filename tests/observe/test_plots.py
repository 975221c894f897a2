"""Every plot draws from a saved run, with the axes, series and labels it promises."""

import matplotlib
import numpy as np
import pandas as pd
import pytest

import queuelab as ql
from queuelab import plots, stress


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory):
    async def make():
        async with ql.RequestQueue(ql.SimulatedModel(0.003, seed=0), sample_interval=0.01) as q:
            inc = await stress.incremental(q, waves=[4, 8, 12], max_new_tokens=2, progress=False)
            flood = await stress.rapid_fire(q, n=15, max_new_tokens=2, progress=False)
        return inc, flood

    inc, flood = ql.run(make())
    d = tmp_path_factory.mktemp("runs")
    return ql.StressRun.load(inc.save(d / "inc.json")), ql.StressRun.load(flood.save(d / "flood.json"))


def labels(ax):
    return ax.get_xlabel(), ax.get_ylabel()


def test_timeline(saved_runs):
    fig = plots.timeline(saved_runs[0])
    top, bottom = fig.axes
    assert isinstance(fig, matplotlib.figure.Figure)
    # A one-at-a-time queue processes 0 or 1: its legend says "processing", not "batch size".
    assert [line.get_label() for line in top.get_lines()] == ["queue depth (waiting)", "processing"]
    assert labels(bottom) == ("time since start (s)", "requests / s") and top.get_ylabel() == "requests"
    assert len(top.patches) == 3  # one shaded span per wave
    depth = top.get_lines()[0].get_ydata()
    assert max(depth) <= 12 and list(depth) == list(saved_runs[0].timeline.queue_depth)


def test_timeline_names_the_batch_size_when_there_are_batches(saved_runs):
    batched = saved_runs[0].timeline.assign(processing=lambda t: t.processing * 3)
    top = plots.timeline(batched).axes[0]
    assert top.get_lines()[1].get_label() == "processing (batch size)"


def test_timeline_of_a_live_queue():
    async def make():
        async with ql.RequestQueue(ql.SimulatedModel(0.001), sample_interval=0.01) as q:
            await stress.rapid_fire(q, n=10, max_new_tokens=1, progress=False)
            return plots.timeline(q)

    fig = ql.run(make())
    assert len(fig.axes) == 2 and len(fig.axes[0].get_lines()) == 2


def test_depth_vs_throughput(saved_runs):
    run = saved_runs[0]
    fig = plots.depth_vs_throughput(run)
    (ax,) = fig.axes
    assert labels(ax) == ("achieved throughput (completed requests / s)", "queue depth (requests waiting)")
    per_wave = [line for line in ax.get_lines() if line.get_label().startswith("per wave: peak depth")][0]
    assert list(per_wave.get_ydata()) == list(run.waves.peak_queue_depth) == [4, 8, 12]
    capacity = [line for line in ax.get_lines() if line.get_label().startswith("1 / mean service time")][0]
    assert capacity.get_xdata()[0] == pytest.approx(1 / run.summary["service_mean"])


def test_latency_by_wave(saved_runs):
    fig = plots.latency_by_wave(saved_runs[0])
    wait_ax, e2e_ax = fig.axes
    assert [t.get_text() for t in wait_ax.get_xticklabels()] == ["1", "2", "3"]
    assert (wait_ax.get_title(), e2e_ax.get_title(), wait_ax.get_ylabel()) == ("time queued (wait)", "end-to-end latency", "seconds")


def test_latency_cdf(saved_runs):
    fig = plots.latency_cdf(list(saved_runs))
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == ["incremental", "rapid_fire"]
    assert ax.get_lines()[1].get_ydata()[-1] == 1.0
    assert labels(ax) == ("e2e latency (s)", "fraction of requests")


def test_position_vs_latency(saved_runs):
    fig = plots.position_vs_latency(saved_runs[1])
    (ax,) = fig.axes
    assert labels(ax) == ("queue position (arrival order)", "seconds")
    fit = ax.get_lines()[0]
    assert "ms per position" in fit.get_label()
    assert len(ax.collections) == 2  # e2e and wait scatter


def test_summary_bars(saved_runs):
    fig = plots.summary_bars(list(saved_runs))
    thr, lat, ttft = fig.axes
    assert len(thr.patches) == 2 and len(lat.patches) == 4 and len(ttft.patches) == 4
    assert thr.get_ylabel() == "completed requests / s" and lat.get_ylabel() == "end-to-end latency (s)"
    assert ttft.get_ylabel() == "time to first token (s)"
    assert ttft.patches[2].get_height() == pytest.approx(saved_runs[0].summary["ttft_p99"])
    assert thr.patches[0].get_height() == pytest.approx(saved_runs[0].summary["req_per_s"])


def test_timeline_shades_a_blocked_event_loop_and_draws_no_line_across_it():
    from queuelab.observe.plots import _stalls, timeline

    t = [0.0, 0.25, 0.5, 3.5, 3.75]
    tl = pd.DataFrame({"t": t, "uptime_s": t, "queue_depth": [2, 1, 1, 0, 0], "processing": [1, 1, 1, 0, 0],
                       "submitted": 3, "completed": [0, 1, 1, 3, 3], "failed": 0, "req_per_s": 0.0,
                       "tokens_per_s": 0.0, "loop_lag_s": [0.0, 0.001, 0.002, 2.75, 0.001]})
    assert _stalls(tl) == [(0.75, 3.5)]  # the tick due at 0.75 s came 2.75 s late
    fig = timeline(tl)
    top = fig.axes[0]
    assert any(p.get_label() == "event loop blocked: no samples" for p in top.patches)
    depth = next(line for line in top.get_lines() if line.get_label().startswith("queue depth"))
    y = np.asarray(depth.get_ydata(), float)
    assert np.isnan(y).any()  # the line is broken at the stall
