"""SECA: semantically equivalent and coherent rewrites of multiple-choice questions that make a
model answer wrongly (Liang et al., 2025), as separate parts: questions, objective, proposer,
constraints, search, and the run that ties them to a run folder."""

from bbzo.attacks.seca.check import check_pairs
from bbzo.attacks.seca.evaluate import evaluate_run
from bbzo.attacks.seca.questions import Question, load_questions
from bbzo.attacks.seca.run import SecaConfig, run_seca

__all__ = ["Question", "SecaConfig", "check_pairs", "evaluate_run", "load_questions", "run_seca"]
