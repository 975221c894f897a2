"""Batching benchmark: prints measured figures side by side in one run; asserts nothing.

1. Burst: 32 requests from the prompt set, max_new_tokens 64, all submitted at once, through
   Sequential, StaticBatch(8), ContinuousBatch(8/16/32) and transformers' own continuous batching
   (`generate_batch` on the HF model): tokens/s, speed-up over sequential (mean and range over
   repeats), p50/p99 e2e, and whether greedy answers equal the sequential ones.
   Targets: ContinuousBatch(16) >= 4x sequential, ContinuousBatch(32) >= 5x, faster than transformers'.
2. Memory: peak resident memory and KV-cache bytes of a static batch of 1, 8, 16 (fresh processes).
3. The calibrated twin: its decode step times against a fresh measurement of the real model's at
   batch 1-16 (target within 15 %), and the burst of (1) through ContinuousBatch(8) on the twin
   against the real run (req/s within 15 %).
4. Poisson arrivals at 2x the sequential capacity, every scheduler: req/s, p50/p99 e2e and TTFT,
   peak queue depth (the real model; --poisson-s seconds of arrivals each).

    python benchmarks/batching_bench.py [--repeats 2] [--poisson-s 120] [--skip-hf] [--device auto]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import torch

import queuelab as ql
from queuelab.metrics import percentiles
from queuelab.prompts import choose

N, TOKENS = 32, 64


def burst(model: ql.LanguageModel, scheduler: ql.Scheduler, prompts: list[str], tokens: int = TOKENS):
    async def go():
        async with ql.RequestQueue(model, scheduler=scheduler, max_queue_size=len(prompts)) as q:
            t0 = time.perf_counter()
            reqs = [q.submit(p, max_new_tokens=tokens) for p in prompts]
            await asyncio.gather(*reqs)
            return reqs, time.perf_counter() - t0, q.steps()

    return asyncio.run(go())


def hf_continuous(model, prompts: list[str], tokens: int = TOKENS) -> tuple[list[list[int]], float]:
    """transformers' own continuous batching on the same prompts (greedy, same EOS)."""
    from transformers import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=model.eos_id,
                           pad_token_id=model.pad_id)
    inputs = [model.encode(p) for p in prompts]
    t0 = time.perf_counter()
    out = model.model.generate_batch(inputs=inputs, generation_config=cfg, progress_bar=False)
    secs = time.perf_counter() - t0
    seqs = []
    for o in out.values():
        ids = list(o.generated_tokens)
        seqs.append(ids[: ids.index(model.eos_id) + 1] if model.eos_id in ids else ids)
    return seqs, secs


def section_burst(model, prompts, repeats: int, skip_hf: bool, only: set[str] | None = None) -> dict:
    configs = {
        "Sequential": ql.SequentialScheduler,
        "StaticBatch(8)": lambda: ql.StaticBatchScheduler(max_batch=8, max_wait_s=0.05),
        "ContinuousBatch(8)": lambda: ql.ContinuousBatchScheduler(max_batch=8),
        "ContinuousBatch(16)": lambda: ql.ContinuousBatchScheduler(max_batch=16),
        "ContinuousBatch(32)": lambda: ql.ContinuousBatchScheduler(max_batch=32),
    }
    configs = {k: v for k, v in configs.items() if only is None or k in only}
    rates: dict[str, list[float]] = {k: [] for k in configs}
    rates["transformers generate_batch"] = []
    detail: dict[str, dict] = {}
    reference: list[str] | None = None
    for r in range(repeats):
        order = list(configs) if r % 2 == 0 else list(reversed(configs))  # drift lands on all alike
        for name in order:
            reqs, secs, steps = burst(model, configs[name](), prompts)
            tokens = sum(q.completion.completion_tokens for q in reqs)
            rates[name].append(tokens / secs)
            texts = [q.completion.text for q in reqs]
            if name == "Sequential":
                reference = reference or texts
                detail["lengths"] = {p: q.completion.completion_tokens for p, q in zip(prompts, reqs)}
            e2e = percentiles(q.e2e for q in reqs)
            detail.setdefault("step_logs", []).append(steps[steps.decode_tokens > 0])
            detail.setdefault("logs_by_config", {}).setdefault(name, []).append(steps)
            detail[name] = {"req_s": len(reqs) / secs, "p50": e2e.p50, "p99": e2e.p99, "texts": texts,
                            "mean_batch": float(steps.loc[steps.decode_tokens > 0, "batch_size"].mean())}
        if not skip_hf:
            try:
                seqs, secs = hf_continuous(model, prompts)
                rates["transformers generate_batch"].append(sum(map(len, seqs)) / secs)
            except Exception as e:  # report, do not hide: its CPU path may not exist in every version
                print(f"  transformers generate_batch failed: {type(e).__name__}: {str(e)[:200]}")
                skip_hf = True
    base = np.array(rates["Sequential"])
    print(f"\n1. burst: {N} requests at once, max_new_tokens {TOKENS}, {repeats} repeat(s), interleaved")
    print(f"   {'':28} {'tokens/s':>9} {'x sequential (range)':>22} {'req/s':>6} {'p50 e2e':>8} {'p99 e2e':>8} "
          f"{'mean batch':>10} {'= sequential':>12}")
    for name, v in rates.items():
        if not v:
            continue
        x = np.array(v) / base[: len(v)]
        d = detail.get(name)
        same = sum(a == b for a, b in zip(d["texts"], reference)) if d and reference else None
        extra = (f"{d['req_s']:6.2f} {d['p50']:7.1f}s {d['p99']:7.1f}s {d['mean_batch']:10.1f} {same:>8}/{N}"
                 if d else "")
        print(f"   {name:28} {np.mean(v):9.1f} {x.mean():8.2f}x ({x.min():.2f}-{x.max():.2f}) {extra}")
    return detail


