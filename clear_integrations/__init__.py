"""clear-integrations: economic token-budget allocation for LLM reasoning (CLEAR) in LangChain and LlamaIndex.

The core (curves, allocation, pricing, estimators, ledger) imports no framework; the adapters live under
``clear_integrations.adapters``. Every name listed in ``__all__`` is documented in ``docs/api.md``.
"""

from ._version import __version__
from .allocate import Allocation, allocate
from .baselines import ALLOCATORS, Allocator, greedy_marginal, proportional, uniform
from .budgeting import AsyncBudgetController, BudgetController, BudgetPolicy, Decision, Payer, clear_scope
from .curves.curve import AccuracyCurve, CurveBatch, EmpiricalCurve, isotonic
from .curves.families import Logistic, ShiftedSurge
from .curves.fitting import LogisticFit, SurgeFit, fit_logistic, fit_shifted_surge, fit_tau
from .errors import (
    BudgetExceeded,
    CalibrationMismatch,
    ClearError,
    ClearWarning,
    InvalidAccount,
    InvalidBudget,
    InvalidCurve,
    InvalidInput,
    InvalidLedgerURL,
    InvalidProblem,
    InvalidUsage,
    LedgerDataLost,
    LedgerError,
    LedgerUnavailable,
    LocalModelUnavailable,
    NotFitted,
    QueryAbandoned,
    ReservationClosed,
    ScriptExhausted,
    UnknownReservation,
    Unsupported,
)
from .estimators.base import Estimator, PriorEstimator, load_estimator, save_estimator
from .estimators.embedding import EmbeddingEstimator
from .estimators.text import TextFeatureEstimator
from .ledger import (
    AsyncLedger,
    Balance,
    Budget,
    Event,
    Ledger,
    Reservation,
    Usage,
    UsageTotals,
    load_budgets,
    open_async_ledger,
    open_ledger,
)
from .pricing import PriceDecision, PriceState, ShadowPrice

__all__ = [
    "ALLOCATORS",
    "AccuracyCurve",
    "Allocation",
    "Allocator",
    "AsyncBudgetController",
    "AsyncLedger",
    "Balance",
    "Budget",
    "BudgetController",
    "BudgetExceeded",
    "BudgetPolicy",
    "CalibrationMismatch",
    "ClearError",
    "ClearWarning",
    "CurveBatch",
    "Decision",
    "EmbeddingEstimator",
    "EmpiricalCurve",
    "Estimator",
    "Event",
    "InvalidAccount",
    "InvalidBudget",
    "InvalidCurve",
    "InvalidInput",
    "InvalidLedgerURL",
    "InvalidProblem",
    "InvalidUsage",
    "Ledger",
    "LedgerDataLost",
    "LedgerError",
    "LedgerUnavailable",
    "LocalModelUnavailable",
    "Logistic",
    "LogisticFit",
    "NotFitted",
    "Payer",
    "PriceDecision",
    "PriceState",
    "PriorEstimator",
    "QueryAbandoned",
    "Reservation",
    "ReservationClosed",
    "ScriptExhausted",
    "ShadowPrice",
    "ShiftedSurge",
    "SurgeFit",
    "TextFeatureEstimator",
    "UnknownReservation",
    "Unsupported",
    "Usage",
    "UsageTotals",
    "__version__",
    "allocate",
    "clear_scope",
    "fit_logistic",
    "fit_shifted_surge",
    "fit_tau",
    "greedy_marginal",
    "isotonic",
    "load_budgets",
    "load_estimator",
    "open_async_ledger",
    "open_ledger",
    "proportional",
    "save_estimator",
    "uniform",
]
