"""The `queuelab` command: generate, serve, monitor, stress, bench. Thin: every command calls the package.

Exit codes: 0 success, 1 failure, 2 usage error. Errors are one line, not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any, Literal

from queuelab.checks import positive, positive_int
from queuelab.errors import CLIError

DEFAULT_URL = "http://127.0.0.1:8000"


# -- shared helpers -----------------------------------------------------------------------------------
def make_model(spec: str, **load_options: Any) -> Any:
    """'sim:SECONDS' is a SimulatedModel with that service time; 'sim-steps:BASE,PER_SEQ[,PER_PROMPT_TOKEN]'
    one with engine step costs (decode step = BASE + PER_SEQ × batch size); anything else goes to ql.load_model,
    with `load_options` (kv_cache, kv_blocks, block_size, dtype), which simulated models ignore."""
    import queuelab as ql

    if spec.startswith("sim-steps:"):
        try:
            parts = [float(x) for x in spec[10:].split(",")]
            if not 2 <= len(parts) <= 3:
                raise ValueError("expected BASE,PER_SEQ[,PER_PROMPT_TOKEN] in seconds")
            costs = ql.StepCosts(decode_base_s=parts[0], decode_per_seq_s=parts[1],
                                 prefill_per_token_s=parts[2] if len(parts) == 3 else 0.0)
            # No comma in the served name: load tools (aiperf) split --model lists on commas.
            return ql.SimulatedModel(step_costs=costs, name=spec.replace(",", "_"))
        except ValueError as e:
            raise CLIError(f"--model {spec}: {e}") from None
    if spec.startswith("sim:"):
        try:
            return ql.SimulatedModel(float(spec[4:]), name=spec)
        except ValueError as e:
            raise CLIError(f"--model {spec}: {e}") from None
    return ql.load_model(spec, **load_options)


def load_options(a: argparse.Namespace) -> dict[str, Any]:
    """ql.load_model's options from the arguments _model_args adds."""
    return {"kv_cache": a.kv_cache, "kv_blocks": a.kv_blocks, "block_size": a.block_size, "dtype": a.dtype}


def scheduler_from_args(a: argparse.Namespace) -> Any:
    """The scheduler that --scheduler and --max-batch name; a bad combination is a one-line error."""
    from queuelab.engine.scheduling import make_scheduler

    try:
        return make_scheduler(a.scheduler, a.max_batch)
    except ValueError as e:
        raise CLIError(f"--scheduler {a.scheduler}: {e}") from None


def health(url: str, timeout: float = 1.0) -> bool:
    """Whether a server answers at `url`: GET /health, or, where there is none (an OpenAI-compatible
    service need not have one), GET /v1/models."""
    import httpx

    try:
        status = httpx.get(f"{url}/health", timeout=timeout).status_code
        if status in (404, 405):
            status = httpx.get(f"{url}/v1/models", timeout=timeout).status_code
        return status == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def server_for(url: str | None, model: str, max_queue: int, extra: list[str] | None = None) -> Iterator[str]:
    """Yield the URL of a running server: the given one, one already running locally, or one we start
    (and stop afterwards, letting it drain), so that monitor and stress need no server started beforehand."""
    if url:
        if not health(url):
            raise CLIError(f"no healthy queuelab/OpenAI server at {url} (GET /health and GET /v1/models failed)")
        yield url.rstrip("/")
        return
    if health(DEFAULT_URL):
        yield DEFAULT_URL
        return
    port = DEFAULT_URL.rsplit(":", 1)[1]
    print(f"queuelab: starting a local server ({model}) on port {port}...", file=sys.stderr)
    # The server's log goes to a file, not a pipe: nobody reads a pipe while the run goes on, and
    # once its buffer (64 KB) fills with warnings the server blocks mid-write and every request stalls.
    log = tempfile.NamedTemporaryFile(prefix="queuelab-serve-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "queuelab", "serve", "--model", model, "--port", port,
                             "--max-queue", str(max_queue), *(extra or [])], stdout=subprocess.DEVNULL, stderr=log)
    failed = True
    try:
        deadline = time.monotonic() + 180  # the first model load on a machine converts it (~25 s)
        while not health(DEFAULT_URL):
            if proc.poll() is not None:
                raise CLIError(f"the local server exited: {_last_line(log.name)} (log: {log.name})")
            if time.monotonic() > deadline:
                raise CLIError(f"the local server did not become healthy within 180 s (log: {log.name})")
            time.sleep(0.25)
        yield DEFAULT_URL
        failed = False
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # graceful: drain, then exit
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        if failed:
            print(f"queuelab: the local server's log is {log.name}", file=sys.stderr)
        else:
            os.unlink(log.name)


