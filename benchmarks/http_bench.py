"""HTTP path benchmarks: print figures side by side in one run; assert nothing.

1. Overhead: req/s through `queuelab serve` over a real loopback socket (HTTPTarget, streaming) vs the
   same requests in-process, SimulatedModel(0.01) (target ratio >= 0.9): sustained (closed loop,
   16 users), and a burst (rapid fire: every request admitted at once).
2. Load-generator capacity: a zero-delay model behind the server, offered far more than it can take:
   the completed req/s is what one process of load generator plus server sustains on this machine.

The server runs in a second process, so the load generator and the server do not share one loop.

    python benchmarks/http_bench.py [--n 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import httpx

import queuelab as ql
from queuelab import stress
from queuelab.load.http_target import HTTPTarget


def start_server(model: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "queuelab", "serve", "--model", model, "--port", str(port),
                             "--max-queue", "100000"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("server did not start")
        time.sleep(0.1)


async def experiment(target: object, kind: str, n: int) -> ql.StressRun:
    if kind == "closed loop":
        return await stress.concurrency(target, users=16, n=n, max_new_tokens=8, progress=False)
    return await stress.rapid_fire(target, n=n, max_new_tokens=8, progress=False)


async def over_http(port: int, kind: str, n: int) -> ql.StressRun:
    async with HTTPTarget(f"http://127.0.0.1:{port}") as target:
        return await experiment(target, kind, n)


async def in_process(kind: str, n: int) -> ql.StressRun:
    async with ql.RequestQueue(ql.SimulatedModel(0.01), max_queue_size=100_000) as q:
        return await experiment(q, kind, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--port", type=int, default=8765)
    a = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores")
    for kind in ("closed loop", "rapid fire"):
        proc = start_server("sim:0.01", a.port)
        try:
            http = asyncio.run(over_http(a.port, kind, a.n))
        finally:
            proc.send_signal(2)
            proc.wait(30)
        local = asyncio.run(in_process(kind, a.n))
        h, loc = http.summary["req_per_s"], local.summary["req_per_s"]
        print(f"HTTP overhead, {kind} ({a.n} requests, SimulatedModel(0.01), 8 streamed tokens each): "
              f"in-process {loc:.1f} req/s, over HTTP {h:.1f} req/s, ratio {h / loc:.3f} (target >= 0.9)")
    proc = start_server("sim:0", a.port + 1)
    try:
        cap = asyncio.run(over_http(a.port + 1, "rapid fire", a.n * 3))
    finally:
        proc.send_signal(2)
        proc.wait(30)
    s = cap.summary
    print(f"load generator + server capacity, zero-delay model: {s['req_per_s']:.0f} completed req/s "
          f"({s['sent']} requests, {s['n_completed']} completed, e2e p50 {s['e2e_p50'] * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
