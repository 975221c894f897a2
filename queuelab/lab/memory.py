"""Memory of model copies and of static batches, each measured in a fresh Python process.

A fresh process starts clean: memory that an earlier experiment freed, but the allocator kept,
does not blur the reading. Two readings: RSS, what `top` and psutil show, counts a page once for
every mapping of it; "physical" counts pages mapped from the same place of the same file once.
They differ when copies of a model map one weights file: three mappings, one copy in memory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence

import pandas as pd

from queuelab.checks import positive_int
from queuelab.models.base import EMBEDDED

MB = 1e6


def resident() -> dict[str, float]:
    """This process's resident memory in bytes: `rss`, and `physical`, with each file's pages counted once.

    RSS adds up every mapping, so a file mapped three times counts three times, though its pages
    sit in memory once (the page cache). `physical` groups file mappings by (device, inode, offset)
    and keeps the largest of each group; anonymous memory (the heap) counts as it is. It reads
    /proc/self/smaps (Linux); elsewhere `physical` is psutil's USS, an estimate that leaves shared pages out.
    """
    import psutil

    rss = float(psutil.Process().memory_info().rss)
    try:
        with open(f"/proc/{os.getpid()}/smaps") as f:
            text = f.read()
    except OSError:
        return {"rss": rss, "physical": float(psutil.Process().memory_full_info().uss)}
    files: dict[tuple[str, str, str], int] = {}
    anonymous, key = 0, None
    for line in text.splitlines():
        head = _MAPPING.match(line)
        if head:
            offset, dev, inode = head.groups()
            key = None if inode == "0" else (dev, inode, offset)
        elif line.startswith("Rss:"):
            kb = int(line.split()[1]) * 1024
            if key is None:
                anonymous += kb
            else:
                files[key] = max(files.get(key, 0), kb)
    return {"rss": rss, "physical": float(anonymous + sum(files.values()))}


# "start-end perms offset dev inode [path]": the header line of each mapping in /proc/<pid>/smaps
_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ ([0-9a-f]+) (\S+) (\d+)")

# Loads `copies` models one after another, answering one short request with each, and reads the
# process's memory before the first and after each. `private` gives each copy its own memory, as
# moving it to a GPU (or converting its dtype) does, instead of the pages mapped from the file.
COPIES_CHILD = r"""
import json, sys
import queuelab as ql
import queuelab.models.transformers_model  # torch and transformers: the reading with no model includes them
from queuelab.lab.memory import resident
copies, name, device, private = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1"

def reading(k):
    return {"copies": k, **resident()}

rows, models = [reading(0)], []
for k in range(1, copies + 1):
    m = ql.load_model(name, device=device)
    if private:
        for t in (*m.model.parameters(), *m.model.buffers()):
            t.data = t.data.clone()
    m.generate("What is a queue?", max_new_tokens=4)
    models.append(m)
    rows.append(reading(k))
