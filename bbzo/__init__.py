"""bbzo: black-box attacks, defenses, unlearning and privacy on one zeroth-order engine."""

from bbzo.blackbox.budget import Budget
from bbzo.blackbox.targets.spec import load_target
from bbzo.blackbox.zo import OptimizeResult, chain, estimate_gradient, minimize, zo_function
from bbzo.errors import BbzoError, BudgetExceeded, InputError, ObjectiveError, TargetError

__version__ = "0.1.0"

__all__ = [
    "BbzoError", "Budget", "BudgetExceeded", "InputError", "ObjectiveError", "OptimizeResult",
    "TargetError", "__version__", "chain", "estimate_gradient", "load_target", "minimize",
    "zo_function",
]
