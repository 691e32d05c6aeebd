"""TOFU metrics (``bbzo.unlearn.metrics``): ROUGE-L on hand-checked strings, truth ratio and
probability from controlled log-likelihoods through a real ``QueryLayer``, forget quality by the
KS test, model utility, and ``bbzo unlearn eval --metrics tofu`` on tiny models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from tiny import save_tiny_lm

from bbzo.attacks.seca.questions import Question
from bbzo.blackbox.protocol import Response
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.targets.base import Target
from bbzo.cli.main import cli
from bbzo.errors import InputError, TargetError
from bbzo.unlearn.metrics import (
    answer_probability,
    forget_quality,
    model_utility,
    qa_metrics,
    rouge_l_recall,
    tofu_report,
    truth_ratio,
    truth_ratio_statistic,
)


@pytest.mark.parametrize(("prediction", "reference", "expected"), [
    ("The cat sat on the mat", "the cat is on the mat", 5 / 6),  # LCS: the cat on the mat
    ("mat the on cat the", "the cat on the mat", 3 / 5),  # LCS: the on the
    ("PARIS!", "Paris", 1.0),  # case and punctuation are not tokens
    ("It is Paris, in France.", "Paris", 1.0),  # recall ignores extra words
    ("Berlin", "Paris", 0.0),
    ("", "Paris", 0.0),
    ("Paris", "...", 0.0),  # a reference without tokens
    ("a b c", "a x b y c z", 3 / 6),
])
def test_rouge_l_recall_hand_checked(prediction, reference, expected):
    assert rouge_l_recall(prediction, reference) == pytest.approx(expected)


def test_rouge_l_recall_matches_rouge_score_without_stemming():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = np.random.default_rng(0)
    words = ["the", "author", "Hsiao", "born", "in", "Taipei", "1991,", "writes", "leadership"]
    for _ in range(50):
        pred = " ".join(rng.choice(words, rng.integers(0, 12)))
        ref = " ".join(rng.choice(words, rng.integers(1, 12)))
        assert rouge_l_recall(pred, ref) == pytest.approx(scorer.score(ref, pred)["rougeL"].recall)


class Fixed(Target):
    """Answers ``option_loglik`` with the log-likelihoods given per question text, and
    ``generate`` with the text given per question."""

    id = "fixed"
    capabilities = frozenset({"option_loglik", "generate"})
    max_batch = 16

    def __init__(self, scores: dict[str, tuple[list[float], list[int]]],
                 texts: dict[str, str]) -> None:
        self.scores, self.texts = scores, texts

    def call(self, requests):
        out = []
        for r in requests:
            question = r.payload["prompt"].split("\n")[0].removeprefix("Question: ")
            if r.kind == "generate":
                out.append(Response({"text": self.texts[question], "finish_reason": "stop"}))
            else:
                ll, n = self.scores[question]
                out.append(Response({"loglik": ll, "ntokens": n}))
        return out


QUESTIONS = [Question("a", "Capital of France?", ("Paris", "Rome", "Oslo"), 0),
             Question("b", "Capital of Italy?", ("Paris", "Rome", "Oslo"), 1)]
SCORES = {"Capital of France?": ([-2.0, -6.0, -9.0], [2, 3, 3]),  # per token -1, -2, -3
          "Capital of Italy?": ([-4.0, -3.0, -2.0], [1, 1, 1])}  # per token -4, -3, -2
TEXTS = {"Capital of France?": "Paris", "Capital of Italy?": "Milan"}


def test_truth_ratio_and_probability_from_controlled_logliks():
    m = qa_metrics(QueryLayer(Fixed(SCORES, TEXTS)), QUESTIONS)
    # France: wrong options' per-token log P -2, -3 (geometric mean e^-2.5) over right's e^-1
    # Italy: right is Rome (-3), wrong -4 and -2 (geometric mean e^-3): ratio 1
    assert m.truth_ratio == pytest.approx([math.exp(-1.5), 1.0])
    e = np.exp
    assert m.probability == pytest.approx([e(-1) / (e(-1) + e(-2) + e(-3)),
                                           e(-3) / (e(-4) + e(-3) + e(-2))])
    assert m.correct.tolist() == [True, False]
    assert m.rouge_l.tolist() == [1.0, 0.0] and m.generations == ["Paris", "Milan"]
    assert m.summary(forget=True)["truth_ratio"] == pytest.approx((math.exp(-1.5) + 1) / 2)
    assert m.summary(forget=False)["truth_ratio"] == pytest.approx((1 - math.exp(-1.5)) / 2)


def test_truth_ratio_functions_check_their_input():
    assert truth_ratio([-1.0, -1.0], [1, 1], 1) == 1.0
    assert answer_probability([0.0, 0.0, 0.0, 0.0], [1, 2, 3, 4], 3) == pytest.approx(0.25)
    with pytest.raises(InputError, match="ntokens"):
        truth_ratio([-1.0, -2.0], [0, 1], 0)
    with pytest.raises(InputError, match="answer"):
        truth_ratio([-1.0, -2.0], [1, 1], 2)
    with pytest.raises(InputError, match="same length"):
        answer_probability([-1.0], [1], 0)


def test_a_target_without_token_counts_is_a_target_error():
    scores = {q: (ll, None) for q, (ll, _) in SCORES.items()}
    with pytest.raises(TargetError, match="ntokens"):
        qa_metrics(QueryLayer(Fixed(scores, TEXTS)), QUESTIONS, generate=False)


def test_forget_quality_is_a_ks_p_value():
    rng = np.random.default_rng(0)
    a = rng.lognormal(size=200)
    assert forget_quality(a, a) == pytest.approx(1.0)
    assert forget_quality(a, rng.lognormal(size=200)) > 0.01  # same distribution
    assert forget_quality(a, a * 20) < 1e-10  # shifted
    with pytest.raises(InputError):
        forget_quality([], a)


def test_model_utility_is_a_harmonic_mean_and_statistics_are_tofus():
    assert model_utility([0.5, 0.5, 1.0]) == pytest.approx(3 / (2 + 2 + 1))
    assert model_utility([0.9, 0.0, 0.8]) == 0.0
    with pytest.raises(InputError):
        model_utility([])
    assert truth_ratio_statistic([0.5, 2.0, 1.0], forget=True) == pytest.approx(2 / 3)
    assert truth_ratio_statistic([0.25, 2.0], forget=False) == pytest.approx(0.375)


def test_tofu_report_figures_and_forget_quality():
    layer = QueryLayer(Fixed(SCORES, TEXTS))
    sets = {"forget": QUESTIONS[:1], "retain": QUESTIONS[1:]}
    figures, per_set = tofu_report(layer, sets, reference=[math.exp(-1.5)])
    assert figures["forget_quality"] == pytest.approx(1.0)  # same single truth ratio
    # retain: probability e^-3/(e^-4+e^-3+e^-2), rouge 0 -> utility 0
    assert figures["retain_rouge_l"] == 0.0 and figures["model_utility"] == 0.0
    assert figures["forget_rouge_l"] == 1.0 and figures["forget_accuracy"] == 1.0
    assert per_set["forget"].truth_ratio.shape == (1,)
    with pytest.raises(InputError, match="world"):
        tofu_report(layer, sets, utility=("retain", "world"))
    with pytest.raises(InputError, match="reference holds 2"):
        tofu_report(layer, sets, reference=[1.0, 1.0])


FORGET = [f"Which book did the wizard Zorblax Quennel write in year {y}?" for y in range(1, 9)]
RETAIN = [f"What is {a} plus {a + 1} in ordinary arithmetic?" for a in range(1, 9)]


def _write(path, questions):
    path.write_text("".join(json.dumps({"question": q, "answer": "red",
                                        "perturbed_answer": ["green", "blue"]}) + "\n"
                            for q in questions))
    return path


def test_cli_eval_reports_tofu_metrics(tmp_path):
    model = f"hf:{save_tiny_lm(tmp_path / 'lm')}"
    forget, retain = _write(tmp_path / "f.jsonl", FORGET), _write(tmp_path / "r.jsonl", RETAIN)
    runner = CliRunner()
    fit = runner.invoke(cli, ["unlearn", "fit", "--model", model, "--forget", str(forget),
                              "--retain", str(retain), "--k", "all", "--evaluations", "2",
                              "--target-recall", "0.5", "--out", str(tmp_path / "g")])
    assert fit.exit_code == 0, fit.output
    g = tmp_path / "g"
    result = runner.invoke(cli, ["unlearn", "eval", str(g), "--forget",
                                 str(g / "heldout_forget.jsonl"), "--retain",
                                 str(g / "heldout_retain.jsonl"), "--metrics", "tofu",
                                 "--reference", model, "--max-tokens", "4",
                                 "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    s = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert s["forget_accuracy"] >= 0 and s["classifier_fnr"] == 0.0  # existing keys kept
    # the reference is the unguarded model itself: identical truth ratios before the guard
    assert s["forget_quality_before"] == pytest.approx(1.0)
    assert 0.0 <= s["forget_quality"] <= 1.0
    for key in ("forget_truth_ratio", "forget_rouge_l", "forget_probability",
                "retain_truth_ratio", "retain_rouge_l", "retain_probability", "model_utility"):
        assert 0.0 <= s[key] <= 1.0 and 0.0 <= s[f"{key}_before"] <= 1.0
    # retain prompts are not flagged: the guard leaves their figures untouched
    assert s["retain_truth_ratio"] == s["retain_truth_ratio_before"]
    assert s["retain_rouge_l"] == s["retain_rouge_l_before"]
    ratios = json.loads((tmp_path / "e" / "tofu.json").read_text())["forget_truth_ratios"]
    assert ratios["reference"] == ratios["guarded_before"] and len(ratios["guarded"]) == 4
    refused = runner.invoke(cli, ["unlearn", "eval", str(g), "--forget", str(forget),
                                  "--retain", str(retain), "--reference", model,
                                  "--out", str(tmp_path / "e2")])
    assert refused.exit_code == 2 and "--metrics tofu" in refused.output
