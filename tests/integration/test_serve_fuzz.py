"""Generated malformed bodies thrown at ``bbzo serve``: each gets a JSON 4xx in OpenAI's error
shape (never a 5xx, never a dropped connection), and the server still answers afterwards."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from served import NAME, chat_body, is_openai_error, tiny_folder

from bbzo.blackbox.serve import start_server
from bbzo.blackbox.targets.hf import HFTarget

LIMIT = 4000  # body bytes
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
huge = st.integers(min_value=2 ** 63, max_value=10 ** 40) | st.integers(max_value=-2 ** 63)
not_number = st.text(max_size=10) | st.booleans() | st.lists(st.integers(), max_size=3) \
    | st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)
# Per field, values that are always wrong for it.
WRONG = {
    "model": st.text(max_size=20).filter(lambda s: s != NAME) | st.integers()
    | st.lists(st.text(), max_size=2),
    "messages": st.text(max_size=10) | st.integers() | st.just([])
    | st.lists(st.integers() | st.text(), min_size=1, max_size=3)
    | st.lists(st.fixed_dictionaries({"role": json_values, "content": st.integers()}),
               min_size=1, max_size=2),
    "max_tokens": not_number | huge | st.integers(max_value=-1) | st.integers(129, 2 ** 62)
    | st.floats(),
    "temperature": not_number | huge | st.floats(max_value=-0.001) | st.floats(min_value=2.001),
    "top_p": not_number | huge | st.floats(max_value=0.0) | st.floats(min_value=1.001),
    "n": not_number | huge | st.integers(max_value=0) | st.integers(min_value=129),
    "seed": not_number | huge | st.floats(),
    "stop": st.integers() | st.booleans() | st.just("") | st.just([])
    | st.lists(st.text(min_size=1, max_size=3), min_size=5, max_size=6)
    | st.lists(st.integers(), min_size=1, max_size=3),
    "logprobs": st.integers() | st.text(max_size=5) | st.lists(st.booleans(), max_size=2),
    "stream": st.just(True) | st.text(min_size=1, max_size=5)
    | st.lists(st.integers(), min_size=1, max_size=2),
    "user": st.integers() | st.booleans() | st.lists(st.text(), max_size=2),
}


# The completions API: "prompt" instead of "messages"; a ZERO max_tokens needs echo.
WRONG_PROMPT = st.integers() | st.just([]) | st.lists(st.text(), min_size=129, max_size=130) \
    | st.lists(st.integers(max_value=-1), min_size=1, max_size=2) \
    | st.lists(st.booleans(), min_size=1, max_size=2) | st.dictionaries(st.text(), st.text())
BASES = {"/chat/completions": ("messages", chat_body(1)),
         "/completions": ("prompt", {"model": NAME, "prompt": "hi", "max_tokens": 1})}


def _encode(body: object) -> bytes:
    return json.dumps(body).encode()


def _decodes(raw: bytes) -> bool:
    """Whether ``raw`` is valid UTF-8 (dropping the undecodable bytes changes nothing)."""
    return raw.decode("utf-8", "ignore").encode() == raw


def bodies(path: str) -> st.SearchStrategy[bytes]:
    """Malformed bodies for the endpoint ``path``, built around a valid one."""
    text_field, base = BASES[path]
    wrong = {**WRONG, text_field: WRONG["messages"] if text_field == "messages" else WRONG_PROMPT}
    if text_field == "prompt":  # logprobs is a count there; echo a flag
        del wrong["messages"]
        wrong["logprobs"] = st.text(max_size=5) | st.booleans() | st.integers(max_value=-1) \
            | st.integers(min_value=21) | st.lists(st.integers(), max_size=2)
        wrong["echo"] = st.integers() | st.text(max_size=5) | st.lists(st.booleans(), max_size=2)
    raw = _encode(base)
    return st.one_of(
        st.sampled_from(sorted(wrong)).flatmap(
            lambda name: wrong[name].map(lambda value: _encode({**base, name: value}))),
        st.text(min_size=1, max_size=12).filter(lambda k: k not in base).flatmap(
            lambda key: json_values.map(lambda v: _encode({**base, key: v}))),
        json_values.filter(lambda v: not isinstance(v, dict)).map(_encode),
        st.dictionaries(st.text(max_size=8), json_values, max_size=5).map(_encode),
        st.sampled_from([b"NaN", b"Infinity", b"-Infinity"]).map(
            lambda c: raw[:-1] + b', "temperature": ' + c + b"}"),
        st.integers(0xD800, 0xDFFF).map(
            lambda u: raw[:-1] + f', "user": "\\u{u:04x} x"}}'.encode()),
        st.integers(33, 3000).map(
            lambda d: raw[:-1] + b', "user": ' + b"[" * d + b"]" * d + b"}"),
        st.binary(min_size=1, max_size=40).filter(lambda b: not _decodes(b)).map(
            lambda b: raw[:-1] + b', "user": "' + b + b'"}'),
        st.integers(1, len(raw) - 1).map(lambda n: raw[:n]),
        st.integers(LIMIT + 1, 2 * LIMIT).map(
            lambda n: _encode({**base, "user": "u" * n})),
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    target = HFTarget(str(tiny_folder(tmp_path_factory)), device="cpu")
    with start_server(target, model_name=NAME, max_body_bytes=LIMIT) as handle:
        yield handle


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=30) as client:
        yield client


def check_4xx(server, http, path: str, raw: bytes) -> None:
    answer = http.post(server.url + path, content=raw,
                       headers={"Content-Type": "application/json"})
    assert 400 <= answer.status_code < 500, (answer.status_code, raw[:200], answer.text)
    assert is_openai_error(answer), answer.text


@SETTINGS
@given(raw=bodies("/chat/completions"))
def test_malformed_chat_bodies_get_a_json_4xx(server, http, raw):
    check_4xx(server, http, "/chat/completions", raw)


@SETTINGS
@given(raw=bodies("/completions"))
def test_malformed_completion_bodies_get_a_json_4xx(server, http, raw):
    check_4xx(server, http, "/completions", raw)


def test_the_server_still_answers_after_the_fuzzing(server, http):
    good = http.post(server.url + "/chat/completions", json=chat_body(1))
    stats = server.stats()["by_status"]
    assert good.status_code == 200
    assert not [code for code in stats if code.startswith("5")], stats
