"""The server speaks the OpenAI API the way clients expect it (the reference: vLLM's server), and no
input, however malformed, breaks the queue's accounting."""

import asyncio
import json
import logging
import socket

import httpx
import pytest

import queuelab as ql
from queuelab import stress
from queuelab.load.http_target import HTTPTarget
from queuelab.serve.server import create_app
from tests.conftest import wait_until
from tests.serve.server_thread import ServerThread


def client(app, **kw):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", **kw)


def sim(**kw):
    return ql.SimulatedModel(0.001, **kw)


async def post(c, path, body):
    # json.dumps escapes what cannot be encoded (a lone surrogate becomes "\\ud800"), as a client's JSON may.
    return await c.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})


async def events(c, path, body):
    async with c.stream("POST", path, json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in r.aiter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[5:]) for line in lines[:-1]]


# -- fields clients send by habit ------------------------------------------------------------------------
GUIDELLM_LIKE = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text",
                                                                                          "text": "there"}]}],
                 "max_tokens": 3, "stop": None, "ignore_eos": True, "n": 1, "logprobs": None, "presence_penalty": 0,
                 "frequency_penalty": 0.0, "top_p": 1, "user": "bench", "stream": False}


async def test_the_defaults_benchmark_clients_send_are_accepted():
    q = ql.RequestQueue(sim())
    async with q, client(create_app(q)) as c:
        r = await post(c, "/v1/chat/completions", GUIDELLM_LIKE)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 2  # both text parts reached the model ("hi\nthere")


@pytest.mark.parametrize("field, value", [("presence_penalty", 0.5), ("frequency_penalty", -1), ("n", 2),
                                          ("logprobs", True), ("top_p", 0.9), ("echo", True), ("best_of", 3),
                                          ("logit_bias", {"5": 1}), ("response_format", {"type": "json_object"}),
                                          ("tools", [{"type": "function"}])])
async def test_other_values_of_unimplemented_fields_are_a_400_naming_them(field, value):
    q = ql.RequestQueue(sim())
    async with q, client(create_app(q)) as c:
        r = await post(c, "/v1/completions", {"prompt": "x", field: value})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == field and err["code"] == "unsupported_parameter"
    assert field in err["message"] and "not supported" in err["message"]
    assert q.stats().submitted == 0  # refused before the queue: counted by the server instead


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"prompt": "x", "temperature": True}, "temperature"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "seed": 2**64}, "seed"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    ({"prompt": "hi \ud800"}, "prompt"),
])
async def test_bad_values_are_a_400_naming_the_field(body, param):
    q = ql.RequestQueue(sim())
    app = create_app(q)
    async with q, client(app) as c:
        r = await post(c, "/v1/completions", body)
        stats = (await c.get("/stats")).json()
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    # Whether the queue or the server refused it, it is counted once and nothing is left hanging.
    assert stats["submitted"] == stats["rejected"] and sum(stats["http_refused"].values()) == 1


async def test_non_text_content_parts_are_refused_by_name():
    q = ql.RequestQueue(sim())
    async with q, client(create_app(q)) as c:
        r = await post(c, "/v1/chat/completions", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x"}}]}]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages.0.content")


# -- stop, ignore_eos, min_tokens ---------------------------------------------------------------------
async def test_stop_strings_end_the_answer_in_both_modes():
    words = ql.SimulatedModel(0).generate("tell me", max_new_tokens=6).text.split()
    q = ql.RequestQueue(sim())
    async with q, client(create_app(q)) as c:
        body = {"prompt": "tell me", "max_tokens": 6, "stop": [" " + words[3]]}
        plain = (await post(c, "/v1/completions", body)).json()
        streamed = await events(c, "/v1/completions", {**body, "stream": True})
    assert plain["choices"][0]["text"] == " ".join(words[:3]) and plain["choices"][0]["finish_reason"] == "stop"
    assert "".join(e["choices"][0]["text"] for e in streamed) == " ".join(words[:3])
    assert streamed[-1]["choices"][0]["finish_reason"] == "stop"


