"""Plots of stress runs and queue timelines. Each returns a matplotlib Figure with labelled axes.

Plots only read the DataFrames of a `StressRun` (or a queue's `timeline()`); they compute no
metric of their own, so a plot and a table can never disagree. Figures are built without pyplot:
no global state, and a notebook shows each figure once (the cell's value).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from queuelab.engine.request_queue import RequestQueue
from queuelab.load.stress_run import StressRun, summaries


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _register_notebook_display() -> None:
    """Show a returned Figure as a PNG in notebooks. Figures built without pyplot have no display
    hook of their own until pyplot's inline backend is loaded, so register one (same as inline's)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.display_formatter.formatters["image/png"].for_type(Figure, to_png)


_register_notebook_display()

WAVE_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def _figure(rows: int = 1, cols: int = 1, *, size: tuple[float, float] = (8, 4), **kw: Any) -> tuple[Figure, Any]:
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


def _timeline_of(source: StressRun | RequestQueue | pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """The timeline and the instant plots count time from (the run's start, or the queue's first sample)."""
    if isinstance(source, StressRun):
        return source.timeline, float(source.config.get("start", source.requests.scheduled_at.min()))
    tl = source.timeline() if isinstance(source, RequestQueue) else source
    return tl, float(tl.t.iloc[0]) if len(tl) else 0.0


def timeline(source: StressRun | RequestQueue | pd.DataFrame, *, size: tuple[float, float] = (9, 5)) -> Figure:
    """Queue depth and processing over time (waves shaded), and throughput below."""
    tl, t0 = _timeline_of(source)
    fig, ax = _figure(2, 1, size=size, sharex=True)
    top, bottom = ax[0, 0], ax[1, 0]
    stalls = _stalls(tl)
    tl = _break_at(tl, stalls)
    x = tl.t - t0
    top.step(x, tl.queue_depth, where="post", label="queue depth (waiting)", color="#4c72b0")
    batched = bool((tl.processing.fillna(0) > 1).any())  # "batch size" means nothing to a one-at-a-time queue
    top.step(x, tl.processing, where="post", label="processing (batch size)" if batched else "processing",
             color="#c44e52")
    top.set_ylabel("requests")
    top.yaxis.set_major_locator(MaxNLocator(integer=True))  # requests come whole: no 2.5 ticks
    top.set_title("Queue depth and processing over time")
    bottom.plot(x, tl.req_per_s, color="#55a868", label="completed req/s (sliding window)")
    bottom.set_ylabel("requests / s")
    bottom.set_xlabel("time since start (s)")
    if isinstance(source, StressRun) and source.kind == "incremental":
        for i, w in enumerate(source.waves.itertuples()):
            for a in (top, bottom):
                a.axvspan(w.start_s, w.start_s + w.wall_s, color=WAVE_COLOURS[i % len(WAVE_COLOURS)], alpha=0.12, lw=0)
            # Alternate heights: a short wave's label would otherwise run into the next one's.
            top.text(w.start_s, 0.97 - 0.09 * (i % 2), f" wave {w.wave}: {w.sent} sent",
                     transform=top.get_xaxis_transform(), va="top", fontsize=8)
    for i, (begin, end) in enumerate(stalls):
        for a in (top, bottom):
            a.axvspan(begin - t0, end - t0, color="#888888", alpha=0.25, lw=0,
                      label="event loop blocked: no samples" if i == 0 and a is top else None)
    top.legend(loc="best", fontsize=8)  # the queue drains in staircases: let matplotlib find the free corner
    bottom.legend(loc="lower right", fontsize=8)
    return fig


def _stalls(tl: pd.DataFrame) -> list[tuple[float, float]]:
    """Stretches when the timeline ticker could not run: a tick that came `lag` late says the loop was held
    from t − lag to t. Lags under a few ticks are ordinary scheduling noise."""
    if "loop_lag_s" not in tl or len(tl) < 2:
        return []
    interval = float(np.median(np.diff(tl.t))) if len(tl) > 2 else 0.25
    late = tl[tl.loop_lag_s > max(0.2, 2 * interval)]
    return [(float(t - lag), float(t)) for t, lag in zip(late.t, late.loop_lag_s)]


def _break_at(tl: pd.DataFrame, stalls: list[tuple[float, float]]) -> pd.DataFrame:
    """The timeline with an empty row where each stall began, so lines are not drawn across it
    (nothing was measured there: a line would claim the last state held)."""
    if not stalls:
        return tl
    gaps = pd.DataFrame({"t": [b for b, _ in stalls]})
    return pd.concat([tl, gaps], ignore_index=True).sort_values("t", kind="stable").reset_index(drop=True)


def depth_vs_throughput(run: StressRun) -> Figure:
    """Queue depth against achieved throughput: throughput saturates at 1/service time, depth keeps growing."""
    fig, ax = _figure(size=(7, 4.5))
    a = ax[0, 0]
    tl, _ = _timeline_of(run)
    if len(tl):
        a.scatter(tl.req_per_s, tl.queue_depth, s=8, color="#999999", alpha=0.5,
                  label="sampled depth (a tick every few tenths of a second)")
    w = run.waves
    a.plot(w.req_per_s, w.peak_queue_depth, "-o", color="#4c72b0",
           label="per wave: peak depth (exact, from the request timestamps)")
    for row in w.itertuples():
        a.annotate(f"wave {row.wave} ({row.sent} sent)", (row.req_per_s, row.peak_queue_depth),
                   textcoords="offset points", xytext=(6, -4), fontsize=8)
    capacity = 1.0 / run.summary["service_mean"] if run.summary.get("service_mean") else np.nan
    if np.isfinite(capacity):
        a.axvline(capacity, color="#c44e52", ls="--", label=f"1 / mean service time = {capacity:.2f} req/s")
    a.set_xlabel("achieved throughput (completed requests / s)")
    a.set_ylabel("queue depth (requests waiting)")
    a.set_title("Depth grows, throughput does not: one request at a time")
    a.set_xlim(left=0)
    a.legend(fontsize=8, loc="upper left")
    return fig


def latency_by_wave(run: StressRun) -> Figure:
    """Distributions of wait and end-to-end latency of completed requests, per wave."""
    ok = run.requests[run.requests.status == "completed"]
    waves = sorted(ok.wave.unique())
    fig, ax = _figure(1, 2, size=(10, 4), sharey=True)
    for a, col, title in ((ax[0, 0], "wait", "time queued (wait)"), (ax[0, 1], "e2e", "end-to-end latency")):
        a.boxplot([ok[ok.wave == w][col] for w in waves], tick_labels=[str(w) for w in waves], showfliers=True)
        a.set_xlabel("wave")
        a.set_title(title)
    ax[0, 0].set_ylabel("seconds")
    return fig


def latency_cdf(runs: StressRun | Sequence[StressRun], column: str = "e2e") -> Figure:
    """Empirical CDF of a latency column (e2e, wait, ttft, service) of completed requests, one line per run."""
    runs = [runs] if isinstance(runs, StressRun) else list(runs)
    fig, ax = _figure(size=(7, 4))
    a = ax[0, 0]
    for run in runs:
        v = np.sort(run.requests.loc[run.requests.status == "completed", column].to_numpy())
        a.step(v, np.arange(1, len(v) + 1) / max(len(v), 1), where="post", label=run.name)
    a.set_xlabel(f"{column} latency (s)")
    a.set_ylabel("fraction of requests")
    a.set_title(f"{column} latency CDF")
    a.legend(fontsize=8)
    return fig


def position_vs_latency(run: StressRun) -> Figure:
    """End-to-end latency against queue position (arrival order): a straight line for a sequential server."""
    r = run.requests.sort_values("arrived")
    ok = r.status == "completed"
    position = np.arange(1, len(r) + 1)
    fig, ax = _figure(size=(7, 4))
    a = ax[0, 0]
    a.scatter(position[ok], r.e2e[ok], s=10, label="e2e (completed)", color="#4c72b0")
    a.scatter(position[ok], r.wait[ok], s=6, label="wait", color="#dd8452")
    if (~ok).any():
        a.scatter(position[~ok], np.zeros((~ok).sum()), marker="x", color="#c44e52", label="not completed")
    if ok.sum() >= 2:
        slope, intercept = np.polyfit(position[ok], r.e2e[ok], 1)
        a.plot(position, intercept + slope * position, "k--", lw=1, label=f"fit: {slope * 1e3:.0f} ms per position")
    a.set_xlabel("queue position (arrival order)")
    a.set_ylabel("seconds")
    a.set_title("Each request waits for everyone ahead of it")
    a.legend(fontsize=8)
    return fig


def summary_bars(runs: Sequence[StressRun]) -> Figure:
    """Several runs side by side: throughput, p50/p99 end-to-end latency and p50/p99 time to first token."""
    table = summaries(list(runs))
    fig, ax = _figure(1, 3, size=(13, 4))
    names = list(table.columns)
    x = np.arange(len(names))
    ax[0, 0].bar(x, table.loc["req_per_s"], color="#55a868")
    ax[0, 0].set_ylabel("completed requests / s")
    ax[0, 0].set_title("throughput")
    for a, col, title in ((ax[0, 1], "e2e", "end-to-end latency"), (ax[0, 2], "ttft", "time to first token")):
        a.bar(x - 0.2, table.loc[f"{col}_p50"], width=0.4, label="p50")
        a.bar(x + 0.2, table.loc[f"{col}_p99"], width=0.4, label="p99")
        a.set_ylabel(f"{title} (s)")
        a.set_title(title)
        a.legend(fontsize=8)
    for a in ax[0]:
        a.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    return fig


def _spread(runs: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Mean, min and max of `y` over seeds, per scheduler and `x`."""
    return runs.groupby(["scheduler", x], sort=False)[y].agg(["mean", "min", "max"]).reset_index()


def sweep(runs: pd.DataFrame, y: str = "e2e_p99", *, x: str = "load", target: float | None = None,
          log: bool = True, title: str | None = None) -> Figure:
    """A load sweep (`queuelab.load.replay.sweep`, with a `load` column): `y` against `x`, one line per
    scheduler, the mean over seeds with bars from the best to the worst seed."""
    fig, ax = _figure(size=(8, 4.5))
    a = ax[0, 0]
    for i, (name, g) in enumerate(_spread(runs, x, y).groupby("scheduler", sort=False)):
        a.errorbar(g[x], g["mean"], yerr=[g["mean"] - g["min"], g["max"] - g["mean"]], fmt="-o", ms=4, capsize=3,
                   color=WAVE_COLOURS[i % len(WAVE_COLOURS)], label=name)
    if target is not None:
        a.axhline(target, color="#c44e52", ls="--", lw=1, label=f"target {target:g} s")
    if log:
        a.set_yscale("log")
    a.set_xlabel("offered load (× the sequential capacity)" if x == "load" else x)
    a.set_ylabel(y.replace("_", " ") + (" (s)" if y.split("_")[0] in ("e2e", "ttft", "wait") else ""))
    a.set_title(title or f"{y} against load: mean over seeds, bars from best to worst seed")
    a.legend(fontsize=8)
    return fig


def depth_vs_throughput_sweep(runs: pd.DataFrame, *, capacity: float | None = None) -> Figure:
    """Mean queue depth against achieved throughput, one line per scheduler (a load sweep: each point
    one load, mean over seeds). A server's ceiling is where its line turns vertical: more depth, no more
    throughput."""
    fig, ax = _figure(size=(8, 4.8))
    a = ax[0, 0]
    means = runs.groupby(["scheduler", "rate"], sort=False)[["req_per_s", "depth_mean"]].mean().reset_index()
    for i, (name, g) in enumerate(means.groupby("scheduler", sort=False)):
        a.plot(g.req_per_s, g.depth_mean, "-o", ms=4, color=WAVE_COLOURS[i % len(WAVE_COLOURS)], label=name)
    if capacity:
        a.axvline(capacity, color="#8c8c8c", ls="--", lw=1, label=f"sequential capacity {capacity:.2f} req/s")
    a.set_xlabel("achieved throughput (completed requests / s)")
    a.set_ylabel("mean queue depth (requests waiting)")
    a.set_yscale("symlog", linthresh=1)
    a.set_ylim(bottom=0)
    a.set_xlim(left=0)
    a.set_title("Depth against throughput: batching moves the wall to the right")
    a.legend(fontsize=8, loc="upper left")
    return fig


def batch_sizes(steps: dict[str, pd.DataFrame], *, size: tuple[float, float] | None = None) -> Figure:
    """Requests in each model step over time (`queue.steps()` or `run.steps`), one panel per run on a
    shared time axis; the line drops to 0 while the model is idle."""
    fig, ax = _figure(len(steps), 1, size=size or (10, 1.2 + 1.6 * len(steps)), sharex=True, sharey=True)
    for i, (name, df) in enumerate(steps.items()):
        a = ax[i, 0]
        t0 = float(df.t.iloc[0]) if len(df) else 0.0
        x, y = _busy_outline(df.t.to_numpy() - t0, df.duration_s.to_numpy(), df.batch_size.to_numpy())
        colour = WAVE_COLOURS[i % len(WAVE_COLOURS)]
        a.fill_between(x, y, step=None, color=colour, alpha=0.35, lw=0)
        a.plot(x, y, color=colour, lw=1)
        decode = df[df.decode_tokens > 0]
        busy = df.duration_s.sum() / max(float(df.t.iloc[-1] + df.duration_s.iloc[-1] - df.t.iloc[0]), 1e-9) if len(df) else 0
        a.set_title(f"{name}: mean decode batch {decode.batch_size.mean():.1f}, model busy {busy:.0%} of the time",
                    fontsize=9, loc="left")
        a.set_ylabel("batch")
    ax[-1, 0].set_xlabel("seconds since the run's first step")
    return fig


def _busy_outline(t: np.ndarray, d: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corner points of 'b requests from t to t + d, 0 in between' (gaps under 1 ms are not drawn)."""
    xs: list[float] = []
    ys: list[float] = []
    for i in range(len(t)):
        if not xs or t[i] - xs[-1] > 1e-3:
            xs += [float(xs[-1]) if xs else float(t[i]), float(t[i])]
            ys += [0.0, 0.0]
        xs += [float(t[i]), float(t[i] + d[i])]
        ys += [float(b[i]), float(b[i])]
    if xs:
        xs.append(xs[-1])
        ys.append(0.0)
    return np.array(xs), np.array(ys)


def wait_vs_load(series: dict[str, tuple[pd.DataFrame, Any]], *, real: pd.DataFrame | None = None,
                 size: tuple[float, float] = (8, 4.2)) -> Figure:
    """Mean wait against load, in units of the mean service time: each formula as a curve, the
    replicates of `queueing.replicate` as their mean with bars of one run's spread (± 1 sd).

    `series` maps a label to (replicate rows, formula: theory.md1 or theory.mm1); `real`, rows of
    `queueing.measure`, adds the real-clock runs as crosses.
    """
    fig, axes = _figure(size=size)
    ax = axes[0][0]
    grid = np.linspace(0.02, 0.97, 200)
    for (label, (rows, formula)), colour in zip(series.items(), WAVE_COLOURS):
        curve = [formula(rho, 1.0).mean_wait for rho in grid]  # S = 1: the wait in units of S
        ax.plot(grid, curve, color=colour, lw=1.5, label=f"{label}: formula")
        g = rows.assign(w=rows["wait"] / rows["S"]).groupby("target ρ")
        ax.errorbar(g["ρ"].mean(), g["w"].mean(), yerr=g["w"].std(ddof=1), fmt="o", color=colour, capsize=3,
                    label=f"{label}: mean of {int(g.size().iloc[0])} runs (bars: one run's sd)")
    if real is not None:
        r = real.assign(w=real["wait"] / real["S"])
        ax.plot(r["ρ"], r["w"], "x", color="black", ms=8, label="real clock, one run each")
    ax.set_xlabel("utilisation ρ = λ·S (measured)")
    ax.set_ylabel("mean wait Wq ÷ mean service time S")
    ax.set_xlim(0, 1)
    ax.set_yscale("log")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    return fig


def gantt(source: StressRun | pd.DataFrame, *, size: tuple[float, float] | None = None) -> Figure:
    """One row per request: waiting (light) from arrival to start, being served (dark) from start to
    finish, time counted from the first arrival. A sequential queue shows a staircase."""
    r = source.requests if isinstance(source, StressRun) else source
    r = r.dropna(subset=["started", "finished"]).sort_values("arrived")
    t0 = float(r.arrived.min())
    fig, axes = _figure(size=size or (8, 0.9 + 0.28 * len(r)))
    ax = axes[0][0]
    rows = np.arange(len(r))
    ax.barh(rows, r.started - r.arrived, left=r.arrived - t0, color="#c6d4e8", label="waiting in the queue")
    ax.barh(rows, r.finished - r.started, left=r.started - t0, color="#4c72b0", label="being served")
    ax.set_yticks(rows, [f"#{i}" for i in r["id"]])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first arrival")
    ax.legend(loc="upper right", fontsize=8)  # a FIFO staircase leaves the top right empty
    ax.grid(axis="x", alpha=0.3)
    return fig
