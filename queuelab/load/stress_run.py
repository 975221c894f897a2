"""`StressRun`: the tidy result of a stress experiment (tables, summary, config), saved as JSON."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from queuelab.metrics import format_seconds, percentiles

SCHEMA = "queuelab.stressrun/1"
REQUEST_COLUMNS = ["id", "wave", "scheduled_at", "sent_at", "arrived", "started", "first_token", "finished",
                   "status", "prompt_tokens", "completion_tokens", "finish_reason", "wait", "service", "ttft",
                   "e2e", "error", "prompt", "offset"]


@dataclass
class StressRun:
    """One experiment's data. `requests` has one row per request; `waves` one per wave (or phase)."""

    kind: str
    config: dict[str, Any]
    requests: pd.DataFrame
    timeline: pd.DataFrame
    waves: pd.DataFrame = field(default=None)  # filled in __post_init__
    summary: dict[str, Any] = field(default=None)  # type: ignore[arg-type]  # computed in __post_init__
    #: The model steps taken during the run (`RequestQueue.steps()` columns), where the target shows them.
    steps: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if self.waves is None:
            self.waves = wave_table(self.requests)
        if self.summary is None:
            self.summary = summarize(self.requests, self.timeline)

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.kind)

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the whole run as JSON (schema-versioned; loads back exactly)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"schema": SCHEMA, "kind": self.kind, "config": self.config, "summary": self.summary,
               "requests": _frame_doc(self.requests), "waves": _frame_doc(self.waves),
               "timeline": _frame_doc(self.timeline)}
        if self.steps is not None:
            doc["steps"] = _frame_doc(self.steps)
        path.write_text(json.dumps(_jsonable(doc), indent=1, allow_nan=False))
        return path

    @classmethod
    def load(cls, path: str | Path) -> StressRun:
        doc = json.loads(Path(path).read_text())
        if doc.get("schema") != SCHEMA:
            raise ValueError(f"{path}: not a queuelab stress run (schema {doc.get('schema')!r}, expected {SCHEMA!r})")
        return cls(kind=doc["kind"], config=doc["config"], requests=_frame(doc["requests"]),
                   timeline=_frame(doc["timeline"]), waves=_frame(doc["waves"]),
                   summary={k: (math.nan if v is None else v) for k, v in doc["summary"].items()},  # JSON has no NaN
                   steps=_frame(doc["steps"]) if "steps" in doc else None)

    def to_csv(self, path: str | Path) -> Path:
        """The requests table as CSV, for spreadsheets."""
        self.requests.to_csv(path, index=False)
        return Path(path)

    # -- reading ----------------------------------------------------------------------------------
    def report(self) -> str:
        """A plain-text summary: counts, success rate, throughput and mean latencies, then the
        percentiles of wait, time to first token and end-to-end latency."""
        s = self.summary
        ms = lambda k: format_seconds(s[k], missing="n/a")  # noqa: E731
        lines = [
            f"Stress test summary ({self.name})",
            f"Total Requests Sent: {s['sent']}",
            f"Successful Requests: {s['succeeded']}",
            f"Success Rate: {s['success_rate'] * 100:.1f}%",
            f"Avg Requests/Second: {s['req_per_s']:.2f}",
            f"Total Test Time: {s['total_time_s']:.1f}s",
            f"Tokens/Second: {s['tokens_per_s']:.1f}",
            f"Wait  p50 {ms('wait_p50')}, p90 {ms('wait_p90')}, p99 {ms('wait_p99')}",
            f"TTFT  p50 {ms('ttft_p50')}, p90 {ms('ttft_p90')}, p99 {ms('ttft_p99')}",
            f"E2E   p50 {ms('e2e_p50')}, p90 {ms('e2e_p90')}, p99 {ms('e2e_p99')}",
        ]
        if s["not_succeeded"]:
            lines.append("Not completed: " + ", ".join(f"{n} {reason}" for reason, n in s["errors"].items()))
        return "\n".join(lines)

    def __repr__(self) -> str:
        s = self.summary
        return (f"<StressRun {self.name}: {s['succeeded']}/{s['sent']} succeeded, {s['req_per_s']:.2f} req/s, "
                f"e2e p50 {s['e2e_p50']:.2f}s>")


def summaries(runs: list[StressRun]) -> pd.DataFrame:
    """Scalar summary figures of several runs side by side: one column per run."""
    cols: dict[str, pd.Series] = {}
    for run in runs:
        name, k = run.name, 2
        while name in cols:
            name, k = f"{run.name} ({k})", k + 1
        cols[name] = pd.Series({k: v for k, v in run.summary.items() if isinstance(v, (int, float))})
    return pd.DataFrame(cols)


# -- derived tables -------------------------------------------------------------------------------------
def _queue_time(df: pd.DataFrame) -> pd.Series:
    """Time each admitted request spent waiting: until it started, or until it was cancelled."""
    admitted = df[df.status != "rejected"]
    return admitted.started.fillna(admitted.finished) - admitted.arrived


