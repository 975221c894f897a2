"""The wheel built from this repository works when installed on its own, outside the checkout."""

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STRESS = """
import asyncio, queuelab as ql
async def main():
    async with ql.RequestQueue(ql.SimulatedModel(0.001)) as q:
        run = await ql.stress.rapid_fire(q, n=12, max_new_tokens=2, progress=False)   # the built-in prompts
    print(ql.__file__)
    print(run.summary["succeeded"], run.requests.prompt.nunique() > 1)
asyncio.run(main())
"""


def test_the_installed_wheel_runs_a_stress_run_with_its_own_prompts(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(ROOT)], check=True, cwd=tmp_path)
    wheel = next(wheels.glob("queuelab-*.whl"))
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    py = env / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Dependencies come from the test's own environment (no downloads); queuelab itself only from the wheel:
    # a directory named in a .pth file is put on sys.path, but its own .pth files (the editable install's) are not run.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps", str(wheel)],
                   check=True, cwd=tmp_path)
    out = subprocess.run([str(py), "-c", STRESS], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    where, result = out.stdout.splitlines()[-2:]
    assert where.startswith(str(env)), f"imported queuelab from {where}, not from the installed wheel"
    assert result == "12 True"
    cli = subprocess.run([str(env / "bin" / "queuelab"), "bench", "--model", "sim:0.001", "--n", "2",
                          "--max-tokens", "2"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert cli.returncode == 0 and "req/s" in cli.stdout, cli.stderr
