"""The README's queue example runs as written."""

import re
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_queue_example_runs():
    block = re.search(r"## The queue\n\n```python\n(.*?)```", README, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("completed") == 5 and "p50" in out.stdout


def test_stress_example_runs(tmp_path):
    block = re.search(r"## Stress experiments\n\n```python\n(.*?)```", README, re.S).group(1)
    block = block.replace("data/runs/incremental.json", str(tmp_path / "incremental.json"))
    out = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "Total Requests Sent: 100" in out.stdout and "little_ratio" in out.stdout
    assert (tmp_path / "incremental.json").exists()


def test_batching_example_runs():
    block = re.search(r"## Batching\n\n.*?```python\n(.*?)```", README, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split("(")[0] for line in lines] == ["SequentialScheduler", "StaticBatchScheduler",
                                                      "ContinuousBatchScheduler"]
    assert "largest batch 1," in lines[0] and "largest batch 8," in lines[1] and "largest batch 16," in lines[2]
    rates = [float(line.split(": ")[1].split(" tokens/s")[0]) for line in lines]
    assert rates[0] < rates[1] < rates[2]  # sleep-timed model: the ordering holds on a busy machine too


def test_the_folder_map_names_every_module():
    # The map under "Architecture" lists each module in its folder; a new module must be added there.
    package = Path(__file__).resolve().parents[1] / "queuelab"
    block = re.search(r"upward import or a cycle.*?```\n(queuelab/\n.*?)```", README, re.S).group(1)
    listed, folder = set(), ""
    for line in block.splitlines()[1:]:
        if m := re.match(r"  (\w+/) +(\w+\.py)", line):  # the first module of a folder
            folder = m.group(1)
            listed.add(folder + m.group(2))
        elif m := re.match(r" {15}(\w+\.py)", line):  # the folder's next modules
            listed.add(folder + m.group(1))
        else:  # the root: several modules on a line, then what they are
            folder = ""
            listed.update(re.findall(r"(\w+\.py)", line))
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    assert modules - listed == set(), "modules missing from the README's folder map"
    assert listed - modules == set(), "the README's folder map names modules that do not exist"


def test_paged_cache_example_runs():
    block = re.search(r"### The paged KV cache\n\n.*?```python\n(.*?)```", README, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, tables, usage = out.stdout.strip().splitlines()
    prefill, blocks, slots = first.split(" ", 1)[0], first.split(") (")[0], first.split(") (")[1]
    assert int(prefill) > 0 and blocks.endswith(", 64") and slots.endswith(", 0)")  # a budget of 64, no padding
    assert tables.count("<Sequence") == 2 and usage.startswith("KVUsage(blocks_used=")
