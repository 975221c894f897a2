"""The paged KV cache against the left-padded one and plain Hugging Face: prints measured figures side
by side in one run (repeats interleaved, so drift on a shared machine hits every side alike); asserts
nothing.

1. Decode step at batch 32 (the 32 prompts of the burst below, after prefill): median step time of
   the paged cache, the padded cache, and a plain HF decode step of the same batch and context
   (`model(input_ids, cache=DynamicCache)`, no mask). Target: paged <= 1.1x plain HF.
2. Burst: 32 prompts x 64 tokens (ignore_eos, greedy) through ContinuousBatch(32) in process:
   tokens/s, prefill time (the steps that prefilled), TTFT p50, padding slots, and whether every
   answer equals `generate` alone.
3. Batch 1: `generate` tokens/s of each cache over raw `AutoModelForCausalLM.generate` (10 prompts,
   interleaved). Target >= 0.98.
4. A 64 MB KV budget with mixed prompt lengths (short questions and one long document per batch):
   rows that fit, paged against padded.
5. bf16 (`load_model(dtype="bfloat16")`) against fp32, both paged: decode step at batch 32, batch-1
   tokens/s, and how many greedy answers of the 32 equal the fp32 ones.

    python benchmarks/kv_cache_bench.py [--repeats 3] [--skip-bf16]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time

import numpy as np
import pandas as pd
import torch
from transformers import DynamicCache

import queuelab as ql
from queuelab.generation import GenerationParams
from queuelab.lab import kv_budget
from queuelab.metrics import percentiles
from queuelab.prompts import choose, load_prompts

N, TOKENS = 32, 64


def prompts_for(n: int = N) -> list[str]:
    return choose(n, None, np.random.default_rng(0))


def decode_step(model: ql.LanguageModel, prompts: list[str], steps: int = 12) -> float:
    """Median decode step (seconds) of `model`'s own batch over `prompts`, after a prefill."""
    batch = model.new_batch()
    batch.prefill([model.new_sequence(p, GenerationParams(max_new_tokens=steps + 4, ignore_eos=True))
                   for p in prompts])
    times = [batch.decode().duration_s for _ in range(steps)]
    batch.release(batch.running)
    return statistics.median(times[2:])


def hf_decode_step(model: ql.LanguageModel, prompts: list[str], steps: int = 12) -> float:
    """A plain HF decode step at the same batch and context: left-padded prompts, DynamicCache, no mask."""
    ids = [model.encode(p) for p in prompts]
    width = max(map(len, ids))
    x = torch.tensor([[model.pad_id] * (width - len(i)) + i for i in ids])
    times = []
    with torch.inference_mode():
        cache = DynamicCache(config=model.model.config)
        nxt = model.model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(steps):
            t0 = time.perf_counter()
            nxt = model.model(input_ids=nxt, cache=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def burst(model: ql.LanguageModel, prompts: list[str]) -> tuple[list[ql.Request], pd.DataFrame]:
    async def go() -> tuple[list[ql.Request], pd.DataFrame]:
        async with ql.RequestQueue(model, scheduler=ql.ContinuousBatchScheduler(max_batch=N)) as q:
            reqs = [q.submit(p, max_new_tokens=TOKENS, ignore_eos=True) for p in prompts]
            for r in reqs:
                await r
            return reqs, q.steps()
    return asyncio.run(go())


def section_decode(models: dict[str, ql.LanguageModel], prompts: list[str], repeats: int) -> None:
    print(f"\n1. decode step at batch {len(prompts)} (median of 10 steps; mean and range over {repeats} repeats)")
    seen: dict[str, list[float]] = {k: [] for k in [*models, "plain HF"]}
    for _ in range(repeats):
        for name, m in models.items():
            seen[name].append(decode_step(m, prompts))
        seen["plain HF"].append(hf_decode_step(models["padded"], prompts))
    hf = np.mean(seen["plain HF"])
    for name, v in seen.items():
        print(f"   {name:8s} {np.mean(v) * 1e3:6.1f} ms ({min(v) * 1e3:.1f}-{max(v) * 1e3:.1f})   "
              f"{np.mean(v) / hf:.2f}x plain HF")


def section_burst(models: dict[str, ql.LanguageModel], prompts: list[str], repeats: int) -> None:
    print(f"\n2. burst: {N} prompts x {TOKENS} tokens through ContinuousBatch({N}), in process")
    fp = models["paged"]
    same_params = GenerationParams(max_new_tokens=TOKENS, ignore_eos=True)  # as the burst's requests
    alone = [fp.run_to_completion([fp.new_sequence(p, same_params)])[0].text for p in prompts[:8]]
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in models}
    for _ in range(repeats):
        for name, m in models.items():
            reqs, steps = burst(m, prompts)
            texts = [r.completion.text for r in reqs]
            span = max(r.finished for r in reqs) - min(r.arrived for r in reqs)
            tokens = sum(r.completion.completion_tokens for r in reqs)
            pre = steps[steps.prefill_tokens > 0]
            rows[name].append({"tok_s": tokens / span, "prefill_s": pre.duration_s.sum(),
                               "prefill_tok_s": pre.prefill_tokens.sum() / pre.duration_s.sum(),
                               "ttft_p50": percentiles([r.ttft for r in reqs]).p50,
                               "pad": steps.pad_tokens.sum() / max(steps.kv_tokens.sum(), 1),
                               "same": sum(a == b for a, b in zip(alone, texts[:8]))})
    base = np.mean([r["tok_s"] for r in rows["padded"]])
    for name, rs in rows.items():
        tok = [r["tok_s"] for r in rs]
        print(f"   {name:7s} {np.mean(tok):6.1f} tokens/s ({min(tok):.1f}-{max(tok):.1f}), {np.mean(tok) / base:.2f}x padded; "
              f"prefill {np.mean([r['prefill_s'] for r in rs]):.2f} s "
              f"({np.mean([r['prefill_tok_s'] for r in rs]):.0f} prompt tokens/s); "
              f"TTFT p50 {np.mean([r['ttft_p50'] for r in rs]):.2f} s; padding {np.mean([r['pad'] for r in rs]):.0%} "
              f"of KV slots; first 8 answers equal to generate alone: {rs[-1]['same']}/8")


