"""``bbzo serve`` never hangs: abandoned and overdue generations stop, the queue is bounded, and
bad requests (bodies, methods, paths, sizes, names) get JSON errors in OpenAI's shape."""

from __future__ import annotations

import json
import socket
import threading
import types

import httpx
import pytest
import torch
from openai import OpenAI
from served import NAME, chat_body, endless_target, is_openai_error, tiny_folder

from bbzo.blackbox.serve import app as serve_app
from bbzo.blackbox.serve import served_names, start_server
from bbzo.blackbox.targets.hf import HFTarget

LONG = 100  # tokens (the context is 128): with 20 ms a step, 2 s of generation


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def slow(folder):
    """The endless tiny LM at 20 ms a step, and its step counter."""
    return endless_target(folder, step_s=0.02)


def wait_for(condition, timeout_s: float = 20.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("timed out waiting")


def test_an_abandoned_generation_is_stopped(slow):
    target, steps = slow
    with start_server(target, model_name=NAME) as server:
        steps.count = 0
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/chat/completions", json=chat_body(LONG), timeout=0.5)
        after = httpx.post(server.url + "/chat/completions", json=chat_body(2), timeout=30)
        used = steps.count
        stats = server.stats()
    assert after.status_code == 200
    assert after.json()["choices"][0]["finish_reason"] == "length"
    assert [a["status"] for a in stats["completions"]] == ["abandoned", 200]
    assert used < LONG // 2  # the abandoned generation stopped long before its 120 tokens


def test_a_generation_past_its_deadline_is_stopped_and_answered_504(slow):
    target, steps = slow
    with start_server(target, model_name=NAME, request_timeout=0.4) as server:
        steps.count = 0
        late = httpx.post(server.url + "/chat/completions", json=chat_body(LONG), timeout=30)
        quick = httpx.post(server.url + "/chat/completions", json=chat_body(2), timeout=30)
        used = steps.count
    assert late.status_code == 504 and is_openai_error(late)
    assert late.json()["error"]["code"] == "deadline_exceeded"
    assert quick.status_code == 200
    assert used < LONG // 2


def test_derived_deadline_grows_with_max_tokens(slow):
    target, _ = slow
    with start_server(target, model_name=NAME) as server:
        policy = server.deadlines
    assert policy.fixed_s is None and policy.token_s > 0
    assert policy.seconds(100, 1) > policy.seconds(10, 1) > 0
    assert policy.seconds(10, 2 * policy.max_batch) > policy.seconds(10, 1)


def test_a_full_queue_answers_503_with_retry_after(slow):
    target, steps = slow
    with start_server(target, model_name=NAME, max_queue=1) as server:
        steps.count = 0
        first: list[httpx.Response] = []
        sender = threading.Thread(target=lambda: first.append(httpx.post(
            server.url + "/chat/completions", json=chat_body(40), timeout=30)))
        sender.start()
        wait_for(lambda: steps.count > 0)  # the first request is at the model
        busy = httpx.post(server.url + "/chat/completions", json=chat_body(1), timeout=30)
        sender.join(30)
        after = httpx.post(server.url + "/chat/completions", json=chat_body(1), timeout=30)
    assert busy.status_code == 503 and is_openai_error(busy)
    assert busy.json()["error"]["code"] == "queue_full"
    assert float(busy.headers["Retry-After"]) > 0
    assert first[0].status_code == 200 and after.status_code == 200


@pytest.fixture(scope="module")
def plain(folder):
    target = HFTarget(str(folder), device="cpu")
    with start_server(target, model_name=NAME, max_body_bytes=4000) as server:
        yield server


def post(server, content: bytes, path: str = "/chat/completions") -> httpx.Response:
    return httpx.post(server.url + path, content=content,
                      headers={"Content-Type": "application/json"}, timeout=30)


def ok(server) -> bool:
    return httpx.post(server.url + "/chat/completions", json=chat_body(1),
                      timeout=30).status_code == 200


@pytest.mark.parametrize("raw,param", [
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800 hi"}]}',
     "messages[0].content"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\\udfff"}], "\\ud83d": 1}',
     None),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "caf\xe9"}]}', None),
    (b'{"model": "tiny", "messages": ' + b"[" * 40 + b"]" * 40 + b"}", "messages"),
])
def test_lone_surrogates_invalid_utf8_and_deep_nesting_are_400(plain, raw, param):
    bad = post(plain, raw)
    assert bad.status_code == 400 and is_openai_error(bad)
    assert bad.json()["error"]["param"] == param
    assert ok(plain)


@pytest.mark.parametrize("method,path,status,allow", [
    ("GET", "/chat/completions", 405, "POST"),
    ("PUT", "/completions", 405, "POST"),
    ("DELETE", "/models", 405, "GET"),
    ("POST", "/bbzo-nothing", 404, None),
    ("GET", "/embeddings", 404, None),
])
def test_wrong_methods_and_paths_are_json(plain, method, path, status, allow):
    answer = httpx.request(method, plain.url + path, timeout=30)
    assert answer.status_code == status and is_openai_error(answer)
    if allow is not None:
        assert allow in answer.headers["Allow"]


