"""The `queuelab` command, run as a user would (subprocess)."""

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

import queuelab as ql
from tests.serve.server_thread import ServerThread, free_port


def cli(*args, timeout=120):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "queuelab", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("command", [[], ["generate"], ["serve"], ["monitor"], ["stress"], ["bench"]])
def test_help_for_every_command(command):
    out = cli(*command, "--help")
    assert out.returncode == 0 and "usage: queuelab" in out.stdout


def test_generate_streams_the_answer():
    out = cli("generate", "What is a queue?", "--model", "sim:0", "--max-tokens", "5")
    assert out.returncode == 0
    assert out.stdout.strip() == ql.SimulatedModel(0).generate("What is a queue?", max_new_tokens=5).text
    assert "5 tokens" in out.stderr


def test_generate_with_the_tiny_model():
    out = cli("generate", "Hello", "--model", "tiny-random", "--max-tokens", "3")
    assert out.returncode == 0 and "3 tokens" in out.stderr


@pytest.mark.parametrize("args, code, words", [
    (["stress", "poisson"], 2, "needs --duration or --n-open"),
    (["stress", "incremental", "--waves", "10,x"], 2, "comma-separated"),
    (["stress", "sideways"], 2, "invalid choice"),
    (["generate", "hi", "--max-tokens", "0"], 2, "--max-tokens: value must be an int >= 1, got 0"),
    (["generate", "", "--model", "sim:0"], 1, "queuelab: error: prompt is empty"),
    (["generate", "hi", "--model", "no-such/model-anywhere"], 1, "queuelab: error:"),
    (["stress", "incremental", "--url", "http://127.0.0.1:9"], 1, "no healthy queuelab/OpenAI server"),
])
def test_errors_are_one_line_with_the_right_exit_code(args, code, words):
    out = cli(*args)
    assert out.returncode == code, out.stderr
    assert words in out.stderr and "Traceback" not in out.stderr


def test_stress_against_a_server_saves_the_run(tmp_path):
    with ServerThread(lambda: ql.RequestQueue(ql.SimulatedModel(0.005))) as srv:
        out = cli("stress", "incremental", "--url", srv.url, "--waves", "3,4", "--max-tokens", "2",
                  "--save", str(tmp_path / "run.json"))
        assert out.returncode == 0, out.stderr
        assert "Total Requests Sent: 7" in out.stdout and "Success Rate: 100.0%" in out.stdout
        monitor = cli("monitor", "--url", srv.url, "--once")
    assert monitor.returncode == 0 and "Queue statistics" in monitor.stdout and "Completed" in monitor.stdout
    run = ql.StressRun.load(tmp_path / "run.json")
    assert list(run.waves.sent) == [3, 4] and run.summary["succeeded"] == 7


def test_bench_prints_throughput():
    out = cli("bench", "--model", "sim:0.01", "--n", "3", "--max-tokens", "4")
    assert out.returncode == 0 and "req/s" in out.stdout and "tokens/s" in out.stdout


def start_server(model, *flags):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "queuelab", "serve", "--model", model, "--port", str(port),
                             *flags], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    until(lambda: _status(f"{url}/health") == 200, 30, "the server to start", proc)
    return proc, url


def _status(url):
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return None


def until(ok, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    while not ok():
        assert proc is None or proc.poll() is None, f"the server exited while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def queued(url, processing, waiting):
    s = httpx.get(f"{url}/stats", timeout=2).json()
    return s["processing"] == processing and s["queue_size"] == waiting


def post_all(url, n):
    pool = cf.ThreadPoolExecutor(n)
    return pool, [pool.submit(_post, url, f"p{i}") for i in range(n)]


def _post(url, prompt):
    try:
        return httpx.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": 1}, timeout=30).status_code
    except httpx.HTTPError:
        return "dropped"


@pytest.mark.parametrize("flag, expect", [([], [200, 200, 200]), (["--cancel-on-shutdown"], [200, 503, 503])])
def test_serve_shuts_down_gracefully(flag, expect):
    proc, url = start_server("sim:0.4", *flag)
    try:
        pool, futures = post_all(url, 3)
        until(lambda: queued(url, 1, 2), 10, "one request processing, two queued")
        proc.send_signal(signal.SIGINT)
        assert sorted(f.result() for f in futures) == sorted(expect)
        assert proc.wait(30) == 0
        pool.shutdown()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_second_signal_stops_now_and_answers_the_waiting():
    proc, url = start_server("sim:3")  # each request takes 3 s: draining four would take 12 s
    try:
        pool, futures = post_all(url, 4)
        until(lambda: queued(url, 1, 3), 10, "one request processing, three queued")
        proc.send_signal(signal.SIGINT)
        until(lambda: _status(f"{url}/health") == 503, 10, "the server to start draining")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
        codes = [f.result() for f in futures]
        pool.shutdown()
        assert time.monotonic() - t0 < 6  # not the 12 s a drain takes
        assert codes == [503] * 4  # every client is told (the waiting and the one being computed), none dropped
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sim_steps_model_spec():
    from queuelab.errors import CLIError
    from queuelab.serve.cli import make_model

    m = make_model("sim-steps:0.01,0.002,0.0005")
    assert (m.step_costs.decode(4), m.step_costs.prefill(10)) == pytest.approx((0.018, 0.005))
    assert "," not in m.name  # load tools split model lists on commas
    with pytest.raises(CLIError, match="BASE,PER_SEQ"):
        make_model("sim-steps:0.01")


def test_a_server_without_health_is_checked_through_its_model_list():
    import http.server
    import threading

    from queuelab.serve.cli import health

    class ModelsOnly(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ModelsOnly)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        assert health(f"http://127.0.0.1:{srv.server_port}")
        assert not health(f"http://127.0.0.1:{free_port()}")
    finally:
        srv.shutdown()