MEMORY_CHILD = r"""
import json, sys, psutil, queuelab as ql
from queuelab.generation import GenerationParams
from queuelab.prompts import choose
import numpy as np
b, device, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
proc = psutil.Process()
m = ql.load_model(name, device=device)
m.generate("warm up", max_new_tokens=2)
before = peak = proc.memory_info().rss
prompts = choose(b, None, np.random.default_rng(1))
batch = m.new_batch()
batch.prefill([m.new_sequence(p, GenerationParams(max_new_tokens=64)) for p in prompts])
kv = batch.kv_bytes()
while batch.running:
    batch.decode()
    kv, peak = max(kv, batch.kv_bytes()), max(peak, proc.memory_info().rss)
print(json.dumps({"rss_before": before, "rss_peak": peak, "kv": kv, "model": m.info()["memory_bytes"]}))
"""


def section_memory(name: str, device: str) -> None:
    print("\n2. memory of a static batch, max_new_tokens 64 (fresh process each)")
    for b in (1, 8, 16):
        out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(b), device, name], capture_output=True, text=True,
                             check=True).stdout
        m = json.loads(out.strip().splitlines()[-1])
        print(f"   batch {b:2}: resident {m['rss_before'] / 1e6:5.0f} MB before, peak {m['rss_peak'] / 1e6:5.0f} MB "
              f"during the batch (+{(m['rss_peak'] - m['rss_before']) / 1e6:4.0f} MB, sampled after each step); "
              f"KV cache at its largest {m['kv'] / 1e6:5.1f} MB; weights {m['model'] / 1e6:.0f} MB")


