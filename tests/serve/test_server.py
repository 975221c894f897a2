"""The OpenAI-compatible server: in-process (httpx's ASGI transport) and over a real uvicorn socket."""

import asyncio
import json

import httpx
import pytest

import queuelab as ql
from queuelab import stress
from queuelab.load.http_target import HTTPTarget
from queuelab.serve.server import create_app
from tests.serve.server_thread import ServerThread


def client(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_completion_and_chat_shapes():
    q = ql.RequestQueue(ql.SimulatedModel(0.001))
    async with q, client(create_app(q)) as c:
        r = await c.post("/v1/completions", json={"model": "simulated", "prompt": "hello there", "max_tokens": 4})
        body = r.json()
        assert r.status_code == 200 and body["object"] == "text_completion"
        assert body["choices"][0]["text"] == ql.SimulatedModel(0).generate("hello there", max_new_tokens=4).text
        assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
        assert body["choices"][0]["finish_reason"] == "length"
        r = await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        chat = r.json()
        assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
        assert len(chat["choices"][0]["message"]["content"].split()) == 3
        models = (await c.get("/v1/models")).json()
        assert models["data"][0]["id"] == "simulated"


async def test_streaming_sends_pieces_then_done():
    q = ql.RequestQueue(ql.SimulatedModel(0.001))
    async with q, client(create_app(q)) as c:
        async with c.stream("POST", "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True,
                "stream_options": {"include_usage": True}}) as r:
            lines = [line async for line in r.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert len(text.split()) == 3
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "length"
    assert events[-1]["usage"]["completion_tokens"] == 3 and all(e["object"] == "chat.completion.chunk" for e in events[:-1])


@pytest.mark.parametrize("body, status, param", [
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": "x", "n": 2}, 400, "n"),
    ({"prompt": "x", "frobnicate": True}, 400, "frobnicate"),
    ({"max_tokens": 3}, 400, "prompt"),
    ({"prompt": ["a", "b"]}, 400, "prompt"),
])
async def test_bad_input_is_a_400_naming_the_field(body, status, param):
    q = ql.RequestQueue(ql.SimulatedModel(0))
    async with q, client(create_app(q)) as c:
        r = await c.post("/v1/completions", json=body)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


async def test_bad_json_and_oversize_bodies():
    q = ql.RequestQueue(ql.SimulatedModel(0))
    async with q, client(create_app(q, max_body_bytes=1000)) as c:
        assert (await c.post("/v1/completions", content=b"{not json",
                              headers={"Content-Type": "application/json"})).status_code == 400
        r = await c.post("/v1/completions", json={"prompt": "x" * 5000})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


async def test_full_queue_is_429_with_retry_after():
    q = ql.RequestQueue(ql.SimulatedModel(0.02), max_queue_size=2)
    async with q, client(create_app(q)) as c:
        rs = await asyncio.gather(*(c.post("/v1/completions", json={"prompt": f"p{i}", "max_tokens": 1}) for i in range(6)))
    codes = sorted(r.status_code for r in rs)
    assert codes == [200, 200, 429, 429, 429, 429]
    limited = [r for r in rs if r.status_code == 429]
    assert all(int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "queue_full" for r in limited)


async def test_503_while_not_running_and_500_only_for_model_failures():
    q = ql.RequestQueue(ql.SimulatedModel(0, fail_if=lambda p: "boom" in p))
    app = create_app(q)
    async with client(app) as c:
        r = await c.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 503 and (await c.get("/health")).status_code == 503
        async with q:
            assert (await c.get("/health")).json()["status"] == "ok"
            r = await c.post("/v1/completions", json={"prompt": "boom"})
            assert r.status_code == 500 and "SimulatedFailure" in r.json()["error"]["message"]


async def test_stats_and_prometheus_metrics():
    q = ql.RequestQueue(ql.SimulatedModel(0.001))
    async with q, client(create_app(q)) as c:
        for _ in range(3):
            await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
        await c.post("/v1/completions", json={"prompt": "x", "frobnicate": 1})  # refused before the queue
        stats = (await c.get("/stats")).json()
        metrics = (await c.get("/metrics")).text
    assert stats["completed"] == 3 and stats["health"]["worker_alive"] is True
    # Parsed as Prometheus parses it, not matched as text.
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics) for s in family.samples}
    assert samples["queuelab_requests_total", (("state", "completed"),)] == 3
    assert samples["queuelab_requests_total", (("state", "submitted"),)] == 3
    assert samples["queuelab_e2e_seconds_bucket", (("le", "+Inf"),)] == 3
    assert samples["queuelab_e2e_seconds_count", ()] == 3 and samples["queuelab_queue_depth", ()] == 0
    assert samples["queuelab_e2e_seconds_sum", ()] == pytest.approx(q.histograms()["e2e"].total)
    assert samples["queuelab_model_steps_total", ()] == q.step_count
    assert samples["queuelab_generated_tokens_total", ()] == 3
    assert samples["queuelab_http_refused_total", (("status", "400"),)] == 1 and stats["http_refused"] == {"400": 1}
    assert any(name == "python_info" for name, _ in samples)  # the standard metrics every exporter has


