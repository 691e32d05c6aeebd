"""The guard: a prompt classifier with a calibrated threshold, a corruption and its strength;
and ``GuardedLM``, the ``Target`` that applies it in front of a local language model.

``GuardedLM.call`` answers every request kind of the model it wraps. A request the classifier
does not flag goes to the model unchanged (the same answer, tokens and usage as without the
guard). A flagged request is answered, depending on ``Guard.mode``:

- ``eco``: with its prompt's selected token embeddings corrupted (``bbzo.unlearn.hook``), on the
  prompt pass only;
- ``prefix`` (the fallback for models without reachable embeddings, API models included): with
  ``Guard.prefix`` in front of its prompt (a system message for chat requests);
- ``none``: unchanged (the model before unlearning).

A request may also force a corruption, whatever the classifier says, with
``params["corrupt"] = {"corruption": {"name", "k", "seed"}, "strength": [...], "tokens": mode}``:
this is how the strength search and the evaluation send the forward passes on corrupted
embeddings through the query layer (the parameters are part of the ledger key).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bbzo.blackbox.protocol import Request, Response
from bbzo.blackbox.targets.base import Target
from bbzo.checks import int_at_least
from bbzo.errors import InputError
from bbzo.unlearn.calibration import conformal_threshold, flag_rates, threshold_for_fpr
from bbzo.unlearn.classifiers import make_classifier
from bbzo.unlearn.corruptions import Corruption
from bbzo.unlearn.hook import corrupt_prompts
from bbzo.unlearn.tokens import MODES, select_tokens

PARAM = "corrupt"
GUARD_FILE = "guard.json"
CLASSIFIER_FILE = "classifier.pkl"
GUARD_MODES = ("eco", "prefix", "none")
DEFAULT_PREFIX = ("You have never learned anything about the topic of the following question. "
                  "Answer as someone who does not know about it.")


@dataclass
class Guard:
    """Classifier + threshold + corruption + strength (scikit-learn shaped: ``fit``).

    Attributes:
        classifier: a fitted classifier (``bbzo.unlearn.classifiers``) or None (unfitted).
        threshold: flag a prompt when p(forget) >= threshold.
        corruption: the corruption of flagged prompts.
        strength: its strength (one value, or ``corruption.dims(hidden)`` values).
        tokens: token selection (``all_but_last`` or ``entities``).
        keywords: extra entity keywords for ``entities``.
        mode: ``eco``, ``prefix`` or ``none``.
        prefix: the text put before flagged prompts in ``prefix`` mode.
        model_id: id of the model the guard was fitted for ("" = any).
        report: calibration figures (rates on the calibration sets).
    """

    classifier: object = None
    threshold: float = 0.5
    corruption: Corruption = field(default_factory=Corruption)
    strength: list[float] = field(default_factory=lambda: [1.0])
    tokens: str = "all_but_last"
    keywords: tuple[str, ...] = ()
    mode: str = "eco"
    prefix: str = DEFAULT_PREFIX
    model_id: str = ""
    report: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in GUARD_MODES:
            raise InputError(f"unknown guard mode {self.mode!r}; choose one of "
                             f"{', '.join(GUARD_MODES)}")
        if self.tokens not in MODES:
            raise InputError(f"unknown token selection {self.tokens!r}; choose one of "
                             f"{', '.join(MODES)}")
        self.strength = [float(s) for s in np.atleast_1d(np.asarray(self.strength, float))]

    def fit(self, forget: Sequence[str], retain: Sequence[str], *, classifier: str = "tfidf",
            target_fpr: float = 0.01, target_recall: float | None = None, folds: int = 5,
            seed: int = 0) -> Guard:
        """Fit the classifier on ``forget`` (positives) and ``retain`` (negatives) and set the
        threshold on cross-fitted scores (each prompt scored by a classifier fitted on the
        other ``folds`` − 1 folds): at most ``target_fpr`` of the negatives flagged, or, with
        ``target_recall``, split-conformal for that recall on the positives."""
        if not forget or not retain:
            raise InputError("the forget and retain sets must both be non-empty")
        overlap = set(forget) & set(retain)
        if overlap:
            raise InputError(f"{len(overlap)} prompt(s) are in both the forget and the retain "
                             f"set (e.g. {sorted(overlap)[0]!r}); remove them from one")
        int_at_least("folds", folds, 2)
        prompts = [*forget, *retain]
        labels = np.r_[np.ones(len(forget), int), np.zeros(len(retain), int)]
        held = _folds(labels, folds, seed)
        cross = np.zeros(len(prompts))
        for k in range(folds):
            train = held != k
            if (held == k).any() and len(set(labels[train])) == 2:
                model = make_classifier(classifier, seed).fit(
                    [p for p, t in zip(prompts, train, strict=True) if t], labels[train])
                cross[held == k] = model.predict_proba(
                    [p for p, h in zip(prompts, held == k, strict=True) if h])[:, 1]
        self.classifier = make_classifier(classifier, seed).fit(prompts, labels)
        spos, sneg = cross[labels == 1], cross[labels == 0]
        self.threshold = (threshold_for_fpr(sneg, target_fpr) if target_recall is None
                          else conformal_threshold(spos, target_recall))
        self.report = {"classifier": classifier, "calibration": "fpr" if target_recall is None
                       else "conformal", "target_fpr": target_fpr, "target_recall": target_recall,
                       "threshold": self.threshold, "folds": folds,
                       **flag_rates(cross, labels, self.threshold)}
        return self

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """p(forget topic) of each text, shape (n,)."""
        if self.classifier is None:
            raise InputError("the guard is not fitted; call fit(forget, retain) first")
        return np.asarray(self.classifier.predict_proba(list(texts)))[:, 1]

    def flags(self, texts: Sequence[str]) -> np.ndarray:
        """Which texts are flagged (bool, (n,)); none in mode ``none``."""
        if self.mode == "none" or not texts:
            return np.zeros(len(texts), dtype=bool)
        return self.scores(texts) >= self.threshold

    def settings(self) -> dict:
        """Everything but the classifier, as JSON data."""
        return {"threshold": self.threshold, "corruption": self.corruption.as_dict(),
                "strength": self.strength, "tokens": self.tokens, "keywords": list(self.keywords),
                "mode": self.mode, "prefix": self.prefix, "model_id": self.model_id,
                "report": self.report}

    def fingerprint(self) -> str:
        """A short hash of the settings and the classifier (part of ``GuardedLM.id``)."""
        h = hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode())
        h.update(pickle.dumps(self.classifier))
        return h.hexdigest()[:12]

    def save(self, folder: str | Path) -> None:
        """Write ``guard.json`` and ``classifier.pkl`` into ``folder``."""
        folder = Path(folder)
        (folder / GUARD_FILE).write_text(json.dumps(self.settings(), indent=2))
        (folder / CLASSIFIER_FILE).write_bytes(pickle.dumps(self.classifier))


def load_guard(folder: str | Path) -> Guard:
    """The guard saved in ``folder`` (by ``Guard.save``; only load folders you trust: the
    classifier is a pickle)."""
    folder = Path(folder)
    if not (folder / GUARD_FILE).is_file() or not (folder / CLASSIFIER_FILE).is_file():
        raise InputError(f"{folder} is not a guard artifact (no {GUARD_FILE} / "
                         f"{CLASSIFIER_FILE}); make one with 'bbzo unlearn fit'")
    s = json.loads((folder / GUARD_FILE).read_text())
    return Guard(pickle.loads((folder / CLASSIFIER_FILE).read_bytes()), s["threshold"],
                 Corruption(**s["corruption"]), s["strength"], s["tokens"],
                 tuple(s["keywords"]), s["mode"], s["prefix"], s["model_id"], s["report"])


def _folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index of each item, each class spread evenly over the folds (stratified)."""
    rng = np.random.default_rng(seed)
    held = np.empty(len(labels), dtype=int)
    for value in (0, 1):
        where = np.flatnonzero(labels == value)
        held[rng.permutation(where)] = np.arange(len(where)) % folds
    return held