def peak_depth(df: pd.DataFrame) -> int:
    """The most requests of `df` waiting at once, exactly, from their timestamps."""
    admitted = df[df.status != "rejected"]
    if admitted.empty:
        return 0
    return peak_waiting(admitted.arrived, admitted.started.fillna(admitted.finished))


def peak_waiting(arrived: pd.Series, left: pd.Series) -> int:
    """The most requests waiting at once, given when each arrived and when it left the line."""
    events = np.concatenate([np.stack([arrived, np.ones(len(arrived))], 1), np.stack([left, -np.ones(len(left))], 1)])
    # Leaving sorts before arriving at the same instant: a request that starts at once never waited.
    events = events[np.lexsort((events[:, 1], events[:, 0]))]
    return int(np.cumsum(events[:, 1]).max())


def _pcts(prefix: str, values: pd.Series, *, mean: bool = True) -> dict[str, float]:
    p = percentiles(values.dropna())
    out = {f"{prefix}_mean": p.mean} if mean else {}
    return out | {f"{prefix}_p50": p.p50, f"{prefix}_p90": p.p90, f"{prefix}_p99": p.p99}


def _span(df: pd.DataFrame) -> tuple[float, float]:
    return float(df.scheduled_at.min()), float(df.finished.max())


def wave_table(requests: pd.DataFrame) -> pd.DataFrame:
    rows = []
    run_start = requests.scheduled_at.min() if len(requests) else 0.0
    for wave, df in requests.groupby("wave", sort=True):
        ok = df[df.status == "completed"]
        start, end = _span(df)
        wall = end - start
        rows.append({
            "wave": int(wave), "sent": len(df), "succeeded": len(ok), "not_succeeded": len(df) - len(ok),
            "success_rate": len(ok) / len(df), "start_s": start - run_start, "wall_s": wall,
            "req_per_s": len(ok) / wall if wall > 0 else math.nan,
            "tokens_per_s": ok.completion_tokens.sum() / wall if wall > 0 else math.nan,
            **_pcts("wait", ok.wait, mean=False), **_pcts("e2e", ok.e2e, mean=False),
            "peak_queue_depth": peak_depth(df),
        })
    return pd.DataFrame(rows)


def summarize(requests: pd.DataFrame, timeline: pd.DataFrame) -> dict[str, Any]:
    sent = len(requests)
    if sent == 0:
        raise ValueError("a stress run with no requests has nothing to summarise")
    ok = requests[requests.status == "completed"]
    start, end = _span(requests)
    total = end - start
    dispatch = percentiles(requests.sent_at - requests.scheduled_at)
    errors = Counter(requests.error.dropna())
    s: dict[str, Any] = {
        "sent": sent, "succeeded": len(ok), "not_succeeded": sent - len(ok), "success_rate": len(ok) / sent,
        **{f"n_{status}": int((requests.status == status).sum())
           for status in ("completed", "failed", "cancelled", "rejected")},
        "total_time_s": total,
        "req_per_s": len(ok) / total if total > 0 else math.nan,
        "tokens_per_s": ok.completion_tokens.sum() / total if total > 0 else math.nan,
        "completion_tokens": int(ok.completion_tokens.sum()),
        **_pcts("wait", ok.wait), **_pcts("service", ok.service), **_pcts("ttft", ok.ttft), **_pcts("e2e", ok.e2e),
        "dispatch_error_p50_s": dispatch.p50, "dispatch_error_p99_s": dispatch.p99,
        "dispatch_error_max_s": float((requests.sent_at - requests.scheduled_at).max()),
        "peak_queue_depth": peak_depth(requests),
        **measure_littles_law(requests, timeline, start, end),
        "errors": dict(errors.most_common(5)),
    }
    # Plain Python scalars: numpy ones print and compare badly.
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in s.items()}


def measure_littles_law(requests: pd.DataFrame, timeline: pd.DataFrame, start: float, end: float) -> dict[str, float]:
    """Little's law checked on a run: L (mean queue depth, sampled by the queue's timeline) against λ·W
    (from the requests table). `theory.littles_law` is the solver; this is the measurement."""
    queued = _queue_time(requests)
    total = end - start
    lam_w = (len(queued) / total) * queued.mean() if total > 0 and len(queued) else math.nan
    L = math.nan
    if timeline is not None and len(timeline):
        window = timeline[(timeline.t >= start) & (timeline.t <= end)]
        if len(window) >= 2:
            L = float(window.queue_depth.mean())
    ratio = L / lam_w if lam_w and not _isnan(L) and not _isnan(lam_w) else math.nan
    return {"little_L": L, "little_lambda_W": float(lam_w), "little_ratio": ratio}


# -- JSON ---------------------------------------------------------------------------------------------
def _frame_doc(df: pd.DataFrame) -> dict[str, Any]:
    return {"columns": list(df.columns), "dtypes": {c: str(t) for c, t in df.dtypes.items()},
            "data": df.astype(object).where(df.notna(), None).values.tolist()}


def _frame(doc: dict[str, Any]) -> pd.DataFrame:
    df = pd.DataFrame(doc["data"], columns=doc["columns"])
    return df.astype(doc["dtypes"]) if len(df) else df.astype(doc["dtypes"], errors="ignore")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _isnan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)
