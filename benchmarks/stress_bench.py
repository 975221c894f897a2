"""Load-generator accuracy: dispatch error (actual − scheduled send time) of open-loop runs.

Target: p99 <= 5 ms at 200 requests/s against a SimulatedModel. Prints figures; asserts nothing.

    python benchmarks/stress_bench.py [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio

import queuelab as ql
from queuelab import stress


async def one(kind: str, rate: float, duration: float, service: float) -> None:
    async with ql.RequestQueue(ql.SimulatedModel(service), max_queue_size=100_000) as q:
        run = await getattr(stress, kind)(q, rate=rate, duration=duration, max_new_tokens=4, progress=False)
    s = run.summary
    r = run.requests
    achieved = (len(r) - 1) / (r.sent_at.max() - r.sent_at.min())
    print(f"{kind:8s} {rate:6.0f} req/s offered, {achieved:7.1f} sent/s, service {service * 1e3:4.1f} ms "
          f"(load {rate * service:.1f}): dispatch error p50 {s['dispatch_error_p50_s'] * 1e3:.2f} ms, "
          f"p99 {s['dispatch_error_p99_s'] * 1e3:.2f} ms, max {s['dispatch_error_max_s'] * 1e3:.2f} ms; "
          f"peak queue depth {s['peak_queue_depth']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=10.0)
    a = ap.parse_args()
    print("target: dispatch error p99 <= 5 ms at 200 req/s")
    for kind, rate, service in [("poisson", 200, 0.004), ("constant", 200, 0.004),
                                ("poisson", 200, 0.02), ("poisson", 1000, 0.0005)]:
        asyncio.run(one(kind, rate, a.duration, service))


if __name__ == "__main__":
    main()
