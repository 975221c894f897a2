"""Queueing theory against the real queue: measured mean wait ÷ Pollaczek–Khinchine, over seeds.

For each service-time scale and load, independent seeded Poisson runs go through a real
`RequestQueue` on a `SimulatedModel` with exponential service; each run's prediction uses only
that run's own arrival rate and service moments. The load is aimed with the server's time per request
as one user's requests measure it (`queueing.effective_service`); a busy queue serves a little
differently, so the table gives the ρ each run reached.

Printed per row: runs, the measured ρ, the mean ratio with its standard error, from the requests'
own stamps (wait until the worker picks a request up, service until its answer is handed over);
the same with the queue's overhead counted as the server's time (`queueing.server_time`: the idle
worker's wake-up and the hand-off between requests, which no request's own service contains); the
ratio an ideal FIFO server's run of the same length at the same load is expected to give ("expected":
40 virtual-time seeds; below 1 where a short run at a high load has not forgotten its empty start);
the ratio for the Lindley recursion on each run's own arrivals and services;
and the idle worker's dispatch latency. "queue's excess" pairs each run with its own Lindley replay
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
SEEDS = range(3 if QUICK else 6)
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
                # What an ideal server's run of this length at this load is expected to give (short runs at
                # high load under-shoot: they start empty), over 40 virtual seeds.
                row["expected"] = queueing.replicate(ql.Exponential(scale), min(row["server ρ"], 0.97),
                                                     seeds=range(40), n=n)["ratio"].mean()
                rows.append({"S (ms)": scale * 1e3, **row})
    df = pd.DataFrame(rows)
    g = df.groupby(["S (ms)", "target ρ"])
    out = pd.DataFrame({"runs": g.size(), "n": g["n"].first(), "ρ": g["ρ"].mean(), "mean ratio": g["ratio"].mean(),
                        "se": g["ratio"].sem(), "server ρ": g["server ρ"].mean(),
                        "server ratio": g["server ratio"].mean(), "se (server)": g["server ratio"].sem(),
                        "expected": g["expected"].mean(),
                        "lindley ratio": g["lindley ratio"].mean(), "queue's excess": g["excess"].mean(),
                        "se (excess)": g["excess"].sem(), "dispatch (ms)": g["dispatch"].mean() * 1e3})
    pd.set_option("display.width", 160)
    print(out.round(3).to_string())
    by_scale = pd.concat({"service times": df.groupby("S (ms)")["ratio"].agg(["mean", "sem"]),
                          "server time": df.groupby("S (ms)")["server ratio"].agg(["mean", "sem"]),
                          "expected": df.groupby("S (ms)")["expected"].agg(["mean"]),
                          "queue's excess": df.groupby("S (ms)")["excess"].agg(["mean", "sem"])}, axis=1)
    print("\nmean ratio over every load and seed, per service time (P-K from the requests' own stamps,")
    print("and with the queue's overhead counted as server time):")
    print(by_scale.round(3).to_string())
    print(f"\n({len(df)} runs in {time.perf_counter() - t0:.0f} s; 1 = the formula exactly)")


if __name__ == "__main__":
    asyncio.run(main())