def raw_generate(model: ql.LanguageModel, prompt: str, tokens: int) -> tuple[int, float]:
    ids = torch.tensor([model.encode(prompt)])
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                   min_new_tokens=tokens, do_sample=False, pad_token_id=model.pad_id)
    return out.shape[1] - ids.shape[1], time.perf_counter() - t0


def section_batch1(models: dict[str, ql.LanguageModel], prompts: list[str], repeats: int) -> None:
    print(f"\n3. batch 1: generate tokens/s over raw HF generate (10 prompts x 32 tokens, {repeats} rounds, interleaved)")
    tok: dict[str, list[float]] = {k: [] for k in [*models, "raw HF"]}
    for _ in range(repeats):
        for p in prompts[:10]:
            n, dt = raw_generate(models["padded"], p, 32)
            tok["raw HF"].append(n / dt)
            for name, m in models.items():
                c = m.generate(p, max_new_tokens=32, temperature=0.0, on_token=lambda s: None)
                if c.completion_tokens == 32:  # as raw HF's min_new_tokens: same-length answers only
                    tok[name].append(c.completion_tokens / c.duration_s)
    raw = np.mean(tok["raw HF"])
    for name, v in tok.items():
        print(f"   {name:7s} {np.mean(v):5.1f} tokens/s   {np.mean(v) / raw:.3f}x raw HF")


def section_budget(models: dict[str, ql.LanguageModel]) -> None:
    print("\n4. a 64 MB KV budget, prompts in arrival order: 15 short questions and one long note-summary in 16")
    records = load_prompts()
    short = [p["prompt"] for p in records if p["output"] == "short"]
    notes = [p["prompt"] for p in records if p["output"] != "short"]
    long = f"Summarise these notes in one sentence: {' '.join(notes[:14])}"
    mix = [long if i % 16 == 3 else short[i % len(short)] for i in range(64)]
    paged = models["paged"]
    per_token, budget = kv_budget.bytes_per_token(paged), 64 * 10**6
    contexts = [paged.count_tokens(p) + TOKENS for p in mix]
    fit = {kind: kv_budget.rows_that_fit(budget, per_token, contexts, paged=kind == "paged") for kind in models}
    print(f"   {per_token:,} bytes per token; rows that fit: paged {fit['paged']}, padded {fit['padded']} "
          f"({fit['paged'] / max(fit['padded'], 1):.1f}x)")
    # The real paged cache with exactly that budget holds those rows through their last token, and no more.
    blocks = budget // (per_token * paged.block_size)
    m = ql.load_model(kv_cache="paged", kv_blocks=blocks)
    batch = m.new_batch()
    batch.prefill([m.new_sequence(p, GenerationParams(max_new_tokens=TOKENS, ignore_eos=True)) for p in mix[:fit["paged"]]])
    while batch.running:
        used = batch.kv_blocks()[0]
        batch.decode()
    print(f"   real check: {fit['paged']} rows decoded to {TOKENS} tokens in a {blocks}-block budget "
          f"(peak {used} blocks, {used * paged.block_size * per_token / 1e6:.1f} MB)")


def section_bf16(fp32: ql.LanguageModel, prompts: list[str], repeats: int) -> None:
    print("\n5. bf16 against fp32 (both paged)")
    bf16 = ql.load_model(kv_cache="paged", dtype="bfloat16")
    steps = {"fp32": [], "bf16": []}
    for _ in range(repeats):
        steps["fp32"].append(decode_step(fp32, prompts))
        steps["bf16"].append(decode_step(bf16, prompts))
    a, b = np.mean(steps["fp32"]), np.mean(steps["bf16"])
    print(f"   decode step at batch {len(prompts)}: fp32 {a * 1e3:.1f} ms, bf16 {b * 1e3:.1f} ms: {a / b:.2f}x faster")
    one = {"fp32": [], "bf16": []}
    for p in prompts[:6]:
        for name, m in (("fp32", fp32), ("bf16", bf16)):
            c = m.generate(p, max_new_tokens=32)
            one[name].append(c.completion_tokens / c.duration_s)
    print(f"   batch 1: fp32 {np.mean(one['fp32']):.1f} tokens/s, bf16 {np.mean(one['bf16']):.1f} tokens/s")
    same = sum(x.text == y.text for x, y in zip(fp32.generate_batch(prompts, max_new_tokens=TOKENS),
                                                bf16.generate_batch(prompts, max_new_tokens=TOKENS)))
    print(f"   greedy answers (64 tokens) equal to fp32: {same}/{len(prompts)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-bf16", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, fp32")
    models = {"paged": ql.load_model(kv_cache="paged"), "padded": ql.load_model(kv_cache="padded")}
    prompts = prompts_for()
    section_decode(models, prompts, a.repeats)
    section_burst(models, prompts, a.repeats)
    section_batch1(models, prompts, a.repeats)
    section_budget(models)
    if not a.skip_bf16:
        section_bf16(models["paged"], prompts, a.repeats)


if __name__ == "__main__":
    main()
