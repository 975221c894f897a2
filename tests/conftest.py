import pytest

import queuelab as ql


@pytest.fixture(scope="session")
def tiny() -> ql.LanguageModel:
    return ql.load_model("tiny-random")  # the paged KV cache, the default


@pytest.fixture(scope="session")
def tiny_padded() -> ql.LanguageModel:
    return ql.load_model("tiny-random", kv_cache="padded")


@pytest.fixture(scope="session", params=["paged", "padded"])
def tiny_each_cache(request: pytest.FixtureRequest) -> ql.LanguageModel:
    """The tiny model once with each KV cache: for what must hold for both."""
    return ql.load_model("tiny-random", kv_cache=request.param)


@pytest.fixture(scope="session")
def real() -> ql.LanguageModel:
    return ql.load_model()


async def wait_until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    """Wait (yielding to the loop) until `condition()` holds: tests wait on states, not fixed sleeps,
    so they hold on a busy machine; the generous timeout only bounds a real failure."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.002)
