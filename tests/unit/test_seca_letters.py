"""One letter parser (``replies.parse_letter``) for the sampling objective and ASR@K: before,
the objective read "I think B" as no letter and "A country like ..." as A, while ASR@K read B
and skipped the article."""

from __future__ import annotations

import numpy as np
import pytest
from seca_support import QUESTION, ScriptedTarget

from bbzo.attacks.seca import evaluate
from bbzo.attacks.seca.objective import SamplingObjective
from bbzo.attacks.seca.replies import parse_letter
from bbzo.blackbox.query.layer import QueryLayer

LETTERS = ("A", "B", "C", "D")
TABLE = [
    ("B", "B"), ("B.", "B"), ("B)", "B"), ("(B)", "B"), ("**B**", "B"), (" B. Berlin", "B"),
    ("option B", "B"), ("Option B", "B"), ("answer: B", "B"), ("The answer is B", "B"),
    ("I think B", "B"), ("I believe it is (C)", "C"), ("A", "A"), ("A.", "A"), ("A)", "A"),
    ("A. Paris", "A"), ("A Paris", "A"), ("A country like France: C", "C"),
    ("A capital city, D.", "D"), ("E is not an option, B is", "B"), ("ABBA", None),
    ("B2 bomber", None), ("Berlin", None), ("", None), ("a", None), ("I think so", None),
    ("A country far away", None),
]


@pytest.mark.parametrize("text, letter", TABLE)
def test_the_rule(text, letter):
    assert parse_letter(text, LETTERS) == letter


def test_i_is_an_option_letter_unless_it_is_the_pronoun():
    letters = tuple("ABCDEFGHIJ")
    assert parse_letter("I. Tokyo", letters) == "I"
    assert parse_letter("I think J", letters) == "J"


def test_asr_at_k_uses_the_same_parser():
    assert evaluate.parse_letter is parse_letter


@pytest.mark.parametrize("text, letter", TABLE)
def test_the_sampling_objective_reads_replies_by_the_same_rule(text, letter):
    target = ScriptedTarget(lambda r: {"text": text}, ["generate"])
    got = SamplingObjective(QueryLayer(target), samples=2).evaluate(QUESTION, ["Q?"])[0]
    counts = np.round(np.exp(got) * (len(LETTERS) + (0 if letter is None else 2))) - 1
    expected = [2.0 if x == letter else 0.0 for x in LETTERS]
    np.testing.assert_allclose(counts, expected)
