"""Model wrapper benchmark: prints measured figures, asserts nothing.

1. Wrapper overhead: tokens/s of `model.generate` vs raw `AutoModelForCausalLM.generate` on the same
   10 prompts, interleaved in one run (target ratio >= 0.97).
2. Cached load time of the default model, in a fresh process (target <= 3 s).
3. Batch-1 decode tokens/s against the memory-bandwidth bound (weight bytes read per token).

    python benchmarks/model_bench.py [--tokens 48] [--repeats 2]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time

import numpy as np
import torch

import queuelab as ql

PROMPTS = [
    "What is the capital of France?",
    "Explain what a queue is in two sentences.",
    "Write a haiku about waiting.",
    "List three uses of a hash table.",
    "Why is the sky blue?",
    "Give me a recipe for pancakes.",
    "What does FIFO stand for?",
    "Summarise the plot of Hamlet in one sentence.",
    "How do airplanes fly?",
    "Translate 'good morning' into French and Spanish.",
]


def raw_generate(model: ql.LanguageModel, prompt: str, tokens: int) -> tuple[int, float]:
    ids = torch.tensor([model.encode(prompt)])
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                   do_sample=False, pad_token_id=model.pad_id, eos_token_id=model.eos_id)
    dt = time.perf_counter() - t0
    new = out[0, ids.shape[1]:].tolist()
    if model.eos_id in new:
        new = new[: new.index(model.eos_id) + 1]
    return len(new), dt


def wrapper_overhead(model: ql.LanguageModel, tokens: int, repeats: int) -> None:
    raw_tok = raw_s = ql_tok = ql_s = 0.0
    model.generate(PROMPTS[0], max_new_tokens=4)  # warm-up
    for _ in range(repeats):
        for p in PROMPTS:  # interleaved, so drift in machine load hits both sides alike
            n, dt = raw_generate(model, p, tokens)
            raw_tok, raw_s = raw_tok + n, raw_s + dt
            c = model.generate(p, max_new_tokens=tokens, on_token=lambda s: None)
            ql_tok, ql_s = ql_tok + c.completion_tokens, ql_s + c.duration_s
    raw_rate, ql_rate = raw_tok / raw_s, ql_tok / ql_s
    print(f"wrapper overhead: raw generate {raw_rate:.1f} tok/s, ql generate (streaming) {ql_rate:.1f} tok/s, "
          f"ratio {ql_rate / raw_rate:.3f} (target >= 0.97)")


def cached_load_time() -> None:
    ql.load_model()  # make sure the cache exists
    code = ("import time, queuelab as ql; t=time.perf_counter(); import transformers, torch; t1=time.perf_counter(); "
            "ql.load_model(); t2=time.perf_counter(); print(f'{t1-t:.2f} {t2-t1:.2f}')")
    imports, load = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                              check=True).stdout.split())
    print(f"cached load of the default model: {load:.2f} s (target <= 3 s), plus {imports:.2f} s importing torch+transformers")


def read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    a = np.ones(int(gib * 2**30 / 4), dtype=np.float32)
    best = min(_timed(a.sum) for _ in range(repeats))
    return a.nbytes / best


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def decode_vs_bandwidth(model: ql.LanguageModel, tokens: int) -> None:
    steps = secs = 0.0
    for p in PROMPTS[:5]:
        c = model.generate(p, max_new_tokens=tokens)
        if c.completion_tokens > 1:  # decode steps only: the first token's time is prefill
            steps += c.completion_tokens - 1
            secs += c.duration_s - c.ttft_s
    rate = steps / secs
    weight_bytes = model.info()["memory_bytes"]
    bw = read_bandwidth()
    bound = bw / weight_bytes
    print(f"batch-1 decode: {rate:.1f} tok/s; memory-bandwidth bound {bound:.1f} tok/s "
          f"({weight_bytes / 1e6:.0f} MB of weights per token at {bw / 1e9:.1f} GB/s measured read bandwidth): "
          f"{rate / bound:.0%} of the bound")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    model = ql.load_model()
    wrapper_overhead(model, a.tokens, a.repeats)
    cached_load_time()
    decode_vs_bandwidth(model, a.tokens)


if __name__ == "__main__":
    main()
