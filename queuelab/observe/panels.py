"""The four monitor panels as rows of (label, text), from a `QueueStats.as_dict()` snapshot.

One definition, two renderers: the notebook's ipywidgets Dashboard (HTML) and the terminal's
`queuelab monitor` (Rich) show the same panels because both draw these rows.
"""

from __future__ import annotations

from typing import Any

from queuelab.metrics import format_seconds

Rows = list[tuple[str, str]]


def _uptime(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def stats_rows(s: dict[str, Any]) -> Rows:
    e2e = s["latency"]["e2e"]
    return [("Uptime", _uptime(s["uptime_s"])), ("Queue size", str(s["queue_size"])),
            ("Processing", str(s["processing"])), ("Submitted", str(s["submitted"])),
            ("Completed", str(s["completed"])), ("Failed", str(s["failed"])), ("Cancelled", str(s["cancelled"])),
            ("Rejected", str(s["rejected"])), (f"Req/s ({s['window_s']:.0f} s)", f"{s['req_per_s']:.2f}"),
            (f"Tokens/s ({s['window_s']:.0f} s)", f"{s['tokens_per_s']:.1f}"),
            ("e2e p50 / p99", f"{format_seconds(e2e['p50'])} / {format_seconds(e2e['p99'])}")]


def active_rows(s: dict[str, Any], limit: int = 8) -> Rows | None:
    """None when nothing is processing; one request in detail, or every request of a running batch."""
    active = s["active"]
    if not active:
        return None
    if len(active) == 1:
        a = active[0]
        return [("Request", f"#{a['id']}"), ("Prompt", a["prompt_preview"]),
                ("Elapsed", f"{a['elapsed_s']:.1f} s"), ("Tokens so far", str(a["tokens"]))]
    rows = [("Batch", f"{len(active)} requests running")]
    rows += [(f"#{a['id']}", f"{a['elapsed_s']:.1f} s · {a['tokens']} tok · {a['prompt_preview'][:24]}")
             for a in active[:limit]]
    if len(active) > limit:
        rows.append(("…", f"{len(active) - limit} more"))
    return rows


def recent_rows(s: dict[str, Any], n: int = 10, preview: int = 28) -> list[dict[str, str]]:
    """Newest first: id, status, wait, e2e, tokens, answer (or error) preview."""
    return [{"id": str(r["id"]), "status": r["status"], "wait": format_seconds(r["wait"]),
             "e2e": format_seconds(r["e2e"]), "tokens": str(r["tokens"]), "preview": r["preview"][:preview]}
            for r in s["recent"][:n]]


def health_rows(s: dict[str, Any]) -> Rows:
    h, m = s["health"], s["health"]["model"]
    alive = "yes" if h["worker_alive"] else "no" if h["state"] == "broken" else "no (queue stopped)"
    rows = [("Model", str(m.get("name", "?"))), ("Parameters", f"{m.get('parameters') or 0:,}"),
            ("Device / dtype", f"{m.get('device', '?')} / {m.get('dtype', '?')}"),
            ("Memory", f"{(m.get('memory_bytes') or 0) / 1e6:.0f} MB"), ("Worker alive", alive),
            ("Event-loop lag", format_seconds(h["loop_lag_s"])), ("Queue state", h["state"])]
    kv = s.get("kv")
    if kv:
        # Short enough not to wrap in a narrow panel; the block size is the model's, in Health's model info.
        rows.append(("KV blocks", f"{kv['blocks_used']:,}/{kv['blocks_total']:,} · last {kv['last_block_fill']:.0%} full"))
    if h["error"]:
        rows.append(("Error", h["error"]))
    return rows
