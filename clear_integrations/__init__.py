"""clear-integrations: economic token-budget allocation for LLM reasoning (CLEAR) in LangChain and LlamaIndex.

The core (curves, allocation, pricing, estimators, ledger) imports no framework; the adapters live under
``clear_integrations.adapters``. Every name listed in ``__all__`` is documented in ``docs/api.md``.
"""

from ._version import __version__
from .allocate import Allocation, allocate
from .baselines import ALLOCATORS, Allocator, greedy_marginal, proportional, uniform
from .curves import AccuracyCurve, CurveBatch, EmpiricalCurve, isotonic
from .errors import (
    BudgetExceeded,
    ClearError,
    InvalidAccount,
    InvalidBudget,
    InvalidCurve,
    InvalidInput,
    InvalidUsage,
    LedgerError,
    LedgerUnavailable,
    NotFitted,
    QueryAbandoned,
    ReservationClosed,
    UnknownReservation,
)
from .estimate import Estimator, PriorEstimator, load_estimator, save_estimator
from .pricing import PriceDecision, PriceState, ShadowPrice

__all__ = [
    "ALLOCATORS",
    "AccuracyCurve",
    "Allocation",
    "Allocator",
    "BudgetExceeded",
    "ClearError",
    "CurveBatch",
    "EmpiricalCurve",
    "Estimator",
    "InvalidAccount",
    "InvalidBudget",
    "InvalidCurve",
    "InvalidInput",
    "InvalidUsage",
    "LedgerError",
    "LedgerUnavailable",
    "NotFitted",
    "PriceDecision",
    "PriceState",
    "PriorEstimator",
    "QueryAbandoned",
    "ReservationClosed",
    "ShadowPrice",
    "UnknownReservation",
    "__version__",
    "allocate",
    "greedy_marginal",
    "isotonic",
    "load_estimator",
    "proportional",
    "save_estimator",
    "uniform",
]