print(json.dumps({"rows": rows, "weights": models[0].info()["memory_bytes"]}))
"""

# generate_batch's loop (prefill every prompt, decode until every sequence has finished) for each
# batch size, with the KV-cache size and the process's resident memory read after every step. The
# first pass runs the sizes in increasing order, so each size's peak is not hidden by memory a
# larger batch left in the allocator; later passes (other prompts, from other seeds) only time.
SWEEP_CHILD = r"""
import json, sys, time, psutil
import numpy as np
import queuelab as ql
from queuelab.generation import GenerationParams
from queuelab.prompts import choose
sizes, tokens, seeds = json.loads(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
name, device, kv_cache = sys.argv[4], sys.argv[5], sys.argv[6]
proc = psutil.Process()
m = ql.load_model(name, device=device, kv_cache=kv_cache)
m.generate("warm up", max_new_tokens=4)
idle = proc.memory_info().rss
rows = []
for r, seed in enumerate(seeds):
    prompts = choose(max(sizes), None, np.random.default_rng(seed))
    for b in sizes:
        seqs = [m.new_sequence(p, GenerationParams(max_new_tokens=tokens)) for p in prompts[:b]]
        batch = m.new_batch()
        t0 = time.perf_counter()
        batch.prefill(seqs)
        kv, peak = batch.kv_bytes(), proc.memory_info().rss
        while batch.running:
            batch.decode()
            kv, peak = max(kv, batch.kv_bytes()), max(peak, proc.memory_info().rss)
        wall = time.perf_counter() - t0
        done = [s.completion() for s in seqs]
        rows.append({"seed": seed, "batch": b, "wall_s": wall, "tokens": sum(c.completion_tokens for c in done),
                     "latency_mean_s": sum(c.duration_s for c in done) / b,
                     "latency_max_s": max(c.duration_s for c in done),
                     "kv_peak": kv, "rss_peak": peak if r == 0 else None})
print(json.dumps({"rows": rows, "idle_rss": idle, "weights": m.info()["memory_bytes"]}))
"""


def _child(script: str, *args: str, timeout: float = 600) -> dict:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"the measuring process failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def copies_memory(copies: int = 3, *, name: str = EMBEDDED, device: str = "cpu",
                  modes: Sequence[str] = ("mapped", "private")) -> pd.DataFrame:
    """Resident memory (MB) of a fresh process holding 0, 1, …, `copies` copies of a model.

    `modes`: "mapped", copies as `ql.load_model` gives them (on a CPU, weights memory-mapped from
    the cached safetensors file, so copies can share its pages), and "private", each copy's weights
    in memory of its own, as on a GPU. Each mode runs in its own fresh process; the processes run
    one after the other (two at once would share the file's pages between processes). Columns:
    mode, copies, rss_mb, physical_mb (see `resident`), and the increase of each over the same
    process with torch and transformers imported but no model (rss_added_mb, physical_added_mb).
    """
    positive_int("copies", copies)
    unknown = set(modes) - {"mapped", "private"}
    if unknown or not modes:
        raise ValueError(f"modes must be some of 'mapped', 'private', got {list(modes)!r}")
    docs = [_child(COPIES_CHILD, str(copies), name, device, "1" if mode == "private" else "0") for mode in modes]
    frames = []
    for mode, doc in zip(modes, docs):
        df = pd.DataFrame(doc["rows"])
        df.insert(0, "mode", mode)
        for col in ("rss", "physical"):
            df[f"{col}_mb"] = df[col] / MB
            df[f"{col}_added_mb"] = (df[col] - df[col].iloc[0]) / MB
        df["weights_mb"] = doc["weights"] / MB
        frames.append(df.drop(columns=["rss", "physical"]))
    return pd.concat(frames, ignore_index=True)


def static_batch_sweep(sizes: Sequence[int] = (1, 2, 4, 8, 16), *, max_new_tokens: int = 16,
                       seeds: Sequence[int] = (0, 1, 2), name: str = EMBEDDED, device: str = "cpu",
                       kv_cache: str = "paged") -> pd.DataFrame:
    """Static batches of each size, run to the end in a fresh process, once per seed (other prompts),
    on the `kv_cache` named ("paged" or "padded", as `ql.load_model` takes it).

    One row per (seed, batch): wall_s, tokens generated, tokens_per_s, per-request latency (mean and
    max over the batch, each from the batch's start to that request's last token), kv_peak_mb (the
    KV cache at its largest), and for the first seed peak_rss_mb and above_idle_mb (the process's
    resident memory at its highest during the batch, and its increase over the idle process with
    the model loaded), read after every step.
    """
    sizes = sorted({positive_int("batch size", b) for b in sizes})
    positive_int("max_new_tokens", max_new_tokens)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if kv_cache not in ("paged", "padded"):
        raise ValueError(f"kv_cache must be 'paged' or 'padded', got {kv_cache!r}")
    doc = _child(SWEEP_CHILD, json.dumps(sizes), str(max_new_tokens), json.dumps([int(s) for s in seeds]), name,
                 device, kv_cache)
    df = pd.DataFrame(doc["rows"])
    df["tokens_per_s"] = df.tokens / df.wall_s
    df["kv_peak_mb"] = df.kv_peak / MB
    df["peak_rss_mb"] = df.rss_peak.astype(float) / MB
    df["above_idle_mb"] = (df.rss_peak.astype(float) - doc["idle_rss"]) / MB
    df.attrs["weights_mb"] = doc["weights"] / MB
    df.attrs["idle_rss_mb"] = doc["idle_rss"] / MB
    return df.drop(columns=["kv_peak", "rss_peak"])