def _last_line(path: str) -> str:
    with open(path, errors="replace") as f:
        lines = f.read().strip().splitlines()
    return lines[-1] if lines else "?"


# -- commands -----------------------------------------------------------------------------------------
def cmd_generate(a: argparse.Namespace) -> None:
    model = make_model(a.model, **load_options(a))
    c = model.generate(a.prompt, max_new_tokens=a.max_tokens, temperature=a.temperature, seed=a.seed,
                       on_token=lambda piece: print(piece, end="", flush=True))
    print()
    print(f"[{c.completion_tokens} tokens, finish {c.finish_reason}, TTFT {c.ttft_s * 1e3:.0f} ms, "
          f"{c.duration_s:.2f} s, {c.tokens_per_s:.1f} tok/s]", file=sys.stderr)


def cmd_serve(a: argparse.Namespace) -> None:
    import queuelab as ql
    from queuelab.serve.server import serve

    if a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"queuelab: serving on {a.host}: reachable from other machines", file=sys.stderr)
    queue = ql.RequestQueue(make_model(a.model, **load_options(a)), max_queue_size=a.max_queue, scheduler=scheduler_from_args(a))
    print(f"queuelab: serving {queue.model.name} with {queue.scheduler!r} on http://{a.host}:{a.port} (Ctrl-C: "
          f"{'cancel queued requests' if a.cancel_on_shutdown else 'finish queued requests'}, then exit)",
          file=sys.stderr)
    hosts: list[str] | None | Literal["auto"] = "auto"
    if a.allowed_host:
        hosts = None if "*" in a.allowed_host else list(a.allowed_host)
    serve(queue, host=a.host, port=a.port, drain=not a.cancel_on_shutdown, log_level=a.log_level,
          model_names=a.served_model_name, allowed_hosts=hosts)


def cmd_monitor(a: argparse.Namespace) -> None:
    import httpx
    from rich.live import Live

    from queuelab.observe.terminal import monitor_view

    with server_for(a.url, a.model, 1000) as url:
        with httpx.Client(base_url=url, timeout=5) as client:
            def frame() -> Any:
                return monitor_view(client.get("/stats").json(), url)

            if a.once:
                from rich.console import Console

                Console().print(frame())
                return
            with Live(frame(), refresh_per_second=4, screen=False) as live:
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(a.interval)
                        live.update(frame())


def cmd_stress(a: argparse.Namespace) -> None:
    from queuelab.load.http_target import HTTPTarget
    from queuelab.observe.terminal import RichWaves

    experiments = _experiments()

    async def run(url: str) -> Any:
        async with HTTPTarget(url, model=a.served_model, chat=a.endpoint == "chat") as target:
            experiment, options = experiments[a.experiment]
            common = {"max_new_tokens": a.max_tokens, "seed": a.seed, "progress": progress}
            return await experiment(target, **options(a), **common)

    progress = RichWaves(quiet=a.quiet)
    if a.url and (a.scheduler != "sequential" or a.max_batch is not None):
        raise CLIError("--scheduler and --max-batch configure a server this command starts; not with --url")
    extra = ["--scheduler", a.scheduler] + (["--max-batch", str(a.max_batch)] if a.max_batch else [])
    with server_for(a.url, a.model, a.max_queue, extra) as url:
        result = asyncio.run(run(url))
    print(result.report())
    if a.save:
        print(f"saved {result.save(a.save)}")


