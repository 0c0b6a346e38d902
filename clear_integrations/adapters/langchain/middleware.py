"""``ClearBudgetMiddleware``: token budgets for LangChain 1.x agents (``langchain.agents.create_agent``).

Every model step of the agent loop is decided, capped and accounted for on the ledger::

    from langchain.agents import create_agent
    from clear_integrations import Budget, open_ledger
    from clear_integrations.adapters.langchain.middleware import ClearBudgetMiddleware

    ledger = open_ledger("memory://")
    ledger.set_budget("acme", Budget(tokens=20_000))
    agent = create_agent(model, tools, middleware=[ClearBudgetMiddleware(ledger=ledger, tenant="acme")])
    result = agent.invoke({"messages": [("user", "what is (3 + 4) * 5?")]}, {"configurable": {"thread_id": "t1"}})
    result["clear_run_tokens"]  # tokens this run charged to the ledger

How it works, per step:

- ``before_model`` ends the loop (``jump_to="end"``) with ``final_message`` when a hard budget on the scope has less
  left than an estimate of the prompt plus ``policy.min_tokens``; no model call is attempted. Tokens held by calls
  still in flight may come back, so they do not count here; the step itself decides about those.
- ``wrap_model_call`` / ``awrap_model_call`` decides the step with the controller (estimate, price, reserve the prompt
  plus the cap). An abandoned step (budget spent, or not worth its price) never reaches the model: it answers with an
  ``AIMessage(final_message)`` without tool calls, so the loop ends gracefully. Otherwise the step runs on a copy of
  the model capped in its provider's own field (:func:`~clear_integrations.adapters.langchain.caps.cap_model`: a
  per-call ``model_settings`` keyword is ignored by ChatOllama and loses to a model-level cap on OpenAI's Responses
  API); a model without a cap field gets ``model_settings["max_tokens"]``. A cap the caller already set (the
  model's field or a cap key in ``model_settings``) is a request: the step never gets more. The usage of the
  answer is committed; on any error the reservation is released and the error propagates.
- The decision (``clear_*`` keys, see :meth:`~clear_integrations.policy.Decision.metadata`) is merged into the
  ``response_metadata`` of each answer and of the final message; ``clear_run_tokens`` (state) sums what the run
  charged.

Who pays: ``tenant``, and ``session`` when given; with no ``session``, the run's ``thread_id`` (``config
["configurable"]["thread_id"]``) is the session (``session_from_thread=False`` turns that off), so per-thread budgets
(``ledger.set_budget("acme/<thread_id>", ...)``) apply. A run's ``metadata`` may name ``clear_tenant`` /
``clear_session`` instead. Put retry middleware before this one in the list (outer), so that each try is decided.
Async runs use ``async_ledger`` when given, else the sync ledger in a worker thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Annotated, Any, NotRequired, TypeVar

import anyio
import anyio.to_thread
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
from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.channels.untracked_value import UntrackedValue
from langgraph.config import get_config
from langgraph.runtime import Runtime
from langgraph.types import Command

from ...errors import InvalidAccount
from ...estimators.base import Estimator
from ...ledger import AsyncLedger, Balance, Ledger, Usage
from ...ledger.accounts import parse_scope
from ...policy import AsyncBudgetController, BudgetController, BudgetPolicy, Decision
from ...tokens import TokenCount, count_tokens
from .caps import cap_model
from .proxy import Scope, prompt_text, requested_cap
from .usage import model_name, model_tokenizer, usage_from_output

__all__ = ["DEFAULT_FINAL_MESSAGE", "ClearBudgetMiddleware", "ClearBudgetState"]

DEFAULT_FINAL_MESSAGE = "I have to stop here: the token budget for this task is spent."
_EXHAUSTED = "the budget is exhausted"
T = TypeVar("T")
Result = ModelResponse[Any] | AIMessage | ExtendedModelResponse[Any]


class ClearBudgetState(AgentState[Any]):
    """Agent state with ``clear_run_tokens``: the tokens this run charged (reset each run, in the output)."""

    clear_run_tokens: NotRequired[Annotated[int, UntrackedValue, OmitFromInput]]


def _tools_text(tools: Sequence[BaseTool | dict[str, Any]]) -> str:
    """The tool schemas as the provider receives them: they are prompt tokens too."""
    return "\n".join(json.dumps(convert_to_openai_tool(tool), sort_keys=True) for tool in tools)


def _total(parts: list[Usage]) -> Usage:
    return Usage(
        prompt=sum(p.prompt for p in parts),
        completion=sum(p.completion for p in parts),
        reasoning=sum(p.reasoning for p in parts),
        estimated=any(p.estimated for p in parts),
    )


class ClearBudgetMiddleware(AgentMiddleware[ClearBudgetState, Any, Any]):
    """Caps each model step of an agent, counts every step, and ends the loop gracefully when the budget or the
    shadow price says stop (see the module docstring).

    Args:
        ledger: where the budgets live (sync; also used by async runs unless ``async_ledger`` is given).
        tenant: the account that pays; ``session`` (optional) a sub-account charged together with it.
        policy: how steps are decided (default ``BudgetPolicy()``: cap to what the budgets have left).
        estimator: shortcut for ``BudgetPolicy(estimator=...)`` (replaces the policy's estimator if both given).
        async_ledger: the same store as an :class:`~clear_integrations.ledger.AsyncLedger`, for ``ainvoke`` /
            ``astream`` without blocking the event loop.
        final_message: the answer that ends the loop when a step may not run.
        session_from_thread: with no ``session``, use the run's ``thread_id`` as the session.
    """

    state_schema = ClearBudgetState

    def __init__(
        self,
        *,
        ledger: Ledger,
        tenant: str,
        session: str | None = None,
        policy: BudgetPolicy | None = None,
        estimator: Estimator | None = None,
        async_ledger: AsyncLedger | None = None,
        final_message: str = DEFAULT_FINAL_MESSAGE,
        session_from_thread: bool = True,
    ) -> None:
        super().__init__()
        if policy is None:
            policy = BudgetPolicy(estimator=estimator)
        elif estimator is not None:
            policy = dataclasses.replace(policy, estimator=estimator)
        parse_scope(tenant if session is None else f"{tenant}/{session}", "tenant/session")
        self.ledger = ledger
        self.async_ledger = async_ledger
        self.tenant = tenant
        self.session = session
        self.policy = policy
        self.final_message = final_message
        self.session_from_thread = session_from_thread
        self._sync = BudgetController(ledger, policy)
        self._async = None if async_ledger is None else AsyncBudgetController(async_ledger, policy)
        self._counter: Callable[[str], TokenCount] = count_tokens
        self._tasks: set[asyncio.Future[Any]] = set()

    # -- who pays, what the step asks ------------------------------------------------------------------------------

    def _scope(self, runtime: Runtime[Any] | None) -> str:
        try:
            config: RunnableConfig = get_config()
        except RuntimeError:  # called outside a graph run (a direct call, a test)
            config = {}
        session = self.session
        thread: Any = None
        if session is None and self.session_from_thread:
            info = getattr(runtime, "execution_info", None)
            thread = getattr(info, "thread_id", None) or (config.get("configurable") or {}).get("thread_id")
            session = None if thread is None else str(thread)
        scope = Scope(self.tenant, session).of(config)
        try:
            parse_scope(scope, "scope")
        except InvalidAccount as error:
            if thread is None:
                raise
            raise InvalidAccount(
                "thread_id",
                thread,
                f"is not a valid session id ({error.reason}); pass session= or session_from_thread=False",
            ) from error
        return scope

    def _ask(self, request: ModelRequest[Any]) -> tuple[str, int, int | None, dict[str, Any]]:
        """The prompt text, its tokens (tool schemas included), the cap asked for, and the other settings."""
        messages: list[AnyMessage] = list(request.messages)
        text = prompt_text([request.system_message, *messages] if request.system_message else messages)
        counter = partial(count_tokens, model=model_name(request.model), tokenizer=model_tokenizer(request.model))
        self._counter = counter  # before_model has no model: it counts as the last step did
        tokens = counter(text).tokens + (counter(_tools_text(request.tools)).tokens if request.tools else 0)
        requested, rest = requested_cap(request.model, dict(request.model_settings))
        options = rest.get("options")  # ChatOllama: per-call options replace the model's, num_predict included
        asked = options.get("num_predict") if isinstance(options, dict) else None
        if isinstance(asked, int) and asked > 0:
            requested = asked if requested is None else min(requested, asked)
        return text, tokens, requested, rest

    def _capped(self, request: ModelRequest[Any], decision: Decision, rest: dict[str, Any]) -> ModelRequest[Any]:
        if decision.max_tokens is None:
            return request
        if isinstance(rest.get("options"), dict):
            rest = {**rest, "options": {**rest["options"], "num_predict": decision.max_tokens}}
        capped = cap_model(request.model, decision.max_tokens)
        if isinstance(capped, BaseChatModel):
            return request.override(model=capped, model_settings=rest)
        return request.override(model_settings={**rest, "max_tokens": decision.max_tokens})

    # -- what the step returns -------------------------------------------------------------------------------------

    def _final(self, decision: Decision) -> AIMessage:
        return AIMessage(content=self.final_message, response_metadata=decision.metadata())

    def _usage(self, request: ModelRequest[Any], response: ModelResponse[Any], decision: Decision) -> Usage:
        name, tokenizer = model_name(request.model), model_tokenizer(request.model)
        answers = [m for m in response.result if isinstance(m, AIMessage)]
        parts = [
            usage_from_output(
                m,
                prompt_tokens=decision.prompt_tokens,
                prompt_estimated=decision.prompt_estimated,
                model=name,
                tokenizer=tokenizer,
            )
            for m in answers
        ]
        return _total(parts) if parts else Usage(prompt=decision.prompt_tokens, estimated=True)

    def _answer(
        self, request: ModelRequest[Any], response: ModelResponse[Any], decision: Decision, usage: Usage
    ) -> ExtendedModelResponse[Any]:
        for message in response.result:
            if isinstance(message, AIMessage):
                message.response_metadata = {**message.response_metadata, **decision.metadata()}
        previous = request.state.get("clear_run_tokens")
        spent = (previous if isinstance(previous, int) else 0) + usage.total
        return ExtendedModelResponse(model_response=response, command=Command(update={"clear_run_tokens": spent}))

    # -- the hooks -------------------------------------------------------------------------------------------------

    def wrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[[ModelRequest[Any]], ModelResponse[Any]]
    ) -> Result:
        """Decide the step; abandoned: the final message, else run it capped and commit its usage."""
        scope = self._scope(request.runtime)
        text, tokens, requested, rest = self._ask(request)
        decision = self._sync.begin(scope, text, requested=requested, prompt_tokens=tokens)
        if decision.abandoned:
            return self._final(decision)
        try:
            response = handler(self._capped(request, decision, rest))
        except BaseException:
            self._sync.fail(decision)
            raise
        usage = self._usage(request, response, decision)
        self._sync.end(decision, usage)
        return self._answer(request, response, decision, usage)

    async def awrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]]
    ) -> Result:
        """The async twin of :meth:`wrap_model_call`; a cancelled step gives its reservation back too."""
        scope = self._scope(request.runtime)
        text, tokens, requested, rest = self._ask(request)
        decision = await self._abegin(scope, text, requested, tokens)
        if decision.abandoned:
            return self._final(decision)
        try:
            response = await handler(self._capped(request, decision, rest))
        except BaseException:
            await self._settle(decision, None)
            raise
        usage = self._usage(request, response, decision)
        await self._settle(decision, usage)
        return self._answer(request, response, decision, usage)

    # -- async ledger I/O, each step in a task of its own so that cancelling the agent cannot lose it ---------------

    def _spawn(self, work: Awaitable[T]) -> asyncio.Future[T]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failure after the step was cancelled is not logged as lost

    async def _abegin(self, scope: str, text: str, requested: int | None, tokens: int) -> Decision:
        if self._async is not None:
            work = self._async.begin(scope, text, requested=requested, prompt_tokens=tokens)
        else:
            work = anyio.to_thread.run_sync(
                partial(self._sync.begin, scope, text, requested=requested, prompt_tokens=tokens)
            )
        task = self._spawn(work)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:  # the reservation may still be made: give it back once it is
            task.add_done_callback(self._release_later)
            raise

    def _release_later(self, task: asyncio.Future[Decision]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._spawn(self._finish(task.result(), None))

    async def _settle(self, decision: Decision, usage: Usage | None) -> None:
        await asyncio.shield(self._spawn(self._finish(decision, usage)))

    async def _finish(self, decision: Decision, usage: Usage | None) -> None:
        """Commit ``usage``, or release everything when it is None."""
        if self._async is not None:
            await (self._async.fail(decision) if usage is None else self._async.end(decision, usage))
        elif usage is None:
            await anyio.to_thread.run_sync(self._sync.fail, decision)
        else:
            await anyio.to_thread.run_sync(self._sync.end, decision, usage)

    def _stop(self, scope: str, state: ClearBudgetState, balances: list[Balance]) -> dict[str, Any] | None:
        prompt = self._counter(prompt_text(list(state["messages"]))).tokens
        need = prompt + self.policy.min_tokens
        if not any(b.limit is not None and b.mode != "soft" and b.limit - b.spent < need for b in balances):
            return None
        decision = Decision(
            scope=scope,
            action="abandon",
            max_tokens=0,
            prompt_tokens=prompt,
            prompt_estimated=True,
            reservation=None,
            reason=_EXHAUSTED,
        )
        return {"jump_to": "end", "messages": [self._final(decision)]}

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: ClearBudgetState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """End the loop before the model is called when a hard budget cannot pay for the prompt."""
        scope = self._scope(runtime)
        return self._stop(scope, state, [self.ledger.balance(a) for a in parse_scope(scope).path])

    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: ClearBudgetState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """The async twin of :meth:`before_model`."""
        scope = self._scope(runtime)
        accounts = parse_scope(scope).path
        if self._async is not None:
            balances = [await self._async.ledger.balance(a) for a in accounts]
        else:
            balances = await anyio.to_thread.run_sync(lambda: [self.ledger.balance(a) for a in accounts])
        return self._stop(scope, state, balances)