def test_max_tokens_beyond_the_context_is_400(plain):
    context = 128  # tests/tiny.py: n_positions
    for field in ("max_tokens", "max_completion_tokens"):
        body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}],
                field: context + 1}
        bad = httpx.post(plain.url + "/chat/completions", json=body, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == field
        assert str(context) in bad.json()["error"]["message"]
    huge = httpx.post(plain.url + "/completions", json={"model": NAME, "prompt": "hi",
                                                          "max_tokens": 2 ** 63 - 1}, timeout=30)
    assert huge.status_code == 400 and huge.json()["error"]["param"] == "max_tokens"


def test_bodies_at_and_over_the_size_limit(plain):
    base = chat_body(1, user="")
    size = len(httpx.Request("POST", "http://x", json=base).content)
    at_limit = httpx.Request("POST", "http://x", json={**base, "user": "u" * (4000 - size)})
    assert len(at_limit.content) == 4000
    fits = post(plain, at_limit.content)
    over = post(plain, at_limit.content[:-1] + b' }')
    chunked = httpx.post(plain.url + "/chat/completions",
                         content=iter([at_limit.content, b" " * 10]), timeout=30)
    assert fits.status_code == 200
    assert over.status_code == 413 and over.json()["error"]["code"] == "request_too_large"
    assert chunked.status_code == 413 and is_openai_error(chunked)
    assert ok(plain)


def test_a_stalled_body_is_answered_408(plain, monkeypatch):
    monkeypatch.setattr(serve_app, "BODY_S", 0.3)
    with socket.create_connection((plain.host, plain.port), timeout=30) as conn:
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mo")
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = conn.recv(4096)
            assert chunk, reply
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert ok(plain)


def test_served_names_alias_spec_and_override():
    alias = types.SimpleNamespace(id="hf:smollm2-135m-instruct:float32")
    assert served_names(alias, "hf:smollm2-135m-instruct") == [
        "smollm2-135m-instruct", "hf:smollm2-135m-instruct", "hf:smollm2-135m-instruct:float32"]
    folder = types.SimpleNamespace(id="hf:/models/lm:float32")
    assert served_names(folder) == ["hf:/models/lm:float32", "hf:/models/lm"]
    assert served_names(alias, "hf:smollm2-135m-instruct", "gpt-x") == ["gpt-x"]
    assert served_names(types.SimpleNamespace(id="plain")) == ["plain"]


def test_the_server_answers_to_every_listed_name_and_no_other(folder):
    target = HFTarget(str(folder), device="cpu")
    with start_server(target, spec=f"hf:{folder}") as server:
        listed = [m["id"] for m in httpx.get(server.url + "/models").json()["data"]]
        codes = {name: httpx.post(server.url + "/chat/completions",
                                  json={**chat_body(1), "model": name}).status_code
                 for name in [*listed, "tiny"]}
    with start_server(target, spec=f"hf:{folder}", model_name="gpt-x") as server:
        only = [m["id"] for m in httpx.get(server.url + "/models").json()["data"]]
        spec = httpx.post(server.url + "/chat/completions",
                          json={**chat_body(1), "model": f"hf:{folder}"})
    assert listed[0] == f"hf:{folder}" and target.id in listed
    assert codes == {**{name: 200 for name in listed}, "tiny": 404}
    assert only == ["gpt-x"] and spec.status_code == 404


def test_completions_echo_logprobs_equal_the_local_model(folder):
    target, _ = endless_target(folder)  # generations run to max_tokens
    prompts = ["Question: Which option is right?", "The correct answer is option: B."]
    with start_server(target, model_name=NAME) as server:
        client = OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        scored = client.completions.create(model=NAME, prompt=prompts, echo=True, logprobs=1,
                                           max_tokens=0, temperature=0)
        generated = client.completions.create(model=NAME, prompt=prompts[0], echo=True,
                                              logprobs=2, max_tokens=3, temperature=0)
        as_ids = client.completions.create(model=NAME, prompt=[target.tokenizer.encode(p)
                                                                for p in prompts],
                                           echo=True, logprobs=1, max_tokens=0)
        client.close()
    model, tok = target.model, target.tokenizer
    for prompt, choice in zip(prompts, scored.choices, strict=True):
        ids = tok.encode(prompt)
        with torch.no_grad():
            logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        lp = choice.logprobs
        assert choice.text == prompt
        assert lp.tokens == [tok.decode([i]) for i in ids]
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        want = [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))]
        assert lp.token_logprobs[1:] == pytest.approx(want, abs=1e-5)
        best = [tok.decode([int(logp[t - 1].argmax())]) for t in range(1, len(ids))]
        assert [list(top) for top in lp.top_logprobs[1:]] == [[b] for b in best]
        assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(ids))]
    assert [c.logprobs.token_logprobs for c in as_ids.choices] == \
        [c.logprobs.token_logprobs for c in scored.choices]
    assert [c.text for c in as_ids.choices] == prompts
    assert scored.usage.completion_tokens == 0
    assert scored.usage.prompt_tokens == sum(len(tok.encode(p)) for p in prompts)
    lp = generated.choices[0].logprobs
    n = len(tok.encode(prompts[0]))
    assert len(lp.tokens) == n + 3 and lp.token_logprobs[n - 1] is not None
    assert generated.choices[0].text.startswith(prompts[0])
    assert lp.text_offset[n] == len(prompts[0])
    assert all(len(top) <= 2 for top in lp.top_logprobs[1:])