def section_twin(model, prompts, detail: dict) -> None:
    print("\n3. twins: calibrated from isolated steps, and fitted to the step log of the real bursts")
    lengths = detail["lengths"]
    answer = lambda p: lengths.get(p, TOKENS)  # noqa: E731  the real model's greedy answer lengths
    t0 = time.perf_counter()
    calibrated = ql.SimulatedModel.calibrated_from(model, answer_tokens=answer)
    c = calibrated.step_costs
    print(f"   calibrated_from took {time.perf_counter() - t0:.1f} s: prefill {c.prefill_base_s * 1e3:.1f} ms + "
          f"{c.prefill_per_token_s * 1e3:.2f} ms/token; decode table {_table(c)}")
    # Fitted on the ContinuousBatch(16) and (32) bursts; ContinuousBatch(8) is held out to validate it.
    logs = detail["logs_by_config"]
    fitted = ql.SimulatedModel.fitted_to(pd.concat(logs["ContinuousBatch(16)"] + logs["ContinuousBatch(32)"]),
                                         model, answer_tokens=answer)
    print(f"   fitted_to (the ContinuousBatch(16) and (32) bursts' steps): decode table {_table(fitted.step_costs)}")
    held_out = pd.concat(logs["ContinuousBatch(8)"])
    real = held_out[held_out.decode_tokens > 0].groupby("batch_size").duration_s.agg(["median", "size"])
    real_req_s = np.mean([len(prompts) / _span(log) for log in logs["ContinuousBatch(8)"]])
    for label, twin in (("calibrated_from", calibrated), ("fitted_to", fitted)):
        errs = [twin.step_costs.decode(b) / real.loc[b, "median"] - 1 for b in (1, 2, 4, 8)
                if b in real.index and real.loc[b, "size"] >= 3]
        reqs, secs, _ = burst(twin, ql.ContinuousBatchScheduler(max_batch=8), prompts)
        print(f"   {label:16} held-out ContinuousBatch(8) burst: decode step error at batch 1-8 "
              f"{min(errs):+.0%} to {max(errs):+.0%}; twin {len(reqs) / secs:.2f} req/s vs real {real_req_s:.2f} "
              f"({len(reqs) / secs / real_req_s - 1:+.1%}; target within 15 %)")


def _table(costs) -> str:
    return ", ".join(f"{b}: {s * 1e3:.0f} ms" for b, s in costs.decode_table)


def _span(steps: pd.DataFrame) -> float:
    last = steps.iloc[-1]
    return float(last.t + last.duration_s - steps.t.iloc[0])


def section_poisson(model, seconds: float, detail: dict) -> None:
    capacity = detail["Sequential"]["req_s"]
    rate = 2 * capacity
    print(f"\n4. Poisson arrivals at {rate:.2f} req/s (2x the sequential capacity of {capacity:.2f} req/s measured "
          f"in 1), {seconds:.0f} s of arrivals, max_new_tokens {TOKENS}, seed 0; every request served to the end")
    print(f"   {'':24} {'req/s':>6} {'p50 e2e':>8} {'p99 e2e':>8} {'p50 TTFT':>9} {'p99 TTFT':>9} {'peak depth':>10}")
    for name, make in {"Sequential": ql.SequentialScheduler,
                       "StaticBatch(8)": lambda: ql.StaticBatchScheduler(max_batch=8, max_wait_s=0.05),
                       "ContinuousBatch(16)": lambda: ql.ContinuousBatchScheduler(max_batch=16),
                       "AdaptiveBatch(1-32)": lambda: ql.AdaptiveBatchScheduler(max_batch=32)}.items():
        async def go(make=make):
            async with ql.RequestQueue(model, scheduler=make(), max_queue_size=100_000) as q:
                return await ql.stress.poisson(q, rate=rate, duration=seconds, seed=0, max_new_tokens=TOKENS,
                                               progress=False)

        s = asyncio.run(go()).summary
        print(f"   {name:24} {s['req_per_s']:6.2f} {s['e2e_p50']:7.1f}s {s['e2e_p99']:7.1f}s "
              f"{s['ttft_p50']:8.2f}s {s['ttft_p99']:8.2f}s {s['peak_queue_depth']:10}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--poisson-s", type=float, default=120.0)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--twin-only", action="store_true", help="only what section 3 needs, then section 3")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default=ql.EMBEDDED, help="e.g. tiny-random for a quick check of the script")
    a = ap.parse_args()
    model = ql.load_model(a.model, device=a.device)
    info = model.info()
    gpu = torch.cuda.get_device_name() if info["device"].startswith("cuda") else None
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
          f"model {info['name']} on {info['device']} ({gpu or 'no GPU'}), {info['dtype']}")
    prompts = choose(N, None, np.random.default_rng(0))
    model.generate("warm up", max_new_tokens=4)
    if a.twin_only:
        only = {"Sequential", "ContinuousBatch(8)", "ContinuousBatch(16)", "ContinuousBatch(32)"}
        section_twin(model, prompts, section_burst(model, prompts, a.repeats, True, only))
        return
    detail = section_burst(model, prompts, a.repeats, a.skip_hf)
    if not a.skip_memory:
        section_memory(a.model, a.device)
    section_twin(model, prompts, detail)
    if a.poisson_s > 0:
        section_poisson(model, a.poisson_s, detail)


if __name__ == "__main__":
    main()