def prompt_text(request: Request) -> str:
    """The text the classifier reads: the prompt, or the user messages joined by newlines."""
    prompt, messages = request.payload.get("prompt"), request.payload.get("messages")
    if isinstance(prompt, str):
        return prompt
    if isinstance(messages, list):
        return "\n".join(m.get("content", "") for m in messages
                         if isinstance(m, dict) and m.get("role") == "user"
                         and isinstance(m.get("content"), str))
    return ""


def forced(corruption: Corruption, strength: Sequence[float], tokens: str = "all_but_last"
           ) -> dict:
    """Request params that force ``corruption`` at ``strength`` on a request's prompt."""
    return {PARAM: {"corruption": corruption.as_dict(),
                    "strength": [float(s) for s in np.atleast_1d(strength)], "tokens": tokens}}


class GuardedLM(Target):
    """A local LM (``HFTarget``) behind a ``Guard``; see the module doc.

    ``id`` is the model's id plus ``+<mode>-<guard fingerprint>``, so ledgers never mix guarded
    and unguarded answers, while a server still answers to the model's own names.
    """

    def __init__(self, lm: Target, guard: Guard | None = None) -> None:
        guard = guard if guard is not None else Guard(mode="none")
        if guard.mode == "eco" and not (hasattr(lm, "input_embeddings") and hasattr(lm, "render")):
            raise InputError(f"{lm.id} exposes no input embeddings, so mode eco cannot run; use "
                             f"mode prefix (a prompt prefix) for API models")
        if guard.model_id and guard.model_id != lm.id:
            raise InputError(f"the guard was fitted for {guard.model_id}, not {lm.id}; load "
                             f"that model or fit a guard for this one")
        self.lm, self.guard = lm, guard
        self.id = f"{lm.id}+{guard.mode}-{guard.fingerprint()}" if guard.classifier is not None \
            else f"{lm.id}+eco"
        self.capabilities = lm.capabilities
        self.max_batch = lm.max_batch
        self.remote = lm.remote
        self._interruptible = "interrupt" in inspect.signature(lm.call).parameters

    def _plans(self, requests: list[Request]) -> list[tuple[str, dict | None, Request]]:
        """Per request: ("plain" | "corrupt" | "prefix", forced settings, request to send)."""
        plans: list = [None] * len(requests)
        free = []
        for i, r in enumerate(requests):
            spec = r.params.get(PARAM)
            if spec is None:
                free.append(i)
                continue
            params = {k: v for k, v in r.params.items() if k != PARAM}
            plans[i] = ("corrupt", _forced_settings(spec),
                        Request(r.kind, r.payload, params, r.sample))
        flagged = self.guard.flags([prompt_text(requests[i]) for i in free])
        for i, flag in zip(free, flagged, strict=True):
            r = requests[i]
            if not flag:
                plans[i] = ("plain", None, r)
            elif self.guard.mode == "prefix":
                plans[i] = ("prefix", None, self._prefixed(r))
            else:
                g = self.guard
                plans[i] = ("corrupt", {"corruption": g.corruption, "strength": g.strength,
                                        "tokens": g.tokens}, r)
        return plans

    def _prefixed(self, r: Request) -> Request:
        payload = dict(r.payload)
        if isinstance(payload.get("messages"), list):
            payload["messages"] = [{"role": "system", "content": self.guard.prefix},
                                   *payload["messages"]]
        elif isinstance(payload.get("prompt"), str):
            payload["prompt"] = f"{self.guard.prefix}\n\n{payload['prompt']}"
        return Request(r.kind, payload, r.params, r.sample)

    def call(self, requests: list[Request],
             interrupt: Sequence[Callable[[], bool] | None] | None = None) -> list[Response]:
        """Answer a batch: unflagged requests as the model does, flagged ones guarded."""
        for r in requests:
            self.check(r)
        checks = list(interrupt) if interrupt is not None else [None] * len(requests)
        groups: dict[str, list[int]] = {}
        plans = self._plans(requests)
        for i, (how, settings, _) in enumerate(plans):
            key = how if settings is None else json.dumps(
                {**settings, "corruption": settings["corruption"].as_dict()}, sort_keys=True)
            groups.setdefault(key, []).append(i)
        answers: list[Response | None] = [None] * len(requests)
        for where in groups.values():
            batch = [plans[i][2] for i in where]
            settings = plans[where[0]][1]
            if settings is None:
                out = self._send(batch, [checks[i] for i in where])
            else:
                with self.corrupting(batch, settings):
                    out = self._send(batch, [checks[i] for i in where])
            for i, answer in zip(where, out, strict=True):
                answers[i] = answer
        return answers  # type: ignore[return-value]

    def _send(self, batch: list[Request], checks: list) -> list[Response]:
        if self._interruptible:
            return self.lm.call(batch, interrupt=checks)
        return self.lm.call(batch)

    def corrupting(self, batch: list[Request], settings: dict) -> corrupt_prompts:
        """The hook context that corrupts the prompts of ``batch`` as ``settings`` says."""
        tok = self.lm.tokenizer
        prompts = []
        for r in batch:
            ids = self.lm.render(r.payload, r.params)
            prompts.append((ids, select_tokens(ids, tok, settings["tokens"], prompt_text(r),
                                               self.guard.keywords)))
        return corrupt_prompts(self.lm.input_embeddings(), prompts, settings["corruption"],
                               settings["strength"])

    async def acall(self, request: Request) -> Response:
        """A remote model: flagged requests get the prefix (mode ``prefix``) or go unchanged."""
        how, _, sent = self._plans([request])[0]
        if how == "corrupt":
            raise InputError(f"{self.lm.id} is remote: its embeddings are out of reach; use "
                             f"mode prefix")
        return await self.lm.acall(sent)

    def close(self) -> None:
        self.lm.close()


def _forced_settings(spec: object) -> dict:
    if not (isinstance(spec, dict) and isinstance(spec.get("corruption"), dict)
            and "strength" in spec):
        raise InputError(f"params[{PARAM!r}] must be {{'corruption': {{name, k, seed}}, "
                         f"'strength': [...], 'tokens': mode}}")
    try:
        corruption = Corruption(**spec["corruption"])
    except TypeError as err:
        raise InputError(f"params[{PARAM!r}]['corruption']: {err}") from None
    tokens = spec.get("tokens", "all_but_last")
    if tokens not in MODES:
        raise InputError(f"unknown token selection {tokens!r}; choose one of {', '.join(MODES)}")
    strength = np.atleast_1d(np.asarray(spec["strength"], dtype=float))
    if not np.isfinite(strength).all():
        raise InputError("strength values must be finite numbers")
    return {"corruption": corruption, "strength": strength.tolist(), "tokens": tokens}
