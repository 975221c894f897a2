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

from .server_thread import ServerThread, free_port


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
    (["generate", "hi", "--max-tokens", "0"], 2, "must be > 0"),
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


@pytest.mark.parametrize("flag, expect", [([], [200, 200, 200]), (["--cancel-on-shutdown"], [200, 503, 503])])
def test_serve_shuts_down_gracefully(flag, expect):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "queuelab", "serve", "--model", "sim:0.4", "--port", str(port),
                             *flag], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        with cf.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(httpx.post, f"{url}/v1/completions", json={"prompt": f"p{i}", "max_tokens": 1},
                                   timeout=30) for i in range(3)]
            time.sleep(0.3)  # all three are in: one processing, two queued
            proc.send_signal(signal.SIGINT)
            codes = sorted(f.result().status_code for f in futures)
        assert codes == sorted(expect)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sim_steps_model_spec():
    from queuelab.cli import CLIError, make_model

    m = make_model("sim-steps:0.01,0.002,0.0005")
    assert (m.step_costs.decode(4), m.step_costs.prefill(10)) == pytest.approx((0.018, 0.005))
    assert "," not in m.name  # load tools split model lists on commas
    with pytest.raises(CLIError, match="BASE,PER_SEQ"):
        make_model("sim-steps:0.01")