def _experiments() -> dict[str, tuple[Any, Any]]:
    """CLI name -> (experiment, the options it takes from the arguments): a plain dict, no registry."""
    from queuelab.load import stress

    return {
        "incremental": (stress.incremental, lambda a: {"waves": a.waves, "pause_s": a.pause}),
        "rapid-fire": (stress.rapid_fire, lambda a: {"n": a.n, "burst_s": a.burst}),
        "poisson": (stress.poisson, lambda a: {"rate": a.rate, "duration": a.duration, "n": a.n_open}),
        "concurrency": (stress.concurrency, lambda a: {"users": a.users, "n": a.n}),
    }


def cmd_bench(a: argparse.Namespace) -> None:
    import queuelab as ql
    from queuelab.metrics import percentiles

    model = make_model(a.model)
    scheduler = scheduler_from_args(a)
    model.generate("warm up", max_new_tokens=2)
    prompts = [f"Tell me one fact about the number {i}." for i in range(a.n)]

    async def run() -> tuple[list[ql.Request], float]:
        async with ql.RequestQueue(model, scheduler=scheduler, max_queue_size=a.n) as q:
            t0 = time.perf_counter()
            reqs = [q.submit(p, max_new_tokens=a.max_tokens) for p in prompts]
            await asyncio.gather(*reqs)
            return reqs, time.perf_counter() - t0

    reqs, total = asyncio.run(run())
    tokens = sum(r.completion.completion_tokens for r in reqs if r.completion)
    e2e = percentiles(r.e2e for r in reqs if r.e2e is not None)
    ttft = percentiles(r.ttft for r in reqs if r.ttft is not None)
    print(f"model {getattr(model, 'name', a.model)}: {a.n} requests submitted at once, max_new_tokens "
          f"{a.max_tokens}, {scheduler!r}")
    print(f"throughput: {a.n / total:.2f} req/s, {tokens / total:.1f} tokens/s")
    print(f"latency (queueing included): e2e p50 {e2e.p50:.2f} s, p99 {e2e.p99:.2f} s; "
          f"TTFT p50 {ttft.p50 * 1e3:.0f} ms, p99 {ttft.p99 * 1e3:.0f} ms")
    print(f"so this server tops out near {a.n / total:.2f} req/s at this length: a queue forms above that rate")


# -- argument parsing ------------------------------------------------------------------------------------
def _waves(text: str) -> list[int]:
    try:
        waves = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"waves must be comma-separated integers, got {text!r}") from None
    if not waves:
        raise argparse.ArgumentTypeError("waves must be positive integers, e.g. 10,20,30,40")
    try:
        return [positive_int("each wave size", w) for w in waves]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e} (e.g. 10,20,30,40)") from None


def _positive(kind: type[int] | type[float]) -> Any:
    """An argparse type: the text as `kind`, checked with queuelab.checks (an int >= 1; a finite float > 0)."""
    check = positive_int if kind is int else positive

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        try:
            return check("value", value)
        except ValueError as e:  # argparse words it "argument --NAME: value must be ..."
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _scheduler_args(p: argparse.ArgumentParser, note: str = "") -> None:
    from queuelab.engine.scheduling import SCHEDULERS

    p.add_argument("--scheduler", default="sequential", choices=list(SCHEDULERS),
                   help=f"how requests share the model{note} (default: sequential, one at a time)")
    p.add_argument("--max-batch", type=_positive(int), default=None,
                   help="largest batch for the batching schedulers (their default if omitted)")


