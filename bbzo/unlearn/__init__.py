"""bbzo.unlearn: make a deployed LLM behave as if it never learned a topic, weights untouched
(ECO, embedding-corrupted prompts; Liu et al., NeurIPS 2024).

One module per part: ``classifiers`` (prompt classifiers), ``calibration`` (thresholds),
``tokens`` (which prompt tokens), ``corruptions``, ``hook`` (the embedding-layer hook),
``guard`` (``Guard`` and the ``GuardedLM`` target), ``strength`` (ZO search and grid),
``evaluate`` (accuracy through the query layer), ``metrics`` (TOFU: truth ratio, ROUGE-L,
forget quality, model utility), ``run`` (``fit_guard`` / ``evaluate_guard``,
behind ``bbzo unlearn``).
"""

from bbzo.unlearn.calibration import conformal_threshold, flag_rates, threshold_for_fpr
from bbzo.unlearn.classifiers import (
    EmbeddingClassifier,
    KeywordClassifier,
    TfidfClassifier,
    make_classifier,
)
from bbzo.unlearn.corruptions import Corruption
from bbzo.unlearn.guard import Guard, GuardedLM, forced, load_guard
from bbzo.unlearn.hook import corrupt_prompts
from bbzo.unlearn.metrics import (
    forget_quality,
    model_utility,
    qa_metrics,
    rouge_l_recall,
    tofu_report,
    truth_ratio,
)
from bbzo.unlearn.run import evaluate_guard, fit_guard, guarded_target
from bbzo.unlearn.strength import forget_distance, grid_strength, search_strength
from bbzo.unlearn.tokens import select_tokens

__all__ = ["Corruption", "EmbeddingClassifier", "Guard", "GuardedLM", "KeywordClassifier",
           "TfidfClassifier", "conformal_threshold", "corrupt_prompts", "evaluate_guard",
           "fit_guard", "flag_rates", "forced", "forget_distance", "forget_quality",
           "grid_strength", "guarded_target", "load_guard", "make_classifier", "model_utility",
           "qa_metrics", "rouge_l_recall", "search_strength", "select_tokens",
           "threshold_for_fpr", "tofu_report", "truth_ratio"]
