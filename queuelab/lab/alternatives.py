"""Alternatives to one-at-a-time serving, measured side by side: model copies, threads, static batches.

Each alternative is a `RequestQueue` (`RequestQueue([m1, m2, m3])`, `RequestQueue(model, workers=3)`,
`scheduler=StaticBatchScheduler(...)`); this module runs the same burst through each, repeated with
distinct seeds, and turns the runs into tables with their spread. Memory is in `queuelab.lab.memory`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from queuelab.checks import positive_int
from queuelab.engine.request_queue import RequestQueue
from queuelab.lab import kv_budget
from queuelab.load import stress
from queuelab.load.stress_run import StressRun
from queuelab.request import Request

QueueFactory = Callable[[], RequestQueue]


async def bursts(configs: Mapping[str, QueueFactory], *, n: int, max_new_tokens: int,
                 seeds: Sequence[int] = (0, 1, 2)) -> pd.DataFrame:
    """Send the same burst of `n` requests (all at once) through a fresh queue of each config, once per seed.

    Each seed draws other prompts; within a seed every config gets the same prompts, and the order
    of the configs alternates from seed to seed, so slow drift of a shared machine lands on all of
    them alike. One row per (seed, config): req_per_s, service_s (mean time a request spent being
    processed), e2e_p50_s, max_processing (the most requests processing at once), busy (the share of
    the run during which each model copy or thread was running a step, averaged over workers),
    and same_answers (how many greedy answers equal those of the first config with that seed).
    """
    positive_int("n", n)
    if not configs or not seeds:
        raise ValueError("bursts() needs at least one config and one seed")
    rows = []
    for i, seed in enumerate(seeds):
        names = list(configs) if i % 2 == 0 else list(configs)[::-1]
        for name in names:
            answers: dict[int, str | None] = {}

            def keep(r: Request, answers: dict[int, str | None] = answers) -> None:
                answers[r.id] = r.completion.text if r.completion else None

            async with configs[name]() as queue:
                run = await stress.rapid_fire(queue, n=n, max_new_tokens=max_new_tokens, seed=seed, progress=False,
                                              name=name, on_request_done=keep)
                workers = queue.workers
            rows.append({"seed": seed, "config": name, "workers": workers, "n": n, **_burst_row(run, workers),
                         "_answers": [answers[k] for k in sorted(answers)]})
    df = pd.DataFrame(rows)
    first = next(iter(configs))
    reference = {seed: g.loc[g.config == first, "_answers"].iloc[0] for seed, g in df.groupby("seed")}
    df["same_answers"] = [sum(a == b for a, b in zip(t, reference[s])) for s, t in zip(df.seed, df._answers)]
    df["config"] = pd.Categorical(df.config, categories=list(configs), ordered=True)
    df = df.sort_values(["seed", "config"]).reset_index(drop=True)
    df["config"] = df.config.astype(str)
    return df.drop(columns=["_answers"])


def _burst_row(run: StressRun, workers: int) -> dict[str, Any]:
    s, r = run.summary, run.requests
    ok = r[r.status == "completed"]
    start, end = float(ok.started.min()), float(ok.finished.max())
    steps = run.steps if run.steps is not None else pd.DataFrame(columns=["duration_s"])
    busy = float(steps.duration_s.sum()) / (workers * (end - start)) if end > start else np.nan
    tl = run.timeline
    return {"req_per_s": s["req_per_s"], "service_s": float(ok.service.mean()), "e2e_p50_s": s["e2e_p50"],
            "tokens": int(ok.completion_tokens.sum()),
            "max_processing": int(tl.processing.max()) if len(tl) else np.nan, "busy": busy}


def one_request_by_cores(model: Any, *, max_new_tokens: int, seeds: Sequence[int] = (0, 1, 2),
                         threads: Sequence[int] = (1, 2)) -> pd.DataFrame:
    """One request alone (batch 1), with torch allowed 1, then 2 intra-op threads (cores), once per seed:
    how much of a second core one forward pass uses. One row per (seed, torch_threads): duration_s, tokens."""
    import torch

    from queuelab.prompts import choose

    before = torch.get_num_threads()
    rows = []
    try:
        for seed in seeds:
            prompt = choose(1, None, np.random.default_rng(seed))[0]
            for t in threads:
                torch.set_num_threads(positive_int("threads", t))
                c = model.generate(prompt, max_new_tokens=max_new_tokens)
                rows.append({"seed": seed, "torch_threads": t, "duration_s": c.duration_s,
                             "tokens": c.completion_tokens})
    finally:
        torch.set_num_threads(before)
    return pd.DataFrame(rows)


def spread(df: pd.DataFrame, baseline: str, columns: Sequence[str] = ("req_per_s", "service_s"),
           by: str = "config") -> pd.DataFrame:
    """Mean and min–max over the seeds of each column, and each config's ratio to `baseline` within
    the same seed (paired: same prompts), as mean and min–max. One row per config, in first-seen order."""
    if baseline not in set(df[by]):
        raise ValueError(f"baseline {baseline!r} is not one of the {by} values: {sorted(set(df[by]))}")
    base = df[df[by] == baseline].set_index("seed")
    rows = []
    for name, g in df.groupby(by, sort=False):
        g = g.set_index("seed")
        row: dict[str, Any] = {by: name, "repeats": len(g)}
        for col in columns:
            ratio = g[col] / base[col].reindex(g.index)
            row |= {f"{col}": g[col].mean(), f"{col}_min": g[col].min(), f"{col}_max": g[col].max(),
                    f"{col}_x": ratio.mean(), f"{col}_x_min": ratio.min(), f"{col}_x_max": ratio.max()}
        rows.append(row)
    return pd.DataFrame(rows)


def fmt_spread(mean: float, low: float, high: float, digits: int = 2, suffix: str = "") -> str:
    """'0.95 (0.91–0.99)': a mean and its range over repeats, as the tables print them."""
    return f"{mean:.{digits}f}{suffix} ({low:.{digits}f}–{high:.{digits}f})"


def bursts_table(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """`bursts`' rows per config, formatted: req/s and mean service time, each with its range over
    seeds and its ratio to `baseline` (paired by seed), the busy share and the answers equal to the baseline's."""
    sp = spread(df, baseline)
    g = df.groupby("config", sort=False)
    return pd.DataFrame({
        "config": sp.config, "workers": g.workers.first().values, "repeats": sp.repeats,
        "req/s": [fmt_spread(r.req_per_s, r.req_per_s_min, r.req_per_s_max) for r in sp.itertuples()],
        "x baseline": [fmt_spread(r.req_per_s_x, r.req_per_s_x_min, r.req_per_s_x_max, 2, "x") for r in sp.itertuples()],
        "service (s)": [fmt_spread(r.service_s, r.service_s_min, r.service_s_max) for r in sp.itertuples()],
        "service x": [fmt_spread(r.service_s_x, r.service_s_x_min, r.service_s_x_max, 1, "x") for r in sp.itertuples()],
        "busy": [f"{b:.0%}" for b in g.busy.mean().values],
        "max processing": g.max_processing.max().values,
        "same answers": [f"{a}/{t}" for a, t in zip(g.same_answers.sum().values, g.n.sum().values)],
    })


