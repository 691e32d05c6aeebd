"""The checks a SECA rewrite must pass, in the order the search runs them (cheapest first):
the option-leak check, the offline checkers of ``equivalence.py`` (no model), then the
model-based ones (embedding similarity, perplexity, LLM judge) of the roles that are on.

``bbzo attack seca`` and ``bbzo attack check`` both build their checks here, so what a user
audits on labelled pairs is exactly what decides a search's successes.
"""

from __future__ import annotations

from collections.abc import Mapping

from bbzo.attacks.seca.constraints import (
    Constraint,
    EmbeddingSimilarity,
    LLMJudge,
    OptionLeak,
    PerplexityCoherence,
)
from bbzo.attacks.seca.equivalence import (
    Agreement,
    ContentAlignment,
    NegationAntonym,
    QualifierChange,
    Repetition,
)
from bbzo.blackbox.query.layer import QueryLayer

CHECK_ROLES = ("embedder", "reference", "judge")


def offline_checks(max_unmatched: int = 0) -> list[Constraint]:
    """The checkers that need no model: negation/antonyms, qualifiers, repetition, number
    agreement, content alignment (``equivalence.py``)."""
    return [NegationAntonym(), QualifierChange(), Repetition(), Agreement(),
            ContentAlignment(max_unmatched)]


def build_constraints(layers: Mapping[str, QueryLayer], *, lexical: bool = True,
                      max_unmatched: int = 0, similarity: float = 0.9,
                      coherence_ratio: float = 5.0,
                      judge_max_tokens: int = 128) -> list[Constraint]:
    """The constraints of the roles present in ``layers`` (``embedder``, ``reference``,
    ``judge``), after the option-leak check and (``lexical``) the offline checkers."""
    constraints: list[Constraint] = [OptionLeak()]
    if lexical:
        constraints += offline_checks(max_unmatched)
    if "embedder" in layers:
        constraints.append(EmbeddingSimilarity(layers["embedder"], similarity))
    if "reference" in layers:
        constraints.append(PerplexityCoherence(layers["reference"], coherence_ratio))
    if "judge" in layers:
        constraints.append(LLMJudge(layers["judge"], max_tokens=judge_max_tokens))
    return constraints
