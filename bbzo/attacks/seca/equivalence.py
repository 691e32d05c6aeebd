"""Offline checkers a user can audit (``bbzo attack check``): each catches one way a rewrite
stops asking the same question, with no model and no query. They follow the ``Constraint``
protocol of ``constraints.py`` and run before the model-based checks.

- ``ContentAlignment`` (equivalence): every content word the rewrite adds, and every one it
  drops, must be matched by a near-synonym on the other side (``lexicon.synonyms``); catches
  added information ("... that you forgot"), omitted key information, narrowed or widened
  scope ("land mammal"), a different question about the same topic. Score: unmatched words.
- ``NegationAntonym`` (equivalence): the count of negations differs, or the rewrite uses the
  opposite (``lexicon.antonyms``) of a word of the original ("absorb" -> "release").
- ``QualifierChange`` (equivalence): numbers, units, names (capitalised words), qualifiers
  ("only", "first", "current") or the tense of the auxiliaries differ.
- ``Repetition`` (coherence): a word or a content bigram repeated where the original had it
  once, more sentences than the original, or broken order ("the what", "the who").
- ``Agreement`` (coherence): a counted plural ("two oceans", "both cities") as the subject of
  a singular verb ("which two oceans is connected by ...").

The thresholds are counts: ``ContentAlignment(max_unmatched=0)`` fails a rewrite with any
unmatched content word. On the labelled pairs of ``tests/data/seca_pairs.jsonl`` (README) the
zero threshold was chosen on the calibration half.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from bbzo.attacks.seca.constraints import Verdict
from bbzo.attacks.seca.lexicon import (
    AUX,
    FUNCTION,
    NUMBER_WORDS,
    WH,
    Words,
    antonyms,
    synonyms,
    words,
)
from bbzo.attacks.seca.questions import Question
from bbzo.checks import int_at_least

DETERMINERS = frozenset(("the", "a", "an"))


def unmatched(source: Words, other: Words) -> list[str]:
    """Content stems of ``source`` absent from ``other`` and with no near-synonym there."""
    present = set(other.content)
    table = synonyms()
    return [w for w in dict.fromkeys(source.content)
            if w not in present and not (table.get(w, frozenset()) & present)]


class ContentAlignment:
    """Content words added or dropped without a near-synonym on the other side.

    Args:
        max_unmatched: most unmatched content words (added + dropped) that still pass.
    """

    name = "alignment"

    def __init__(self, max_unmatched: int = 0) -> None:
        self.max_unmatched = int_at_least("max_unmatched", max_unmatched, 0)

    def check(self, question: Question, texts: Sequence[str]) -> list[list[Verdict]]:
        original = words(question.question)
        out = []
        for text in texts:
            rewrite = words(text)
            added, dropped = unmatched(rewrite, original), unmatched(original, rewrite)
            n = len(added) + len(dropped)
            detail = (f"added {added or '-'}, dropped {dropped or '-'} "
                      f"(pass at <= {self.max_unmatched})") if n else "every content word aligned"
            out.append([Verdict(self.name, "equivalence", n <= self.max_unmatched, float(n),
                                detail)])
        return out


class NegationAntonym:
    """A negation added or removed, or a word replaced by its opposite."""

    name = "negation"

    def check(self, question: Question, texts: Sequence[str]) -> list[list[Verdict]]:
        original = words(question.question)
        table = antonyms()
        before = set(original.content)
        out = []
        for text in texts:
            rewrite = words(text)
            flipped = sorted({w for w in set(rewrite.content) - before
                              if table.get(w, frozenset()) & before})
            negations = rewrite.negations - original.negations
            problems = ([f"negations {original.negations} -> {rewrite.negations}"]
                        if negations else []) + [f"opposite word {w!r}" for w in flipped]
            out.append([Verdict(self.name, "equivalence", not problems,
                                float(abs(negations) + len(flipped)),
                                "; ".join(problems) or "no negation or opposite")])
        return out


class QualifierChange:
    """Numbers, units, names, qualifiers, tense or the kind of question (wh-words) that differ
    between the texts (a rewrite with no wh-word, an imperative "tell me ...", asks the
    same)."""

    name = "qualifiers"
    ASPECTS = ("numbers", "units", "entities", "qualifiers")

    def check(self, question: Question, texts: Sequence[str]) -> list[list[Verdict]]:
        original = words(question.question)
        out = []
        for text in texts:
            rewrite = words(text)
            changed = [f"{a} {getattr(original, a)} -> {getattr(rewrite, a)}"
                       for a in self.ASPECTS if getattr(original, a) != getattr(rewrite, a)]
            if rewrite.asks and not (rewrite.asks <= original.may_ask
                                     and original.asks <= rewrite.may_ask):
                changed.append(f"asks {sorted(original.asks)} -> {sorted(rewrite.asks)}")
            if original.tense and rewrite.tense and original.tense != rewrite.tense:
                changed.append(f"tense {original.tense} -> {rewrite.tense}")
            out.append([Verdict(self.name, "equivalence", not changed, float(len(changed)),
                                "; ".join(changed) or "same numbers, units, names, "
                                                      "qualifiers, tense")])
        return out


class Repetition:
    """Repeated or broken text: a word twice in a row, a content bigram or an auxiliary or
    wh-word more often than in the original (and more than once), more sentences than the
    original, or a determiner followed by a wh-word, an auxiliary or nothing."""

    name = "repetition"

    def check(self, question: Question, texts: Sequence[str]) -> list[list[Verdict]]:
        original = words(question.question)
        sentences = _sentences(question.question)
        out = []
        for text in texts:
            problems = _repetitions(words(text), original)
            if _sentences(text) > sentences:
                problems.append(f"{_sentences(text)} sentences, original {sentences}")
            out.append([Verdict(self.name, "coherence", not problems, float(len(problems)),
                                "; ".join(problems) or "no repetition")])
        return out


def _sentences(text: str) -> int:
    return max(1, len(re.findall(r"[?.!](?=\s|$)", text.strip())))


def _repetitions(rewrite: Words, original: Words) -> list[str]:
    problems = []
    tokens = rewrite.tokens
    doubled = [a for a, b in zip(tokens, tokens[1:], strict=False) if a == b]
    if doubled:
        problems.append(f"doubled {sorted(set(doubled))}")
    bigrams = Counter(b for b in zip(tokens, tokens[1:], strict=False)
                      if not set(b) <= FUNCTION)
    before = Counter(zip(original.tokens, original.tokens[1:], strict=False))
    repeated = sorted(" ".join(b) for b, n in bigrams.items() if n > max(1, before[b]))
    if repeated:
        problems.append(f"repeated {repeated}")
    counts, was = Counter(tokens), Counter(original.tokens)
    extra = sorted(w for w in (WH | AUX) if counts[w] > max(1, was[w]))
    if extra:
        problems.append(f"repeated {extra}")
    broken = [f"{a} {b or '<end>'}" for a, b in zip(tokens, [*tokens[1:], None], strict=True)
              if a in DETERMINERS and (b is None or b in WH or b in AUX or b in DETERMINERS)]
    if broken:
        problems.append(f"broken order {broken}")
    return problems


PLURAL_COUNTS = frozenset(NUMBER_WORDS) | frozenset(("both", "several"))
SINGULAR_VERBS = frozenset(("is", "was", "has"))
PRONOUNS = frozenset(("it", "he", "she", "there", "this", "that"))
SUBJECT_STARTS = DETERMINERS | PRONOUNS | frozenset(("its", "his", "her", "their"))


class Agreement:
    """A counted plural followed, within two words, by a singular verb that it is the subject
    of: "which two oceans is connected" fails; "which two oceans is the canal between" passes
    (a subject follows the verb: a determiner, pronoun or name after is/was, a pronoun or
    name after has, where "the" starts an object as often), as does any disagreement the
    original text already had."""

    name = "agreement"

    def check(self, question: Question, texts: Sequence[str]) -> list[list[Verdict]]:
        before = set(_disagreements(words(question.question)))
        out = []
        for text in texts:
            found = [d for d in _disagreements(words(text)) if d not in before]
            out.append([Verdict(self.name, "coherence", not found, float(len(found)),
                                f"plural subject, singular verb {found}" if found
                                else "no disagreement")])
        return out


def _disagreements(text: Words) -> list[str]:
    """"two oceans is" and the like: a plural count (a number word from two, a number above
    one, "both", "several"), one or two words, then is/was/has not followed by a subject
    (``Agreement``)."""
    tokens, cased = text.tokens, text.cased
    found = []
    for i, token in enumerate(tokens):
        if token not in PLURAL_COUNTS and not (token.isdigit() and int(token) > 1):
            continue
        for j in range(i + 2, min(i + 4, len(tokens))):
            if tokens[j] in AUX:
                after = tokens[j + 1] if j + 1 < len(tokens) else None
                starts = PRONOUNS if tokens[j] == "has" else SUBJECT_STARTS
                subject = after is not None and (after in starts or cased[j + 1][:1].isupper())
                if tokens[j] in SINGULAR_VERBS and not subject:
                    found.append(" ".join(tokens[i:j + 1]))
                break
    return found