def sweep_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """`memory.static_batch_sweep` per batch size: tokens/s (mean, min–max over seeds) and its ratio to
    batch 1 within each seed, per-request latency, KV cache at its largest, and peak memory."""
    base = sweep[sweep.batch == sweep.batch.min()].set_index("seed").tokens_per_s
    rows = []
    for b, g in sweep.groupby("batch"):
        x = g.set_index("seed").tokens_per_s / base
        first = g.dropna(subset=["peak_rss_mb"])
        rows.append({"batch": b, "repeats": len(g),
                     "tokens/s": fmt_spread(g.tokens_per_s.mean(), g.tokens_per_s.min(), g.tokens_per_s.max(), 1),
                     "x batch 1": fmt_spread(x.mean(), x.min(), x.max(), 2, "x"),
                     "latency mean (s)": fmt_spread(g.latency_mean_s.mean(), g.latency_mean_s.min(),
                                                    g.latency_mean_s.max()),
                     "KV cache peak (MB)": round(float(g.kv_peak_mb.max()), 1),
                     "peak RSS (MB)": round(float(first.peak_rss_mb.iloc[0]), 0) if len(first) else np.nan,
                     "above idle (MB)": round(float(first.above_idle_mb.iloc[0]), 0) if len(first) else np.nan})
    return pd.DataFrame(rows)


def static_batches(run: StressRun) -> pd.DataFrame:
    """The static batches of a run, one row each: how long its longest and shortest requests ran, and
    how much of the batch's seat time stayed empty.

    In this engine a request of a static batch completes at its own last token, but its seat stays
    empty until the longest request of the batch finishes, and the next batch waits for that.
    `empty_seat_share` is the empty seat-seconds (batch end − each request's end, summed) over
    size × batch duration. Requests of one batch share their start time: that is how they are grouped.
    """
    r = run.requests[run.requests.status == "completed"].copy()
    rows = []
    for n, (started, g) in enumerate(r.groupby("started", sort=True), 1):
        end = float(g.finished.max())
        span = end - float(started)
        empty = float((end - g.finished).sum())
        rows.append({"batch": n, "size": len(g), "wave": int(g.wave.iloc[0]) if "wave" in g else 0,
                     "longest_s": span, "shortest_s": float((g.finished - started).min()),
                     "tokens_min": int(g.completion_tokens.min()), "tokens_max": int(g.completion_tokens.max()),
                     "empty_seat_share": empty / (len(g) * span) if span > 0 else 0.0})
    return pd.DataFrame(rows)


