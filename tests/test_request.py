import asyncio

import pytest

from queuelab.errors import RequestCancelled, RequestFailed, RequestRejected
from queuelab.generation import Completion
from queuelab.request import Request
from queuelab.request import RequestStatus as S

C = Completion("hi", 3, 1, 0.1, 0.2, "stop")


async def test_legal_path_stamps_timestamps_and_derives_timings():
    r = Request(1, "p", None, arrived=10.0)
    r.advance(S.QUEUED, 10.0)
    r.advance(S.PROCESSING, 12.5)
    r.first_token = 13.0
    r.advance(S.COMPLETED, 14.0, completion=C)
    assert (r.wait, r.service, r.ttft, r.e2e) == (2.5, 1.5, 3.0, 4.0)
    assert await r is C


@pytest.mark.parametrize("path", [
    [S.PROCESSING], [S.COMPLETED], [S.QUEUED, S.COMPLETED], [S.QUEUED, S.REJECTED],
    [S.REJECTED, S.QUEUED], [S.QUEUED, S.CANCELLED, S.PROCESSING], [S.QUEUED, S.PROCESSING, S.CANCELLED],
])
async def test_illegal_transitions_are_refused(path):
    r = Request(1, "p", None, arrived=0.0)
    with pytest.raises(RuntimeError, match="illegal transition"):
        for status in path:
            r.advance(status, 1.0)


@pytest.mark.parametrize("path, error", [
    ([S.REJECTED], RequestRejected), ([S.QUEUED, S.CANCELLED], RequestCancelled),
    ([S.QUEUED, S.PROCESSING, S.FAILED], RequestFailed),
])
async def test_await_raises_with_the_reason(path, error):
    r = Request(7, "p", None, arrived=0.0)
    for status in path:
        r.advance(status, 1.0, error="because")
    with pytest.raises(error, match="request 7 .*because") as info:
        await r
    assert info.value.request is r


async def test_a_waiter_giving_up_does_not_cancel_the_request():
    r = Request(1, "p", None, arrived=0.0)
    r.advance(S.QUEUED, 0.0)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.ensure_future(_await(r)), 0.01)
    r.advance(S.PROCESSING, 1.0)
    r.advance(S.COMPLETED, 2.0, completion=C)
    assert await r is C


async def _await(r):
    return await r


def test_a_request_is_a_plain_record_outside_an_event_loop():
    # Built, advanced and read with no loop running (schedulers and tables use records like this).
    r = Request(id=1, prompt="p", params=None, arrived=1.0)
    r.advance(S.QUEUED, 1.0)
    r.advance(S.PROCESSING, 1.5)
    r.advance(S.COMPLETED, 3.0)
    assert (r.wait, r.service, r.e2e, r.done) == (0.5, 1.5, 2.0, True)


async def test_awaiting_a_request_that_ended_before_anyone_waited():
    r = Request(id=1, prompt="p", params=None, arrived=0.0)
    r.advance(S.REJECTED, 0.0, error="queue full")
    with pytest.raises(RequestRejected, match="queue full"):
        await r
    assert r.future.done()
