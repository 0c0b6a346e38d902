"""``ClearBudgetMiddleware``: token budgets for LangChain 1.x agents (``langchain.agents.create_agent``).

Every model step of the agent loop is decided, capped and accounted for on the ledger::

    from langchain.agents import create_agent
    from clear_integrations import Budget, open_ledger
    from clear_integrations.adapters.langchain import ClearBudgetMiddleware

    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=20_000))
    agent = create_agent(model, tools, middleware=[ClearBudgetMiddleware(ledger=ledger, tenant="acme")])
    result = agent.invoke({"messages": [("user", "what is (3 + 4) * 5?")]}, {"configurable": {"thread_id": "t1"}})
    result["clear_run_tokens"]  # tokens this run charged to the ledger

How it works, per step:

- ``before_model`` ends the loop (``jump_to="end"``) with ``final_message`` when a hard budget on the payer has less
  left than an estimate of the prompt plus ``policy.min_tokens``; no model call is attempted. Tokens held by calls
  still in flight may come back, so they do not count here; the step itself decides about those.
- ``wrap_model_call`` / ``awrap_model_call`` runs the step on the budgeted twin of the request's model
  (:class:`~.chat_model.BudgetedChatModel`, the same lifecycle as everywhere): decided, capped in the model's own
  field, committed; a step the budget or the price refuses answers with ``AIMessage(final_message)`` without tool
  calls, so the loop ends gracefully. A cap the step already asks for (the model's field, a cap in
  ``model_settings``) is a request: the step never gets more. Errors and cancellations give the reservation back.
- The decision (``clear_*`` keys) is in each answer's ``response_metadata``; ``clear_run_tokens`` (state) sums what
  the run's model steps charged (a model a tool calls is on the ledger, budgeted on its own, but not in this sum).
  The budgeted model's runs are tagged, so a ``ClearCallbackHandler`` beside this middleware does not charge them
  again.
- An agent with a ``response_format`` ends the same way: its last message is ``final_message`` (``clear_action``
  ``"abandon"``) and it has no ``structured_response``. A model given to ``create_agent`` through
  ``budgeted()`` raises :class:`~clear_integrations.errors.QueryAbandoned` there instead: a call that must answer
  with a tool call or a format is never answered with a fallback text.

Who pays: ``tenant``, and ``session`` when given; with no ``session``, the run's ``thread_id`` is the session
(``session_from_thread=False`` turns that off), so per-thread budgets (``ledger.set_budget("acme/<thread_id>",
...)``) apply. A run's ``metadata`` may name ``clear_tenant`` / ``clear_session`` instead. Put retry middleware
before this one in the list (outer), so that each try is decided.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NotRequired

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ExtendedModelResponse,
    ModelRequest,
    ModelResponse,
    OmitFromInput,
    hook_config,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, get_buffer_string
from langgraph.channels.untracked_value import UntrackedValue
from langgraph.config import get_config
from langgraph.runtime import Runtime
from langgraph.types import Command

from ...budgeting import EXHAUSTED, Decision, Payer, Spender
from ...budgeting.decision import abandoned
from ...estimators.base import Estimator
from ...ledger import AsyncLedger, Balance, Ledger
from ...ledger.accounts import parse_scope
from ...tokens import count_tokens
from .chat_model import BudgetedChatModel
from .payer import resolve

__all__ = ["DEFAULT_FINAL_MESSAGE", "ClearBudgetMiddleware", "ClearBudgetState"]

DEFAULT_FINAL_MESSAGE = "I have to stop here: the token budget for this task is spent."
Result = ModelResponse[Any] | AIMessage | ExtendedModelResponse[Any]


class ClearBudgetState(AgentState[Any]):
    """Agent state with ``clear_run_tokens``: the tokens this run's model steps charged (reset each run, in the
    output)."""

    clear_run_tokens: NotRequired[Annotated[int, UntrackedValue, OmitFromInput]]


class ClearBudgetMiddleware(AgentMiddleware[ClearBudgetState, Any, Any]):
    """Caps each model step of an agent, counts every step, and ends the loop gracefully when the budget or the
    shadow price says stop (see the module docstring).

    Args:
        ledger: where the budgets live (async runs use it from worker threads unless ``async_ledger`` is given).
        tenant: the account that pays; ``session`` (optional) a sub-account charged together with it.
        policy: how steps are decided (default ``BudgetPolicy()``: cap to what the budgets have left).
        estimator: shortcut for ``BudgetPolicy(estimator=...)`` (replaces the policy's estimator if both given).
        async_ledger: the same store as an :class:`~clear_integrations.ledger.AsyncLedger`.
        final_message: the answer that ends the loop when a step may not run.
        session_from_thread: with no ``session``, use the run's ``thread_id`` as the session.
        tenant_key: a run config value that names the tenant (e.g. ``"user_id"``).
    """

    state_schema = ClearBudgetState

    def __init__(
        self,
        *,
        ledger: Ledger,
        tenant: str,
        session: str | None = None,
        policy: Any = None,
        estimator: Estimator | None = None,
        async_ledger: AsyncLedger | None = None,
        final_message: str = DEFAULT_FINAL_MESSAGE,
        session_from_thread: bool = True,
        tenant_key: str | None = None,
    ) -> None:
        super().__init__()
        self.final_message = final_message
        self.spender = Spender.open(
            ledger,
            tenant=tenant,
            session=session,
            policy=policy,
            estimator=estimator,
            on_abandon=self._final,
            async_ledger=async_ledger,
        )
        self.ledger, self.policy = ledger, self.spender.policy
        self.tenant_key, self.session_key = tenant_key, "thread_id" if session_from_thread else None
        self._proxies: dict[int, tuple[BaseChatModel, BudgetedChatModel]] = {}

    @property
    def tenant(self) -> str:
        return self.spender.payer.tenant

    @property
    def session(self) -> str | None:
        return self.spender.payer.session

    def _final(self, decision: Decision) -> AIMessage:
        return AIMessage(content=self.final_message, response_metadata=decision.metadata())

    def _budgeted(self, request: ModelRequest[Any]) -> ModelRequest[Any]:
        """The request with its model budgeted (one budgeted twin per model object, reused across steps)."""
        model = request.model
        if not isinstance(model, BaseChatModel) or isinstance(model, BudgetedChatModel):
            return request
        known = self._proxies.get(id(model))
        if known is None or known[0] is not model:
            proxy = BudgetedChatModel.wrap(  # never strict: a step the budget refuses ends the loop gracefully
                model, self.spender, tenant_key=self.tenant_key, session_key=self.session_key, strict=False
            )
            known = self._proxies[id(model)] = (model, proxy)
        return request.override(model=known[1])

    @staticmethod
    def _answer(request: ModelRequest[Any], response: ModelResponse[Any]) -> ExtendedModelResponse[Any]:
        spent = 0
        for message in response.result:
            charged = message.response_metadata.get("clear_usage") if isinstance(message, AIMessage) else None
            if isinstance(charged, dict):
                spent += int(charged.get("prompt", 0)) + int(charged.get("completion", 0))
        previous = request.state.get("clear_run_tokens")
        total = (previous if isinstance(previous, int) else 0) + spent
        return ExtendedModelResponse(model_response=response, command=Command(update={"clear_run_tokens": total}))

    # -- the hooks -------------------------------------------------------------------------------------------------

    def wrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[[ModelRequest[Any]], ModelResponse[Any]]
    ) -> Result:
        """Run the step on the budgeted model; add what it charged to ``clear_run_tokens``."""
        return self._answer(request, handler(self._budgeted(request)))

    async def awrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]]
    ) -> Result:
        """The async twin of :meth:`wrap_model_call`."""
        return self._answer(request, await handler(self._budgeted(request)))

    def _payer(self) -> Payer:
        try:
            config = get_config()
        except RuntimeError:  # called outside a graph run (a direct call, a test)
            config = None
        return resolve(self.spender.payer, config, self.tenant_key, self.session_key)

    def _stop(self, payer: Payer, state: ClearBudgetState, balances: list[Balance]) -> dict[str, Any] | None:
        prompt = count_tokens(get_buffer_string(list(state["messages"]))).tokens
        need = prompt + self.policy.min_tokens
        short = [b for b in balances if b.limit is not None and b.mode != "soft" and b.limit - b.spent < need]
        if not short:
            return None
        left = max(0, short[0].limit - short[0].spent) if short[0].limit is not None else None
        decision = abandoned(payer.scope, prompt, True, EXHAUSTED, None, account=short[0].account, remaining=left)
        return {"jump_to": "end", "messages": [self._final(decision)]}

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: ClearBudgetState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """End the loop before the model is called when a hard budget cannot pay for the prompt."""
        payer = self._payer()
        return self._stop(payer, state, [self.ledger.balance(a) for a in parse_scope(payer.scope).path])

    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: ClearBudgetState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """The async twin of :meth:`before_model`."""
        payer = self._payer()
        ledger = self.spender.asynchronous.ledger
        return self._stop(payer, state, [await ledger.balance(a) for a in parse_scope(payer.scope).path])
