"""Queueing theory against the real queue: measured mean wait ÷ Pollaczek–Khinchine, over seeds.

For each service-time scale and load, independent seeded Poisson runs go through a real
`RequestQueue` on a `SimulatedModel` with exponential service; each run's prediction uses only
that run's own arrival rate and service moments. The load is aimed with the service time as the
queue actually serves it (`queueing.effective_service`), so "ρ 0.9" is 0.9 of the true occupancy.

Printed per row: runs, the measured ρ, the mean ratio with its standard error; the same with the
prediction given the server's occupancy (its busy time per request, `RequestQueue.busy_s`: serving
plus the hand-offs and wake-ups no request's service time contains); the ratio for the Lindley
recursion on each run's own arrivals and services (the queue as an ideal FIFO server); and the
idle worker's dispatch latency. "queue's excess" pairs each run with its own Lindley replay
(ratio − Lindley ratio): the path's randomness cancels, leaving what the queue itself adds.

    .venv/bin/python benchmarks/queueing_bench.py [--quick]
"""

from __future__ import annotations

import asyncio
import sys
import time

import pandas as pd

import queuelab as ql
from queuelab import queueing

QUICK = "--quick" in sys.argv
SCALES = [0.002, 0.02] if QUICK else [0.002, 0.01, 0.03]
LOADS = [0.3, 0.6, 0.9]
SEEDS = range(3 if QUICK else 4)
SEED_STEP = 100  # each (scale, load) gets its own seeds: reusing one set everywhere would correlate the rows
BUDGET_S = 8 if QUICK else 12  # seconds of arrivals per run, at most: n = min(requests_for(ρ), budget)


def model(scale: float):
    return lambda seed: ql.SimulatedModel(ql.Exponential(scale), seed=seed)


async def main() -> None:
    rows = []
    t0 = time.perf_counter()
    for scale in SCALES:
        served = await queueing.effective_service(model(scale), n=200 if scale < 0.01 else 60)
        for rho in LOADS:
            n = min(queueing.requests_for(rho), max(200, int(BUDGET_S * rho / served)))
            for k in SEEDS:
                seed = SEED_STEP * (len(rows) // len(SEEDS) + 1) + k
                row = await queueing.measure(model(scale), rho, seed=seed, n=n, mean_service=served)
                row["lindley ratio"] = row["lindley wait"] / row["predicted"]
                # Paired: the same run's ratio minus its ideal FIFO server's, so the path's own randomness
                # cancels and what is left is what the queue adds.
                row["excess"] = row["ratio"] - row["lindley ratio"]
                rows.append({"S (ms)": scale * 1e3, **row})
    df = pd.DataFrame(rows)
    g = df.groupby(["S (ms)", "target ρ"])
    out = pd.DataFrame({"runs": g.size(), "n": g["n"].first(), "ρ": g["ρ"].mean(), "mean ratio": g["ratio"].mean(),
                        "se": g["ratio"].sem(), "ρ occupied": g["ρ occupied"].mean(),
                        "ratio (occupancy)": g["ratio (occupancy)"].mean(), "se (occ)": g["ratio (occupancy)"].sem(),
                        "lindley ratio": g["lindley ratio"].mean(), "queue's excess": g["excess"].mean(),
                        "se (excess)": g["excess"].sem(), "dispatch (ms)": g["dispatch"].mean() * 1e3})
    pd.set_option("display.width", 160)
    print(out.round(3).to_string())
    by_scale = pd.concat({"service times": df.groupby("S (ms)")["ratio"].agg(["mean", "sem"]),
                          "occupancy": df.groupby("S (ms)")["ratio (occupancy)"].agg(["mean", "sem"]),
                          "queue's excess": df.groupby("S (ms)")["excess"].agg(["mean", "sem"])}, axis=1)
    print("\nmean ratio over every load and seed, per service time (P-K from the requests' service times,")
    print("and from the server's occupancy):")
    print(by_scale.round(3).to_string())
    print(f"\n({len(df)} runs in {time.perf_counter() - t0:.0f} s; 1 = the formula exactly)")


if __name__ == "__main__":
    asyncio.run(main())