async def test_ignore_eos_fixes_the_length_and_min_tokens_bounds_it():
    q = ql.RequestQueue(sim(answer_tokens=lambda p: 2))  # every answer ends after 2 tokens
    async with q, client(create_app(q)) as c:
        async def n_tokens(**extra):
            r = (await post(c, "/v1/completions", {"prompt": "x", "max_tokens": 6, **extra})).json()
            return r["usage"]["completion_tokens"], r["choices"][0]["finish_reason"]

        assert await n_tokens() == (2, "stop")
        assert await n_tokens(ignore_eos=True) == (6, "length")
        assert await n_tokens(min_tokens=3) == (4, "stop")


def test_min_tokens_masks_the_end_of_sequence_token(tiny):
    def run(**kw):
        seq = tiny.new_sequence("hello", ql.GenerationParams(max_new_tokens=3, **kw))
        tiny.run_to_completion([seq])
        return seq

    greedy_first = run().output_ids[0]
    eos, tiny.eos_id = tiny.eos_id, greedy_first  # pretend the greedy first token ends the answer
    try:
        assert run().finish_reason == "stop" and run().completion_tokens == 1
        held = run(min_tokens=2)
        assert held.output_ids[0] != greedy_first and held.completion_tokens == 3
        assert run(ignore_eos=True).completion_tokens == 3
    finally:
        tiny.eos_id = eos


# -- completions take the prompt as it is ------------------------------------------------------------------
async def test_completions_do_not_apply_the_chat_template(tiny):
    q = ql.RequestQueue(tiny)
    async with q, client(create_app(q)) as c:
        comp = (await post(c, "/v1/completions", {"prompt": "The capital of France is", "max_tokens": 1})).json()
        chat = (await post(c, "/v1/chat/completions", {"messages": [{"role": "user",
                                                                    "content": "The capital of France is"}],
                                                       "max_tokens": 1})).json()
    raw = len(tiny.tokenizer("The capital of France is")["input_ids"])
    assert comp["usage"]["prompt_tokens"] == raw
    assert chat["usage"]["prompt_tokens"] == tiny.count_tokens("The capital of France is") > raw


