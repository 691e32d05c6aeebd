"""Words of a question as the offline checkers see them: tokens, stems, function words,
negations, numbers, units, qualifiers, entities, and the curated synonym and antonym lists
(package data ``data/synonyms.jsonl``: one group of interchangeable words per line;
``data/antonyms.jsonl``: one pair of opposites per line).

A *content word* is any word that is not a function word: what a rewrite may neither add nor
drop unless a near-synonym stands in for it. Function words include the question-form and
framing words a meaning-preserving rewrite may add ("could you tell me", "please", "here is a
question:"); negations, numbers and qualifiers are content (they change the answer).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources

WH = frozenset("what which who whom whose where when why how".split())
AUX = frozenset("be is are was were am been being do does did done have has had having can "
                "could will would shall should may might must 's".split())
PRESENT = frozenset("is are am does do has".split())
PAST = frozenset("was were did had".split())
FUNCTION = WH | AUX | frozenset("""
a an the this that these those it its it's there here of in on at to for from by with about
into onto over under as than then and or but so if whether also
i me my we us our you your he him his she her they them their one ones
please tell say know ask wonder like want question quick simple
name named called exist exists existing contain contains contained
following given listed below above
thing things kind
""".split()) - frozenset(["above", "below"])
NEGATIONS = frozenset("not no never none neither nor without n't nobody nothing nowhere".split())
NUMBER_WORDS = {w: str(i) for i, w in enumerate(  # "one" is a pronoun as often as a number
    "two three four five six seven eight nine ten eleven twelve".split(), start=2)}
UNITS = frozenset("""
celsius fahrenheit kelvin degree meter metre kilometer kilometre centimeter centimetre
millimeter millimetre mile foot feet inch yard gram kilogram pound ounce ton tonne liter litre
gallon second minute hour day week month year decade century millennium percent dollar euro
mph kph km cm mm kg lb
""".split())
QUALIFIERS = frozenset("""
only first last next current currently former previous recent recently new old most least
every all each some any ever still already today now then future past once twice usually
always sometimes often rarely
""".split())
PLACES = frozenset("city country continent place location town state region island "
                   "ocean sea".split())
TIMES = frozenset("year date time century decade day month".split())
ROMAN = frozenset("I II III IV V VI VII VIII IX X XI XII".split())
IRREGULAR = {"wrote": "write", "written": "write", "writes": "write", "made": "make",
             "built": "build", "found": "find", "gave": "give", "given": "give",
             "spoken": "speak", "spoke": "speak", "known": "know", "knew": "know",
             "won": "win", "lost": "lose", "fell": "fall", "fallen": "fall", "began": "begin",
             "begun": "begin", "ran": "run", "taught": "teach", "thought": "think",
             "bought": "buy", "sold": "sell", "held": "hold", "led": "lead", "men": "man",
             "women": "woman", "children": "child", "feet": "foot", "teeth": "tooth",
             "mice": "mouse", "geese": "goose", "people": "person", "ate": "eat",
             "eaten": "eat", "drew": "draw", "drawn": "draw", "sank": "sink", "sunk": "sink",
             "flew": "fly", "flown": "fly", "grew": "grow", "grown": "grow", "froze": "freeze",
             "frozen": "freeze", "died": "die", "lay": "lie", "best": "good",
             "better": "good", "worst": "bad", "worse": "bad", "whom": "who"}
_WORD = re.compile(r"n't|[A-Za-z]+(?:-[A-Za-z]+)*|\d+(?:[.,]\d+)*")
_FRAMING = re.compile(r"^\s*([A-Za-z' ]{1,40}):\s*(?=\S)")


def stem(word: str) -> str:
    """A crude, consistent stem of a lower-case word (both texts go through the same one)."""
    if word in NUMBER_WORDS:
        return NUMBER_WORDS[word]
    if word in IRREGULAR:
        word = IRREGULAR[word]
        return word[:-1] if word.endswith("e") and len(word) > 4 else word
    for suffix, keep in (("ies", "y"), ("ied", "y"), ("ing", ""), ("ed", ""), ("es", ""),
                         ("ly", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: len(word) - len(suffix)] + keep
            break
    return word[:-1] if word.endswith("e") and len(word) > 4 else word


def strip_framing(text: str) -> str:
    """The text without a short framing prefix ending in a colon ("Quick question: ...",
    "I would like to know: ...") whose words are all function words or topic labels."""
    found = _FRAMING.match(text)
    if not found:
        return text
    words = found.group(1).lower().split()
    if len(words) <= 5 and ("question" in words or "know" in words or "wonder" in words):
        return text[found.end():]
    return text


@dataclass(frozen=True)
class Words:
    """The words of one text (framing prefix removed).

    Attributes:
        tokens: lower-case tokens in order (``n't`` separate, possessive ``'s`` dropped).
        cased: the same tokens with their case.
        content: stems of the content words, in order.
    """

    tokens: tuple[str, ...]
    cased: tuple[str, ...]
    content: tuple[str, ...]

    @property
    def negations(self) -> int:
        return sum(t in NEGATIONS for t in self.tokens)

    @property
    def numbers(self) -> list[str]:
        """Numbers, digits and number words alike (``two`` -> ``2``), sorted."""
        out = [NUMBER_WORDS.get(t, t) for t in self.tokens]
        return sorted(t.replace(",", "") for t in out if t[0].isdigit())

    @property
    def units(self) -> list[str]:
        """Stems of unit words, except right after a wh-word ("what year" asks "when")."""
        return sorted(stem(t) for i, t in enumerate(self.tokens)
                      if (t in UNITS or stem(t) in UNITS)
                      and not (i and self.tokens[i - 1] in WH))

    @property
    def qualifiers(self) -> list[str]:
        return sorted(t for t in self.tokens if t in QUALIFIERS)

    @property
    def entities(self) -> list[str]:
        """Stems of capitalised words that are not function words (names, places), and roman
        numerals after a capitalised word (``World War II``)."""
        out = []
        for i, word in enumerate(self.cased):
            lower = word.lower()
            if word in ROMAN and i > 0 and self.cased[i - 1][:1].isupper() \
                    and self.cased[i - 1].lower() not in FUNCTION:
                out.append(word)
            elif word[:1].isupper() and lower not in FUNCTION and lower not in NEGATIONS \
                    and lower not in QUALIFIERS and word not in ROMAN:
                out.append(stem(lower))
        return sorted(out)

    @property
    def asks(self) -> frozenset[str]:
        """What the question asks for: its wh-words, ``which`` read as ``what``, ``whom`` as
        ``who``, ``how many``/``how much`` as ``how-many``."""
        out = set()
        for i, t in enumerate(self.tokens):
            after = self.tokens[i + 1] if i + 1 < len(self.tokens) else ""
            if t == "how" and after in ("many", "much"):
                out.add("how-many")
            elif t in WH:
                out.add({"which": "what", "whom": "who"}.get(t, t))
        return frozenset(out)

    @property
    def may_ask(self) -> frozenset[str]:
        """``asks``, with ``where``/``when`` added when a ``what`` comes with a place or time
        noun (``which city`` asks ``where``, ``what year`` asks ``when``) and ``what`` always
        allowed."""
        nouns = {stem(t) for t in self.tokens}
        out = set(self.asks) | {"what"}
        for wh, bridge in (("where", PLACES), ("when", TIMES)):
            if "what" in self.asks and nouns & bridge:
                out.add(wh)
        return frozenset(out)

    @property
    def tense(self) -> str | None:
        """``past``, ``present`` or ``future`` from the auxiliaries; None when they disagree
        or there is none."""
        found = {("past" if t in PAST else "present" if t in PRESENT else "future")
                 for t in self.tokens if t in PAST | PRESENT | {"will"}}
        return found.pop() if len(found) == 1 else None


def words(text: str) -> Words:
    """Tokens, cased tokens and content stems of ``text`` (``Words``)."""
    text = strip_framing(text).replace("’", "'")
    text = re.sub(r"(\w)'s\b", r"\1", text)  # possessive or "what's": the noun or wh-word
    text = re.sub(r"(\w)n't\b", r"\1 n't", text)
    cased = tuple(_WORD.findall(text))
    tokens = tuple(t.lower() for t in cased)
    content = tuple(stem(t) for t in tokens
                    if t not in FUNCTION and t not in NEGATIONS and t != "n't")
    return Words(tokens, cased, content)


@functools.cache
def synonyms() -> dict[str, frozenset[str]]:
    """Stem -> stems it may stand for (its groups in ``data/synonyms.jsonl``, itself
    included)."""
    out: dict[str, set[str]] = {}
    for group in _lines("synonyms.jsonl"):
        stems = {stem(w) for w in group}
        for s in stems:
            out.setdefault(s, set()).update(stems)
    return {k: frozenset(v) for k, v in out.items()}


@functools.cache
def antonyms() -> dict[str, frozenset[str]]:
    """Stem -> stems of its opposites (``data/antonyms.jsonl``, both directions)."""
    out: dict[str, set[str]] = {}
    for a, b in _lines("antonyms.jsonl"):
        out.setdefault(stem(a), set()).add(stem(b))
        out.setdefault(stem(b), set()).add(stem(a))
    return {k: frozenset(v) for k, v in out.items()}


def _lines(name: str) -> list[list[str]]:
    text = resources.files("bbzo.attacks.seca").joinpath("data", name).read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