def _model_args(p: argparse.ArgumentParser) -> None:
    """How a real model is loaded (simulated models ignore these)."""
    p.add_argument("--kv-cache", default="paged", choices=["paged", "padded"], help="KV cache layout (default: paged)")
    p.add_argument("--kv-blocks", type=_positive(int), default=None, help="paged: blocks in the KV pool (default 4096)")
    p.add_argument("--block-size", type=_positive(int), default=16, help="paged: tokens per block (default 16)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights' dtype (default: float32)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="queuelab", description="Serve a language model behind a FIFO queue, "
                                "load it, and watch it.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_help = ("smollm2-135m (default), tiny-random, a local model directory, sim:SECONDS (simulated service "
                  "time) or sim-steps:BASE,PER_SEQ (simulated engine: decode step = BASE + PER_SEQ x batch)")

    g = sub.add_parser("generate", help="generate one answer, streamed to the terminal")
    g.add_argument("prompt")
    g.add_argument("--model", default="smollm2-135m", help=model_help)
    g.add_argument("--max-tokens", type=_positive(int), default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=None)
    _model_args(g)
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API")
    s.add_argument("--model", default="smollm2-135m", help=model_help)
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-queue", type=_positive(int), default=1000, help="requests that may wait (then 429)")
    s.add_argument("--cancel-on-shutdown", action="store_true",
                   help="on Ctrl-C/SIGTERM cancel queued requests instead of finishing them")
    s.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    s.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                   help="the model names requests may give (default: the model's own); others get 404")
    s.add_argument("--allowed-host", action="append", default=None, metavar="HOST",
                   help="a Host header to answer (repeatable; '*' for any). Default: the bound address's "
                        "names on loopback (a guard against DNS rebinding), any on 0.0.0.0")
    _scheduler_args(s)
    _model_args(s)
    s.set_defaults(func=cmd_serve)

    m = sub.add_parser("monitor", help="live four-panel terminal dashboard of a server's queue")
    m.add_argument("--url", default=None, help=f"server URL (default: {DEFAULT_URL}, started if not running)")
    m.add_argument("--model", default="smollm2-135m", help="model for a server started by this command")
    m.add_argument("--interval", type=_positive(float), default=0.5)
    m.add_argument("--once", action="store_true", help="print one frame and exit")
    m.set_defaults(func=cmd_monitor)

    st = sub.add_parser("stress", help="run a stress experiment against a server")
    st.add_argument("experiment", choices=["incremental", "rapid-fire", "poisson", "concurrency"])  # see _experiments
    st.add_argument("--url", default=None, help=f"server URL (default: {DEFAULT_URL}, started if not running)")
    st.add_argument("--model", default="smollm2-135m", help="model for a server started by this command")
    st.add_argument("--served-model", default=None, help="the `model` field to send (for vLLM and others)")
    st.add_argument("--endpoint", default="chat", choices=["chat", "completions"],
                    help="chat (default: the server applies the chat template, as the queue does in process) "
                         "or completions (the prompt as it is)")
    st.add_argument("--max-queue", type=_positive(int), default=1000, help="for a server started by this command")
    st.add_argument("--waves", type=_waves, default=[10, 20, 30, 40], help="incremental: e.g. 10,20,30,40")
    st.add_argument("--pause", type=float, default=0.0, help="incremental: seconds between waves")
    st.add_argument("--n", type=_positive(int), default=100, help="rapid-fire/concurrency: requests")
    st.add_argument("--burst", type=float, default=0.0, help="rapid-fire: spread over this many seconds")
    st.add_argument("--rate", type=_positive(float), default=1.0, help="poisson: requests per second")
    st.add_argument("--duration", type=_positive(float), default=None, help="poisson: seconds")
    st.add_argument("--n-open", type=_positive(int), default=None, help="poisson: requests (or --duration)")
    st.add_argument("--users", type=_positive(int), default=4, help="concurrency: simulated users")
    st.add_argument("--max-tokens", type=_positive(int), default=32)
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--save", default=None, help="save the run as JSON (ql.StressRun.load reads it)")
    st.add_argument("--quiet", action="store_true", help="no live table")
    _scheduler_args(st, " (for a server started by this command)")
    st.set_defaults(func=cmd_stress)

    b = sub.add_parser("bench", help="throughput and latency of n requests submitted at once through the queue")
    b.add_argument("--model", default="smollm2-135m", help=model_help)
    b.add_argument("--n", type=_positive(int), default=5)
    b.add_argument("--max-tokens", type=_positive(int), default=32)
    _scheduler_args(b)
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # exits 2 on a usage error
    if args.command == "stress" and args.experiment == "poisson" and not (args.duration or args.n_open):
        parser().error("stress poisson needs --duration or --n-open")
    try:
        args.func(args)
    except KeyboardInterrupt:
        return 0
    except Exception as e:  # one line, not a traceback; QUEUELAB_DEBUG=1 shows the traceback
        if os.environ.get("QUEUELAB_DEBUG"):
            raise
        kind = "" if isinstance(e, (CLIError, ValueError)) else f"{type(e).__name__}: "
        print(f"queuelab: error: {kind}{e}".splitlines()[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
