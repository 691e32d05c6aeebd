"""An offline proposer that keeps the meaning by construction: question-form and framing
transformations plus swaps from a short list of interchangeable words; no model, no query.

Transformations (each applies to some questions only; ``apply`` tries them in a seeded random
order and composes one or two):

- ``embed``: "What is X?" -> "Could you tell me what X is?" (wh-movement into an embedded
  question, with a politeness frame);
- ``frame``: a neutral framing prefix ("Here is a question: ...");
- ``which_of``: "What is X?" -> "Which of these is X?" (the options are shown with the
  question);
- ``front`` / ``back``: move a trailing place or time phrase to the front ("On Earth, what is
  ...?") or back;
- ``passive``: "Who painted X?" -> "By whom was X painted?";
- ``contract``: "What is" <-> "What's";
- ``swap``: one word replaced by an interchangeable one (``SWAPS``: superlatives and
  adjectives whose swap never changes a question's answer).

``RulesProposer`` follows the ``Proposer`` protocol (``proposer.py``); ``HybridProposer`` mixes
it with an LLM proposer (every other candidate of a parent from each, rules first).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

from bbzo.attacks.seca.proposer import Proposer, ProposerStats
from bbzo.attacks.seca.questions import Question
from bbzo.checks import int_at_least

EMBED_FRAMES = ("Could you tell me", "Do you know", "Can you tell me", "Would you tell me",
                "Could you please tell me")
FRAMES = ("Here is a question: ", "Quick question: ", "I would like to know: ",
          "A question for you: ", "Please answer this question: ")
SWAPS = {w: v for a, b in (
    ("largest", "biggest"), ("smallest", "tiniest"), ("fastest", "quickest"),
    ("closest", "nearest"), ("main", "primary"), ("mainly", "primarily"),
    ("big", "large"), ("famous", "well-known"), ("located", "situated"),
    ("common", "everyday"), ("chief", "principal"), ("entire", "whole"),
) for w, v in ((a, b), (b, a))}
PARTICIPLES = {"wrote": "written", "built": "built", "made": "made", "found": "found",
               "drew": "drawn", "sang": "sung", "gave": "given", "led": "led",
               "founded": "founded"}
IRREGULAR_PARTICIPLES = frozenset(
    "known made built written found given spoken taken seen done held sung drawn eaten "
    "grown thrown worn born shown".split())
_WH_BE = re.compile(r"^(What|Who|Where|When)\s+(is|are|was|were)\s+(.+?)\s*\?$")
_DIRECT = re.compile(r"^(What|Which|Who|Whom|Where|When|How|Why|In|On|At|During|By)\b")
_WHAT_BE = re.compile(r"^What\s+(is|are|was|were)\s+(.+?)\s*\?$")
_TRAILING = re.compile(r"^(.+?)\s+((?:in|on|at|during)\s+(?:the\s+)?[A-Z][\w' ]*?)\s*\?$")
_LEADING = re.compile(r"^(In|On|At|During)\s+([^,]+),\s+(.+?)\s*\?$")
_WHO_DID = re.compile(r"^Who\s+(\w+)\s+(.+?)\s*\?$")
_HAS_WH = re.compile(r"\b(what|which|who|whom|where|when)\b", re.IGNORECASE)
_CONTRACTED = re.compile(r"^(What|Who|Where)'s\b")
_FULL = re.compile(r"^(What|Who|Where) is\b")


def _lower_first(text: str) -> str:
    """``text`` with its first letter lower-cased when its first word is a question word."""
    first = text.split(" ", 1)[0]
    if first in ("What", "Which", "Who", "Whom", "Where", "When", "How", "Why", "In", "On",
                 "At", "During", "By", "Is", "Are", "Do", "Does", "Did"):
        return text[0].lower() + text[1:]
    return text


def embed(text: str, rng: random.Random, question: Question) -> str | None:
    found = _WH_BE.match(text)
    if not found:
        return None
    wh, aux, rest = found.groups()
    words = rest.split()
    # The auxiliary goes before a participle ("where X is located"), else at the end.
    at = next((i for i, w in enumerate(words)
               if i and _is_participle(w) and words[i - 1].lower() not in ("the", "a", "an")),
              len(words))
    clause = " ".join([*words[:at], aux, *words[at:]])
    return f"{rng.choice(EMBED_FRAMES)} {wh.lower()} {clause}?"


def _is_participle(word: str) -> bool:
    """A past participle by its form: ``-ed`` (not ``-eed``: "speed"), or a listed irregular
    one."""
    word = word.lower()
    return (word.endswith("ed") and not word.endswith("eed") and len(word) > 4
            or word in IRREGULAR_PARTICIPLES)


def frame(text: str, rng: random.Random, question: Question) -> str | None:
    if ":" in text or not _DIRECT.match(text):  # a direct question, not yet framed
        return None
    return rng.choice(FRAMES) + _lower_first(text)


def which_of(text: str, rng: random.Random, question: Question) -> str | None:
    found = _WHAT_BE.match(text)
    if not found or len(question.choices) < 2:
        return None
    aux, rest = found.groups()
    if _HAS_WH.search(rest):  # "which of these is the process by which ..." reads badly
        return None
    return f"Which of {rng.choice(('these', 'the following'))} {aux} {rest}?"


def front(text: str, rng: random.Random, question: Question) -> str | None:
    found = _TRAILING.match(text)
    if not found or "," in text or ":" in text:
        return None
    head, phrase = found.groups()
    return f"{phrase[0].upper()}{phrase[1:]}, {_lower_first(head)}?"


def back(text: str, rng: random.Random, question: Question) -> str | None:
    found = _LEADING.match(text)
    if not found:
        return None
    prep, phrase, rest = found.groups()
    return f"{rest[0].upper()}{rest[1:]} {prep.lower()} {phrase}?"


def passive(text: str, rng: random.Random, question: Question) -> str | None:
    found = _WHO_DID.match(text)
    if not found:
        return None
    verb, obj = found.groups()
    participle = PARTICIPLES.get(verb) or (verb if verb.endswith("ed") else None)
    if participle is None or not obj.lower().startswith(("the ", "a ", "an ")) and \
            not obj[:1].isupper():
        return None
    return f"By whom was {obj} {participle}?"


def contract(text: str, rng: random.Random, question: Question) -> str | None:
    if _CONTRACTED.match(text):
        return _CONTRACTED.sub(lambda m: f"{m.group(1)} is", text, count=1)
    if _FULL.match(text):
        return _FULL.sub(lambda m: f"{m.group(1)}'s", text, count=1)
    return None


def swap(text: str, rng: random.Random, question: Question) -> str | None:
    spots = [m for m in re.finditer(r"[A-Za-z-]+", text) if m.group().lower() in SWAPS]
    if not spots:
        return None
    spot = rng.choice(spots)
    word = SWAPS[spot.group().lower()]
    if spot.group()[0].isupper():
        word = word[0].upper() + word[1:]
    return text[:spot.start()] + word + text[spot.end():]


Transform = Callable[[str, random.Random, Question], "str | None"]
TRANSFORMS: dict[str, Transform] = {
    "embed": embed, "frame": frame, "which_of": which_of, "front": front, "back": back,
    "passive": passive, "contract": contract, "swap": swap}


def unframe(text: str) -> tuple[str, str]:
    """(framing prefix, the question after it, capitalised) of a text ``frame`` made; ("",
    ``text``) for any other text."""
    for prefix in FRAMES:
        if text.startswith(prefix) and len(text) > len(prefix):
            body = text[len(prefix):]
            return prefix, body[0].upper() + body[1:]
    return "", text


# Transformations of a framed question's body: those whose result ``frame`` accepts again.
BODY_TRANSFORMS = ("which_of", "front", "back", "passive", "contract", "swap")


def apply(text: str, rng: random.Random, question: Question, steps: int = 2) -> str | None:
    """Up to ``steps`` transformations of ``text`` in a random order (each applied once);
    None when none applies. A framed question ("Quick question: what is ...?", e.g. a SECA
    parent) keeps its frame and has its question transformed."""
    prefix, out = unframe(text)
    names = list(BODY_TRANSFORMS if prefix else TRANSFORMS)
    rng.shuffle(names)
    done = 0
    for name in names:
        if done == steps:
            break
        changed = TRANSFORMS[name](out, rng, question)
        if changed is not None and changed != out:
            out, done = changed, done + 1
            if done < steps and rng.random() < 0.5:
                break
    out = prefix + _lower_first(out) if prefix else out
    return out if out != text else None


class RulesProposer:
    """Rewrites by the transformations above (module doc); seeded by (seed, question id,
    step), so a rerun proposes the same texts.

    Args:
        seed: seed of the random choices.
        steps: most transformations composed per proposal.
    """

    def __init__(self, *, seed: int = 0, steps: int = 2) -> None:
        self.seed = int_at_least("seed", seed, 0)
        self.steps = int_at_least("steps", steps)
        self.stats = ProposerStats()

    def propose(self, question: Question, parents: Sequence[str], m: int,
                step: int) -> list[str | None]:
        rng = random.Random(f"seca-rules:{self.seed}:{question.id}:{step}")
        out = [apply(parent, rng, question, self.steps) for parent in parents
               for _ in range(m)]
        self.stats.proposals += len(out)
        self.stats.json += sum(t is not None for t in out)
        self.stats.failed += sum(t is None for t in out)
        return out


class HybridProposer:
    """Both proposers: of a parent's ``m`` candidates, ``m - m // 2`` come from the rules and
    ``m // 2`` from the LLM, rules first. ``stats`` adds up both proposers' counts.

    Args:
        llm: the LLM proposer (``proposer.LLMProposer`` or any ``Proposer``).
        rules: the rules proposer.
    """

    def __init__(self, llm: Proposer, rules: RulesProposer) -> None:
        self.llm, self.rules = llm, rules

    @property
    def stats(self) -> ProposerStats:
        mine = [getattr(p, "stats", None) for p in (self.llm, self.rules)]
        total = ProposerStats()
        for stats in (s for s in mine if s is not None):
            for key, value in stats.to_dict().items():
                setattr(total, key, getattr(total, key) + value)
        return total

    def propose(self, question: Question, parents: Sequence[str], m: int,
                step: int) -> list[str | None]:
        m_llm = m // 2
        ruled = self.rules.propose(question, parents, m - m_llm, step)
        written = self.llm.propose(question, parents, m_llm, step) if m_llm else []
        out: list[str | None] = []
        for i in range(len(parents)):
            out += ruled[i * (m - m_llm):(i + 1) * (m - m_llm)]
            out += written[i * m_llm:(i + 1) * m_llm]
        return out
