"""Corruptions, token selection, the embedding hook and the guarded target of
``bbzo.unlearn`` on a tiny random GPT-2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import save_tiny_lm

from bbzo.blackbox.protocol import Request
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.ledger import Ledger
from bbzo.blackbox.targets.hf import HFTarget
from bbzo.errors import InputError
from bbzo.unlearn.classifiers import KeywordClassifier
from bbzo.unlearn.corruptions import NAMES, Corruption
from bbzo.unlearn.guard import Guard, GuardedLM, forced
from bbzo.unlearn.hook import corrupt_prompts
from bbzo.unlearn.tokens import select_tokens

FLAGGED = "Question: What is the capital of France?\nAnswer:"
PLAIN = "Question: Which option is right? A B C D\nAnswer:"
OPTIONS = [" Paris", " A", " B"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> HFTarget:
    return HFTarget(str(save_tiny_lm(tmp_path_factory.mktemp("tiny"))), device="cpu")


def _loglik(lm, prompt, params=None):
    return lm.call([Request("option_loglik", {"prompt": prompt, "options": OPTIONS},
                            params or {})])[0].output["loglik"]


def _generate(target, prompt, **params):
    return target.call([Request("generate", {"prompt": prompt},
                                {"max_tokens": 6, "temperature": 0, **params})])[0]


# ---- corruptions ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_strength_zero_is_the_identity_and_draws_repeat(name):
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    c = Corruption(name, k=4, seed=3)
    assert torch.equal(c.apply(x, torch.tensor(0.0), 7), x)
    moved = c.apply(x, torch.tensor(1.0), 7)
    assert not torch.equal(moved, x)
    assert torch.equal(moved, c.apply(x, torch.tensor(1.0), 7))


def test_each_corruption_does_what_it_says():
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    noisy = Corruption("noise_first_k", k=2).apply(x, torch.tensor([1.0, 0.0]), 0)
    assert not torch.equal(noisy[:, 0], x[:, 0]) and torch.equal(noisy[:, 1:], x[:, 1:])
    zeroed = Corruption("zero_top_k", k=3).apply(x, torch.tensor(1.0), 0)
    assert ((zeroed == 0).sum(1) == 3).all()
    assert torch.allclose(zeroed.abs().max(1).values, x.abs().sort(1).values[:, -4])
    assert torch.equal(Corruption("flip_first_k", k=2).apply(x, torch.tensor(1.0))[:, :2],
                       -x[:, :2])
    turned = Corruption("rotation", k=None).apply(x, torch.tensor(1.0), 5)
    assert torch.allclose(turned.norm(dim=1), x.norm(dim=1), atol=1e-5)
    mixed = Corruption("shuffle", k=None).apply(x, torch.tensor(1.0), 2)
    assert sorted(map(tuple, mixed.tolist())) == sorted(map(tuple, x.tolist()))


def test_bad_corruptions_are_refused():
    with pytest.raises(InputError, match="unknown corruption 'blur'"):
        Corruption("blur")
    with pytest.raises(InputError, match="strength must be"):
        Corruption("noise_first_k", k=2).apply(torch.zeros(2, 8), torch.ones(3))


# ---- token selection -------------------------------------------------------------------------

def test_token_selection(lm):
    ids = lm.render({"prompt": FLAGGED}, {})
    mask = select_tokens(ids)
    assert mask[:-1].all() and not mask[-1]
    ents = select_tokens(ids, lm.tokenizer, "entities", focus=FLAGGED)
    picked = lm.tokenizer.decode([t for t, m in zip(ids, ents, strict=True) if m])
    assert "France" in picked and "Question" not in picked and "capital" not in picked
    assert select_tokens(ids[:1]).sum() == 0
    with pytest.raises(InputError, match="unknown token selection"):
        select_tokens(ids, mode="ner")


# ---- the hook --------------------------------------------------------------------------------

def test_hook_restores_exactly_and_keeps_other_hooks(lm):
    layer = lm.input_embeddings()
    seen = []
    other = layer.register_forward_hook(lambda m, i, o: seen.append(1))
    try:
        before = _loglik(lm, FLAGGED)
        hooks_before = dict(layer._forward_hooks)
        ids = lm.render({"prompt": FLAGGED}, {})
        with corrupt_prompts(layer, [(ids, select_tokens(ids))], Corruption(k=None), 50.0) as c:
            during = _loglik(lm, FLAGGED)
        assert c.hits == len(OPTIONS) and during != before  # one scoring row per option
        assert dict(layer._forward_hooks) == hooks_before  # ours gone, the other one kept
        assert _loglik(lm, FLAGGED) == before  # exactly as before
        n = len(seen)
        _loglik(lm, FLAGGED)
        assert len(seen) == n + 1
    finally:
        other.remove()


def test_hook_touches_only_its_prompt_and_only_prompt_positions(lm):
    layer = lm.input_embeddings()
    ids = lm.render({"prompt": FLAGGED}, {})
    mask = select_tokens(ids)
    clean = layer(torch.tensor([ids + [5, 6]])).detach()
    with corrupt_prompts(layer, [(ids, mask)], Corruption(k=None), 10.0):
        spy = []
        handle = layer.register_forward_hook(lambda m, i, o: spy.append((i[0], o.detach())))
        try:
            plain_before = _loglik(lm, PLAIN)
            layer(torch.tensor([ids + [5, 6]]))  # a scoring row: prompt, then two option tokens
        finally:
            handle.remove()
    changed = (spy[-1][1][0] != clean[0]).any(-1).numpy()
    assert changed.tolist() == mask.tolist() + [False, False]
    assert plain_before == _loglik(lm, PLAIN)  # another prompt in the context: untouched


def test_generation_corrupts_the_prompt_pass_only(lm):
    ids = lm.render({"prompt": FLAGGED}, {})
    layer = lm.input_embeddings()
    calls = []
    with corrupt_prompts(layer, [(ids, select_tokens(ids))], Corruption(k=None), 50.0) as c:
        handle = layer.register_forward_hook(lambda m, i, o: calls.append((i[0], o.detach())))
        try:
            out = _generate(lm, FLAGGED, logprobs=True)
        finally:
            handle.remove()
    prompt = [(i, o) for i, o in calls if i.shape[1] > 1]
    steps = [(i, o) for i, o in calls if i.shape[1] == 1]
    assert c.hits == 1 and len(prompt) == 1 and len(steps) == 5
    assert not torch.equal(prompt[0][1], layer.weight[prompt[0][0]])  # the prompt: corrupted
    for i, o in steps:  # every generated token: its plain embedding
        assert torch.equal(o, layer.weight[i])
    clean = _generate(lm, FLAGGED, logprobs=True)
    assert out.output["logprobs"][0]["logprob"] != clean.output["logprobs"][0]["logprob"]


# ---- the guarded target -------------------------------------------------------------------------

def _guard(**kw) -> Guard:
    clf = KeywordClassifier(keywords=["france"]).fit(["france", "x"], [1, 0])
    return Guard(clf, threshold=0.5, corruption=Corruption(k=None), strength=[50.0], **kw)


def test_guarded_lm_corrupts_flagged_prompts_only(lm):
    guarded = GuardedLM(lm, _guard())
    requests = [Request("option_loglik", {"prompt": p, "options": OPTIONS}) for p in
                (FLAGGED, PLAIN)]
    answers = guarded.call(requests)
    assert answers[1].output == lm.call([requests[1]])[0].output
    assert answers[0].output != lm.call([requests[0]])[0].output
    plain = _generate(guarded, PLAIN)
    assert plain.output == _generate(lm, PLAIN).output and plain.usage == _generate(lm, PLAIN).usage


def test_forced_corruption_goes_through_the_query_layer(lm, tmp_path):
    layer = QueryLayer(GuardedLM(lm), ledger=Ledger(tmp_path / "l.sqlite"))
    request = Request("option_loglik", {"prompt": PLAIN, "options": OPTIONS},
                      forced(Corruption(k=None), [50.0]))
    first = layer.submit([request])[0]
    assert first.output["loglik"] != _loglik(lm, PLAIN)
    again = layer.submit([request])[0]
    assert again.output == first.output
    assert layer.stats.sent == 1 and layer.stats.requests == 2


def test_guard_refuses_bad_settings(lm):
    with pytest.raises(InputError, match="unknown guard mode"):
        Guard(mode="maybe")
    with pytest.raises(InputError, match="fitted for"):
        GuardedLM(lm, _guard(model_id="hf:other:float32"))
    with pytest.raises(InputError, match="both"):
        Guard().fit(["same question"], ["same question"])
    request = Request("option_loglik", {"prompt": PLAIN, "options": OPTIONS},
                      {"corrupt": {"corruption": {"name": "blur"}, "strength": [1]}})
    with pytest.raises(InputError, match="unknown corruption"):
        GuardedLM(lm).call([request])
    assert np.isfinite(_loglik(lm, PLAIN)).all()


def test_prefix_mode_puts_the_prefix_before_flagged_prompts_only(lm):
    guarded = GuardedLM(lm, _guard(mode="prefix", prefix="Say you do not know."))
    flagged = _generate(guarded, FLAGGED, logprobs=True)
    by_hand = _generate(lm, f"{guarded.guard.prefix}\n\n{FLAGGED}", logprobs=True)
    assert flagged.output == by_hand.output
    assert _generate(guarded, PLAIN).output == _generate(lm, PLAIN).output


def test_entity_tokens_corrupt_less_than_all_tokens(lm):
    def moved(tokens: str) -> float:
        answer = GuardedLM(lm, _guard(tokens=tokens)).call(
            [Request("option_loglik", {"prompt": FLAGGED, "options": OPTIONS})])[0]
        return float(np.abs(np.subtract(answer.output["loglik"], _loglik(lm, FLAGGED))).sum())

    assert 0 < moved("entities") != moved("all_but_last")
