"""The lifecycle of a budgeted model call, free of any framework and of I/O.

- :class:`BudgetPolicy` says how calls are decided; :class:`Decision` is what was decided for one call;
- :mod:`.flows` writes the lifecycle once as generator flows that yield ledger operations (:mod:`.ops`);
  :mod:`.drivers` runs them sync or async; :class:`BudgetController` / :class:`AsyncBudgetController` are the
  twins over them;
- :mod:`.streams` and :class:`StreamMeter`: one stream lifecycle and one cut rule for both frameworks;
- :class:`Payer`, :func:`clear_scope`: who pays, in one resolution order; :mod:`.abandon`: what an abandoned call
  gives back.

The framework adapters (``clear_integrations.adapters``) only translate: messages to a prompt, provider output to
:class:`~clear_integrations.ledger.Usage`, a cap to the provider's own field.
"""

from .abandon import DEFAULT_FALLBACK, Abandon, abandon_answer, check_abandon
from .controller import AsyncBudgetController, BudgetController
from .decision import EXHAUSTED, NOT_WORTH_IT, Decision
from .drivers import current_decision
from .flows import Lifecycle, Outcome, Request
from .meter import StreamMeter
from .ops import Generate, Generated
from .payer import Names, Payer, account_id, clear_scope, resolve_payer
from .policy import BudgetPolicy
from .spender import Spender

__all__ = [
    "DEFAULT_FALLBACK",
    "EXHAUSTED",
    "NOT_WORTH_IT",
    "Abandon",
    "AsyncBudgetController",
    "BudgetController",
    "BudgetPolicy",
    "Decision",
    "Generate",
    "Generated",
    "Lifecycle",
    "Names",
    "Outcome",
    "Payer",
    "Request",
    "Spender",
    "StreamMeter",
    "abandon_answer",
    "account_id",
    "check_abandon",
    "clear_scope",
    "current_decision",
    "resolve_payer",
]
