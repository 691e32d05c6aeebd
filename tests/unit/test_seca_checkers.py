"""The offline checkers, each on its own failure class: hand-made cases, then every pair of
that class in the labelled set (``tests/data/seca_pairs.jsonl``), and true paraphrases passing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bbzo.attacks.seca.cascade import offline_checks
from bbzo.attacks.seca.constraints import Checks
from bbzo.attacks.seca.equivalence import (
    Agreement,
    ContentAlignment,
    NegationAntonym,
    QualifierChange,
    Repetition,
)
from bbzo.attacks.seca.lexicon import stem, strip_framing, words
from bbzo.attacks.seca.questions import Question
from bbzo.errors import InputError

PAIRS = [json.loads(x) for x in
         (Path(__file__).parents[1] / "data" / "seca_pairs.jsonl").read_text().splitlines()]
CHECKERS = {"alignment": ContentAlignment(), "negation": NegationAntonym(),
            "qualifiers": QualifierChange(), "repetition": Repetition(),
            "agreement": Agreement()}
# Failure class -> the checkers of which at least one fails every pair of that class.
CATCHES = {"added": ["alignment"], "omitted": ["alignment"], "scope": ["alignment"],
           "antonym": ["negation"], "negation": ["negation"], "entity": ["alignment"],
           "number": ["alignment"], "unit": ["qualifiers"], "tense": ["qualifiers"],
           "topic": ["alignment", "qualifiers"], "incoherent": ["repetition"],
           "agreement": ["agreement"]}


def passes(checker, original: str, rewrite: str) -> bool:
    verdict, = checker.check(Question("q", original, (), 0), [rewrite])[0]
    return verdict.passed


def test_the_labelled_set_covers_every_failure_class_and_is_balanced():
    kinds = {p["kind"] for p in PAIRS if not p["equivalent"]}
    assert kinds == set(CATCHES)
    assert len(PAIRS) >= 150 and sum(p["equivalent"] for p in PAIRS) == len(PAIRS) // 2
    for split in ("calibrate", "heldout"):
        mine = [p for p in PAIRS if p["split"] == split]
        assert sum(p["equivalent"] for p in mine) == len(mine) // 2


@pytest.mark.parametrize("kind", sorted(CATCHES))
def test_each_failure_class_is_caught_by_its_checker(kind):
    mine = [p for p in PAIRS if p["kind"] == kind and not p["equivalent"]]
    assert mine
    for p in mine:
        assert not all(passes(CHECKERS[c], p["original"], p["rewrite"]) for c in CATCHES[kind]), p


@pytest.mark.parametrize("name", sorted(CHECKERS))
def test_most_true_paraphrases_pass_each_checker(name):
    equivalent = [p for p in PAIRS if p["equivalent"]]
    passed = sum(passes(CHECKERS[name], p["original"], p["rewrite"]) for p in equivalent)
    assert passed >= 0.9 * len(equivalent)


def test_alignment_needs_a_synonym_for_every_new_or_dropped_word():
    check = ContentAlignment()
    assert passes(check, "What is the largest ocean?", "What is the biggest ocean?")
    assert passes(check, "Who painted the Mona Lisa?", "By whom was the Mona Lisa painted?")
    assert not passes(check, "What is the main ingredient of bread?",
                      "What is the main ingredient of bread that you forgot?")
    assert not passes(check, "What is the largest mammal?", "What is the largest land mammal?")
    assert not passes(check, "How many legs does a spider have?", "How many legs?")
    verdict, = check.check(Question("q", "What is the largest mammal?", (), 0),
                           ["What is the largest land mammal?"])[0]
    assert verdict.score == 1.0 and "land" in verdict.detail
    assert passes(ContentAlignment(max_unmatched=1), "What is the largest mammal?",
                  "What is the largest land mammal?")
    with pytest.raises(InputError, match="max_unmatched"):
        ContentAlignment(max_unmatched=-1)


def test_negation_and_antonyms():
    check = NegationAntonym()
    assert not passes(check, "Which metal is liquid?", "Which metal isn't liquid?")
    assert not passes(check, "Which metal is not liquid?", "Which metal is liquid?")
    assert not passes(check, "What gas do plants absorb?", "What gas do plants release?")
    assert not passes(check, "What is the hottest planet?", "What is the coldest planet?")
    assert passes(check, "Which metal is not liquid?", "Which metal isn't liquid?")
    assert passes(check, "What is the hottest planet?", "Which planet is the hottest?")


def test_qualifiers_numbers_units_names_tense_and_question_word():
    check = QualifierChange()
    assert not passes(check, "What is 2 plus 2?", "What is two plus three?")
    assert passes(check, "What is 2 plus 3?", "What is two plus three?")
    assert not passes(check, "How hot is it in Celsius?", "How hot is it in Fahrenheit?")
    assert not passes(check, "What is the capital of France?", "What is the capital of Spain?")
    assert not passes(check, "Who is the president?", "Who is the first president?")
    assert not passes(check, "Who is the king of Spain?", "Who was the king of Spain?")
    assert not passes(check, "Who wrote Hamlet?", "When was Hamlet written?")
    assert passes(check, "Where is the Eiffel Tower?", "In which city is the Eiffel Tower?")
    assert passes(check, "What year did it end?", "When did it end?")
    assert passes(check, "Who wrote Hamlet?", "Please tell me who wrote Hamlet.")
    assert not passes(check, "Which war was World War II?", "Which war was World War I?")
    assert passes(check, "Who won World War II?", "May I ask who won World War II?")


def test_repetition():
    check = Repetition()
    assert not passes(check, "How many hours are in a day?", "How many hours in a day? How "
                                                             "many days?")
    assert not passes(check, "What is the symbol for gold?", "What is the the symbol for gold?")
    assert not passes(check, "Who invented it?", "Who invented the who?")
    assert not passes(check, "What do bees make?", "What do bees make make honey make?")
    assert passes(check, "What is it?", "Could you tell me what it is?")
    assert passes(check, "Who was the first person to walk on the Moon?",
                  "Who was the first person on the Moon to walk on it?")


def test_agreement():
    check = Agreement()
    canal = "The Panama Canal connects which two oceans?"
    assert not passes(check, canal, "Which two oceans is connected by the Panama Canal?")
    assert not passes(check, "Which 3 planets are rocky?", "Which 3 planets is rocky?")
    assert not passes(check, "Are both cities in France?", "Both cities is in France?")
    assert not passes(check, "Which two countries share the longest border?",
                      "Which two countries has the longest border?")  # "the" starts an object
    assert passes(check, canal, "Which two oceans are connected by the Panama Canal?")
    assert passes(check, canal, "Which two oceans is the Panama Canal between?")  # its subject
    assert passes(check, "How many legs does an insect have?", "How many legs does it have?")
    assert passes(check, "Which 2 is it?", "Which 2 is it?")  # the original's own wording
    bad = "Which two oceans is connected?"
    assert passes(check, bad, bad)


def test_lexicon_helpers():
    assert stem("wrote") == stem("written") == stem("write")
    assert stem("painted") == stem("paint") and stem("cities") == stem("city")
    assert strip_framing("Quick question: what is it?") == "what is it?"
    assert strip_framing("Paris: what is it?") == "Paris: what is it?"
    w = words("Japan's capital isn't Kyoto, is it?")
    assert w.negations == 1 and "japan" in w.content and w.entities == ["japan", "kyoto"]


def test_offline_checks_form_a_cascade():
    checks = Checks(offline_checks())
    verdicts = checks.check(Question("q", "What gas do plants absorb?", (), 0),
                            ["What gas do plants release?", "Which gas do plants absorb?"])
    assert [v.name for v in verdicts[0]] == ["negation"]  # stopped at its first failure
    assert [v.name for v in verdicts[1]] == ["negation", "qualifiers", "repetition",
                                             "agreement", "alignment"]
    assert all(v.passed for v in verdicts[1])