def test_real_server_completions_stream_and_disconnect_cancels():
    with ServerThread(lambda: ql.RequestQueue(ql.SimulatedModel(0.2))) as srv:
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            assert c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
            # Three clients; the last two give up while queued: their requests must leave the queue.
            with httpx.Client(base_url=srv.url, timeout=0.05) as impatient:
                for _ in range(2):
                    with pytest.raises(httpx.TimeoutException):
                        impatient.post("/v1/completions", json={"prompt": "slow", "max_tokens": 1})
            stats = _wait_for(lambda: c.get("/stats").json(), lambda s: s["cancelled"] >= 1, 5)
        assert stats["cancelled"] >= 1
    q = srv.queue
    s = q.stats()
    assert q.state == "stopped" and s.submitted == s.completed + s.failed + s.cancelled + s.rejected


def test_openai_client_against_queuelab_serve():
    openai = pytest.importorskip("openai")
    with ServerThread(lambda: ql.RequestQueue(ql.SimulatedModel(0.001))) as srv:
        oa = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused")
        c = oa.completions.create(model="simulated", prompt="hello", max_tokens=3)
        assert len(c.choices[0].text.split()) == 3 and c.usage.completion_tokens == 3
        chat = oa.chat.completions.create(model="simulated", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert len(chat.choices[0].message.content.split()) == 2
        stream = oa.chat.completions.create(model="simulated", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=4, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert len(text.split()) == 4
        with pytest.raises(openai.BadRequestError):
            oa.completions.create(model="simulated", prompt="", max_tokens=3)


def test_stress_over_http_accounts_like_in_process():
    async def over_http(url):
        async with HTTPTarget(url) as target:
            return await stress.incremental(target, waves=[3, 5], max_new_tokens=2, seed=1, progress=False)

    async def in_process():
        async with ql.RequestQueue(ql.SimulatedModel(0.005)) as q:
            return await stress.incremental(q, waves=[3, 5], max_new_tokens=2, seed=1, progress=False)

    with ServerThread(lambda: ql.RequestQueue(ql.SimulatedModel(0.005))) as srv:
        remote = ql.run(over_http(srv.url))
    local = ql.run(in_process())
    for key in ("sent", "succeeded", "not_succeeded", "completion_tokens"):
        assert remote.summary[key] == local.summary[key]
    assert list(remote.waves.sent) == list(local.waves.sent) == [3, 5]
    assert list(remote.requests.prompt) == list(local.requests.prompt)
    r = remote.requests
    assert (r.ttft >= 0).all() and (r.e2e >= r.ttft).all() and remote.config["target"]["base_url"] == srv.url
    s = srv.queue.stats()
    assert (s.submitted, s.completed) == (8, 8)


def test_http_refusals_become_rejected_rows():
    async def flood(url):
        async with HTTPTarget(url) as target:
            return await stress.rapid_fire(target, n=12, max_new_tokens=1, progress=False)

    with ServerThread(lambda: ql.RequestQueue(ql.SimulatedModel(0.02), max_queue_size=3)) as srv:
        run = ql.run(flood(srv.url))
    s = run.summary
    assert s["sent"] == 12 and s["n_rejected"] >= 5 and s["n_completed"] + s["n_rejected"] == 12
    assert all(e.startswith("HTTP 429") for e in s["errors"])


def test_http_target_refuses_bad_urls_and_options():
    with pytest.raises(ValueError, match="http"):
        HTTPTarget("localhost:8000")

    async def bad():
        async with HTTPTarget("http://127.0.0.1:9") as t:
            return t.submit("x", max_tokens=3)

    req = ql.run(bad())
    assert req.status is ql.RequestStatus.REJECTED and "unknown generation option" in req.error


def test_connection_errors_fail_the_request_not_the_run():
    async def main():
        async with HTTPTarget("http://127.0.0.1:9", timeout=2) as t:  # nothing listens on port 9
            return await stress.rapid_fire(t, n=3, max_new_tokens=1, progress=False)

    run = ql.run(main())
    assert run.summary["n_failed"] == 3 and all("Connect" in e for e in run.summary["errors"])


def _wait_for(get, ok, timeout):
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)