# -- the stream's shape ----------------------------------------------------------------------------------
async def test_chat_stream_names_the_role_first_and_ends_with_a_full_usage_chunk():
    q = ql.RequestQueue(sim())
    async with q, client(create_app(q)) as c:
        ev = await events(c, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                                                       "stream": True, "stream_options": {"include_usage": True}})
    assert ev[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" and isinstance(e["created"], int) for e in ev)
    assert len({e["id"] for e in ev}) == 1
    assert ev[-1]["choices"] == [] and ev[-1]["usage"]["completion_tokens"] == 3
    finish = ev[-2]
    assert finish["choices"][0]["finish_reason"] == "length"
    assert finish["queuelab"]["wait_s"] >= 0 and finish["queuelab"]["service_s"] > 0


def test_openai_sdk_stream_helper_gets_role_and_usage():
    openai = pytest.importorskip("openai")
    # Answers end by themselves: the SDK's helper raises LengthFinishReasonError on "length" (from any server).
    with ServerThread(lambda: ql.RequestQueue(sim(answer_tokens=lambda p: 4))) as srv:
        oa = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        with oa.chat.completions.stream(model="simulated", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                        stream_options={"include_usage": True}) as stream:
            final = stream.get_final_completion()
        assert final.usage is not None and final.usage.completion_tokens == 4
        assert final.choices[0].message.role == "assistant" and len(final.choices[0].message.content.split()) == 4
        assert final.choices[0].finish_reason == "stop"
        text = "".join(ch.choices[0].text for ch in oa.completions.create(model="simulated", prompt="hi", max_tokens=3,
                                                                           stream=True))
        assert len(text.split()) == 3
        with pytest.raises(openai.NotFoundError):
            oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert oa.models.retrieve("simulated").id == "simulated"


# -- errors in OpenAI's shape, with the headers clients act on ---------------------------------------------------
async def test_404_405_and_unknown_models_answer_in_openai_shape():
    q = ql.RequestQueue(sim())
    async with q, client(create_app(q, model_names=["simulated", "alias"])) as c:
        for r in (await c.get("/v1/nope"), await c.get("/v1/completions"), await c.get("/v1/models/other"),
                  await post(c, "/v1/completions", {"model": "other", "prompt": "x"})):
            assert r.status_code in (404, 405) and set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert (await post(c, "/v1/completions", {"model": "alias", "prompt": "x", "max_tokens": 1})).status_code == 200
        assert [m["id"] for m in (await c.get("/v1/models")).json()["data"]] == ["simulated", "alias"]
        assert (await c.get("/v1/models/alias")).json()["id"] == "alias"
        r = await post(c, "/v1/completions", {"model": "other", "prompt": "x"})
    assert r.json()["error"]["code"] == "model_not_found"


async def test_a_lone_surrogate_in_the_model_name_gets_a_json_404():
    # JSON may carry "\ud800"; repeated in the error, it used to fail UTF-8 encoding: a plain-text 500.
    q = ql.RequestQueue(sim())
    async with q, client(create_app(q)) as c:
        r = await c.post("/v1/completions", content=b'{"model": "\\ud800x", "prompt": "hi"}',
                         headers={"Content-Type": "application/json"})
        ok = await post(c, "/v1/completions", {"prompt": "still served", "max_tokens": 1})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "\ud800x" in r.json()["error"]["message"] and ok.status_code == 200


async def test_retry_after_on_503_and_bounded_on_429():
    q = ql.RequestQueue(ql.SimulatedModel(1.0), max_queue_size=1)
    app = create_app(q)
    async with client(app) as c:
        r = await post(c, "/v1/completions", {"prompt": "x"})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        async with q:
            q.submit("first")  # served for 1 s
            await asyncio.sleep(0)
            q.submit("second")  # waits: the queue is now full
            r = await post(c, "/v1/completions", {"prompt": "x"})
            assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
            await q.stop(drain=False)


async def test_a_cold_server_does_not_guess_a_long_retry_after():
    # Before any request completed there is no service time to go by: the shortest Retry-After.
    q = ql.RequestQueue(ql.SimulatedModel(0.5), max_queue_size=3)
    async with q, client(create_app(q)) as c:
        q.submit("first")
        await wait_until(lambda: q.processing == 1, what="the first request processing")
        for i in range(3):
            q.submit(f"flood {i}")  # three waiting: full
        r = await post(c, "/v1/completions", {"prompt": "x"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        await q.stop(drain=False)


async def test_timings_reach_the_client_as_headers():
    q = ql.RequestQueue(ql.SimulatedModel(0.02))
    async with q, client(create_app(q)) as c:
        rs = await asyncio.gather(*(post(c, "/v1/completions", {"prompt": f"p{i}", "max_tokens": 1}) for i in range(3)))
    waits = sorted(float(r.headers["x-queuelab-wait-s"]) for r in rs)
    assert all(float(r.headers["x-queuelab-service-s"]) >= 0.015 for r in rs)
    assert waits[-1] >= 0.03  # the third waited for two services


def test_http_target_splits_wait_and_service_as_the_server_measured():
    async def burst(url):
        async with HTTPTarget(url) as t:
            return await stress.rapid_fire(t, n=4, max_new_tokens=2, progress=False)

    with ServerThread(lambda: ql.RequestQueue(ql.SimulatedModel(0.06))) as srv:
        run = ql.run(burst(srv.url))
    r = run.requests
    assert run.summary["n_completed"] == 4
    # Each first token comes half a service (30 ms) after the request left the queue; a client that
    # took TTFT for the wait (what it must do against other servers) would show ttft == wait.
    assert ((r.ttft - r.wait) >= 0.02).all()
    assert r.wait.max() >= 0.12  # the last waited for about three services


# -- hostile or broken clients -------------------------------------------------------------------------------
async def test_non_json_content_type_is_refused_before_the_queue():
    q = ql.RequestQueue(sim())
    async with q, client(create_app(q)) as c:
        r = await c.post("/v1/completions", content=json.dumps({"prompt": "x"}), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and q.stats().submitted == 0


async def test_deeply_nested_json_is_a_400():
    q = ql.RequestQueue(sim())
    async with q, client(create_app(q)) as c:
        r = await c.post("/v1/completions", content="[" * 50_000 + "]" * 50_000,
                         headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "nested" in r.json()["error"]["message"]


async def test_host_header_must_name_the_server_when_asked():
    q = ql.RequestQueue(sim())
    async with q, client(create_app(q, allowed_hosts=["127.0.0.1", "localhost"])) as c:
        assert (await c.get("/health", headers={"Host": "attacker.example"})).status_code == 400
        assert (await c.get("/health", headers={"Host": "localhost:8000"})).status_code == 200


async def test_a_stalled_body_times_out():
    async def slow_body():
        yield b'{"prompt": '
        await asyncio.sleep(5)
        yield b'"x"}'

    q = ql.RequestQueue(sim())
    async with q, client(create_app(q, body_timeout_s=0.2)) as c:
        r = await c.post("/v1/completions", content=slow_body(), headers={"Content-Type": "application/json"})
    assert r.status_code == 408 and q.stats().submitted == 0


def test_a_client_dropping_mid_body_logs_no_error(caplog):
    with ServerThread(lambda: ql.RequestQueue(sim())) as srv, caplog.at_level(logging.ERROR):
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"prompt\"")
        assert httpx.post(f"{srv.url}/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- admission: every failure becomes a REJECTED request ------------------------------------------------------
async def test_any_admission_failure_is_a_rejection_not_an_escape():
    def broken_tokenizer(prompt):
        raise TypeError("tokenizer exploded")

    q = ql.RequestQueue(ql.SimulatedModel(0, count_tokens=broken_tokenizer))
    async with q:
        reqs = [q.submit("hi"), q.submit("hi", temperature=10**400), q.submit("hi \ud800")]
    assert all(r.status is ql.RequestStatus.REJECTED and r.refusal == "invalid_request" for r in reqs)
    assert "TypeError: tokenizer exploded" in reqs[0].error and "temperature" in reqs[1].error
    assert "lone surrogate" in reqs[2].error
    s = q.stats()
    assert s.submitted == s.rejected == 3


async def test_chat_without_a_limit_may_use_the_rest_of_the_context_as_vllm():
    q = ql.RequestQueue(ql.SimulatedModel(0.001, max_context=50))
    async with q, client(create_app(q)) as c:
        chat = (await post(c, "/v1/chat/completions", {"messages": [{"role": "user", "content": "one two three"}]})).json()
        comp = (await post(c, "/v1/completions", {"prompt": "one two three"})).json()
    assert chat["usage"]["completion_tokens"] == 50 - 3
    assert comp["usage"]["completion_tokens"] == 16  # OpenAI's documented default for completions


async def test_continuous_usage_stats_put_the_usage_so_far_on_every_chunk():
    q = ql.RequestQueue(sim())
    async with q, client(create_app(q)) as c:
        ev = await events(c, "/v1/completions", {"prompt": "a b", "max_tokens": 3, "stream": True, "stream_options": {
            "include_usage": True, "continuous_usage_stats": True}})
        bad = await post(c, "/v1/completions", {"prompt": "a", "stream": True, "stream_options": {"frobnicate": 1}})
    text_chunks = [e for e in ev if e["choices"] and e["choices"][0]["text"]]
    assert [e["usage"]["completion_tokens"] for e in text_chunks] == [1, 2, 3]
    assert all(e["usage"]["prompt_tokens"] == 2 for e in text_chunks)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "stream_options.frobnicate"


async def test_get_endpoints_answer_head_as_probes_send_it():
    q = ql.RequestQueue(sim())
    async with q, client(create_app(q)) as c:
        for path in ("/health", "/v1/models", "/v1/models/simulated", "/stats", "/metrics"):
            assert (await c.head(path)).status_code == 200, path
        assert (await c.get("/stats")).json()["http_refused"] == {}