def padding(steps: pd.DataFrame) -> dict[str, float]:
    """Of the KV-cache slots the decode steps held (summed over steps), the share that was padding."""
    d = steps[steps.decode_tokens > 0]
    return {"kv_slots": float(d.kv_tokens.sum()), "pad_slots": float(d.pad_tokens.sum()),
            "pad_share": kv_budget.padding_fraction(steps)}


def claims(rows: Sequence[tuple[str, str, str]]) -> Any:
    """A three-column table (what the seed says, what we measured here, why they agree or differ),
    left-aligned and wrapping, for a notebook."""
    df = pd.DataFrame(list(rows), columns=["the seed says", "measured here", "why"])
    return (df.style.hide(axis="index")
            .set_properties(**{"text-align": "left", "white-space": "pre-wrap", "vertical-align": "top"})
            .set_table_styles([{"selector": "th", "props": [("text-align", "left")]}]))


async def wait_for_processing(queue: RequestQueue, count: int, timeout: float = 60.0) -> None:
    """Wait (on the loop) until `queue.processing` reaches `count`; raise TimeoutError if it never does."""
    async def reached() -> None:
        while queue.processing < count:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(reached(), timeout)


def panels_now(queue: RequestQueue) -> Any:
    """The dashboard's statistics and active-request panels as they are at this instant (static HTML)."""
    from IPython.display import HTML

    from queuelab.observe.dashboard import panel_html

    p = panel_html(queue.stats().as_dict())
    boxes = "".join(f'<div style="display:inline-block;vertical-align:top;margin:3px">{p[k]}</div>'
                    for k in ("stats", "active"))
    return HTML(f"<div>{boxes}</div>")


def depth_vs_throughput(waves: Mapping[str, pd.DataFrame]) -> Any:
    """Peak queue depth against achieved throughput, one line per wave table (`StressRun.waves`), by label."""
    from queuelab.observe.plots import WAVE_COLOURS, _figure

    fig, ax = _figure(size=(7.5, 4.5))
    a = ax[0, 0]
    for i, (label, w) in enumerate(waves.items()):
        colour = WAVE_COLOURS[i % len(WAVE_COLOURS)]
        a.plot(w.req_per_s, w.peak_queue_depth, "-o", color=colour, label=label)
        for row in w.itertuples():
            a.annotate(f"{row.sent} sent", (row.req_per_s, row.peak_queue_depth), textcoords="offset points",
                       xytext=(6, -3), fontsize=7, color=colour)
    a.set_xlabel("achieved throughput (completed requests / s)")
    a.set_ylabel("peak queue depth (requests waiting)")
    a.set_title("Same waves, same depth: batching moves the line right")
    right = max(float(w.req_per_s.max()) for w in waves.values())
    a.set_xlim(0, right * 1.15)  # room for the labels of the rightmost points
    a.legend(fontsize=8, loc="upper center")  # the lines' lowest points sit at the bottom
    return fig


def plot_sweep(sweep: pd.DataFrame) -> Any:
    """`memory.static_batch_sweep`: aggregate tokens/s and per-request latency against batch size,
    each as the mean over seeds with min–max error bars."""
    from queuelab.observe.plots import _figure

    g = sweep.groupby("batch")
    fig, ax = _figure(1, 2, size=(10, 3.8))
    for a, col, title, ylabel in ((ax[0, 0], "tokens_per_s", "aggregate throughput", "tokens / s (all requests)"),
                                  (ax[0, 1], "latency_mean_s", "per-request latency", "seconds (mean over the batch)")):
        mean, low, high = g[col].mean(), g[col].min(), g[col].max()
        a.errorbar(mean.index, mean, yerr=[mean - low, high - mean], fmt="-o", capsize=4, color="#4c72b0",
                   label="mean, min–max over seeds")
        a.set_xscale("log", base=2)
        a.set_xticks(list(mean.index), [str(b) for b in mean.index])
        a.set_xlabel("static batch size")
        a.set_ylabel(ylabel)
        a.set_title(title)
        a.set_ylim(bottom=0)
        a.legend(fontsize=8, loc="upper left")
    return fig

