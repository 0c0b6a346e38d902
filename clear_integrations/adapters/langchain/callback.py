"""``ClearCallbackHandler``: token accounting on the ledger for any LangChain chain or agent, with no wrapping.

```python
from clear_integrations import open_ledger
from clear_integrations.adapters.langchain import ClearCallbackHandler

ledger = open_ledger("memory://")
chain.invoke(x, config={"callbacks": [ClearCallbackHandler(ledger, tenant="acme")]})
ledger.usage("acme")            # prompt, completion, reasoning, calls, estimated_calls
```

Each LLM or chat-model run is charged to its payer, resolved as budgeted models resolve it
(:mod:`clear_integrations.budgeting.payer`): ``clear_tenant`` / ``clear_session`` in the run's metadata,
``clear_scope``, the handler's ``tenant`` / ``session``, the run's ``thread_id`` as the session. Child runs inherit
metadata.

* **start**: reserve (``reserve_up_to``: a nearly spent budget grants what it has left) the prompt, counted
  offline with bound tool schemas, plus the cap (``ls_max_tokens``, a ``max_tokens``-like invocation parameter,
  else ``reserve_tokens``). When what is left cannot even pay for the prompt, ``raise_on_exhausted=True`` raises
  :class:`~clear_integrations.errors.QueryAbandoned` (naming the account and what it has left) before the provider
  is called (``raise_error`` is then set, so it propagates on sync and async paths); runs of the same model call
  started before it get no end event and are released here. Otherwise the run goes on unreserved.
* **end**: commit the provider's usage summed over all generations (:mod:`.usage`), else an estimate (prompt
  counted at start + completion text or streamed tokens) with ``estimated=True``. A cache hit is released.
* **error**: a stream that stopped early (``GeneratorExit`` when its consumer stops reading, or a failure
  mid-stream) hands over its partial generations: the provider charged them, so an estimate is committed.
  Other failures release.

An unreserved run is charged at its end with :meth:`~clear_integrations.ledger.Ledger.charge`: in full, past a
hard limit too (it shows as overage), never dropped.

Runs of budgeted models (tagged :data:`~.proxy.BUDGETED_TAG`) are skipped: they are on the ledger already, so a
handler next to ``budgeted()`` models or ``ClearBudgetMiddleware`` never charges a call twice. With
``warn_uncapped=True`` (``ClearBudget``'s safety net) the first run of each model it accounts for raises a
:class:`~clear_integrations.errors.ClearWarning`: that model is not capped. ``run_inline = True``: on async paths
LangChain calls this sync handler on the event loop, not in an executor thread, so a ``sqlite://`` or ``redis://``
ledger blocks the loop one round trip per event. State is keyed by ``run_id`` under a lock; nothing global is
registered.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage, get_buffer_string
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk, LLMResult

from ...budgeting import EXHAUSTED, Payer, resolve_payer
from ...errors import BudgetExceeded, ClearWarning, QueryAbandoned
from ...ledger import DEFAULT_LEASE, Ledger, Reservation, Usage
from ...tokens import count_tokens
from ...validation import check_tokens
from .caps import CAP_FIELDS
from .payer import names_of
from .proxy import BUDGETED_TAG
from .usage import generation_text, is_cache_hit, usage_of_mapping, usage_of_message

__all__ = ["BUDGETED_TAG", "CallbackTotals", "ClearCallbackHandler"]


@dataclass(frozen=True, slots=True)
class CallbackTotals:
    """What one handler has settled so far: usage committed (``estimated_calls`` of ``calls`` were estimates),
    ``cache_hits`` and ``released`` runs (charged nothing), runs that started ``unreserved``, and runs
    ``in_flight``."""

    calls: int = 0
    prompt: int = 0
    completion: int = 0
    reasoning: int = 0
    estimated_calls: int = 0
    cache_hits: int = 0
    released: int = 0
    unreserved: int = 0
    in_flight: int = 0


_COUNTED = ("calls", "prompt", "completion", "reasoning", "estimated_calls", "cache_hits", "released", "unreserved")


@dataclass(slots=True)
class _Run:
    scope: str
    reservation: Reservation | None
    prompt: int
    model: str | None
    call: object  # the ``invocation_params`` dict: one object per model call, shared by the runs of a batch
    streamed: int = 0
    paid_by_sibling: bool = False  # an earlier run of the call reported the whole call's ``token_usage``


def _count(text: str, model: str | None) -> int:
    return count_tokens(text, model=model).tokens if text else 0


class ClearCallbackHandler(BaseCallbackHandler):
    """Accounts every LLM and chat-model run on ``ledger`` (see the module docstring for the rules).

    Args:
        ledger: a synchronous :class:`~clear_integrations.ledger.Ledger`.
        tenant, session: the default payer (``tenant/session`` when ``session`` is set).
        reserve_tokens: completion tokens reserved for a call that reports no cap.
        raise_on_exhausted: raise ``QueryAbandoned`` at start, before the provider call, when nothing is left.
        lease: seconds a reservation is held before the ledger expires it.
        tenant_key, session_key: run config values that name the tenant / the session (as for ``budgeted()``).
        warn_uncapped: warn once per model whose runs this handler accounts for (they are not capped).
    """

    run_inline = True

    def __init__(
        self,
        ledger: Ledger,
        *,
        tenant: str,
        session: str | None = None,
        reserve_tokens: int = 1024,
        raise_on_exhausted: bool = False,
        lease: float = DEFAULT_LEASE,
        tenant_key: str | None = None,
        session_key: str | None = "thread_id",
        warn_uncapped: bool = False,
    ) -> None:
        self.ledger = ledger
        self.payer = Payer(tenant, session).checked("tenant")
        self.reserve_tokens = check_tokens("reserve_tokens", reserve_tokens, minimum=1)
        self.raise_on_exhausted = self.raise_error = raise_on_exhausted
        self.lease = lease
        self.tenant_key, self.session_key, self.warn_uncapped = tenant_key, session_key, warn_uncapped
        self._lock = threading.Lock()
        self._runs: dict[UUID, _Run] = {}
        self._counts = dict.fromkeys(_COUNTED, 0)
        self._warned: set[str] = set()

    @property
    def tenant(self) -> str:
        return self.payer.tenant

    @property
    def session(self) -> str | None:
        return self.payer.session

    # -- LangChain events ----------------------------------------------------------------------------------------

    @property
    def ignore_chain(self) -> bool:  # only model runs matter: spare LangChain dispatching the rest
        return True

    @property
    def ignore_retriever(self) -> bool:
        return True

    @property
    def ignore_agent(self) -> bool:
        return True

    @property
    def ignore_custom_event(self) -> bool:
        return True

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if tags and BUDGETED_TAG in tags:  # a budgeted model accounts for it: skip before any work
            return
        self._start("\n".join(get_buffer_string(m) for m in messages), run_id, metadata, kwargs, serialized)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if tags and BUDGETED_TAG in tags:
            return
        self._start("\n".join(prompts), run_id, metadata, kwargs, serialized)

    def on_llm_new_token(self, token: str | list[str | dict[str, Any]], *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            run = self._runs.get(run_id)
        if run is not None:
            tokens = _count(token if isinstance(token, str) else json.dumps(token, default=str), run.model)
            with self._lock:
                run.streamed += tokens

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._pop(run_id)
        if run is not None:
            self._settle(run, self._usage(response, run), cached=any(response.generations))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._pop(run_id)
        if run is None:
            return
        response = kwargs.get("response")
        partial = [
            [g for g in generations if isinstance(g, GenerationChunk | ChatGenerationChunk)]
            for generations in (response.generations if isinstance(response, LLMResult) else [])
        ]
        chunks = [p for p in partial if p]
        usage = self._usage(LLMResult(generations=chunks), run) if chunks or run.streamed else None
        if usage is not None:  # the provider charged what it streamed: at least the prompt and the text seen
            text = sum(_count(generation_text(g), run.model) for p in chunks for g in p) or run.streamed
            usage = Usage(max(usage.prompt, run.prompt), max(usage.completion, text), usage.reasoning, True)
        self._settle(run, usage)

    # -- reading --------------------------------------------------------------------------------------------------

    def totals(self) -> CallbackTotals:
        """A snapshot of what this handler settled (the ledger's ``usage(account)`` has every process's)."""
        with self._lock:
            return CallbackTotals(**self._counts, in_flight=len(self._runs))

    # -- internals ------------------------------------------------------------------------------------------------

    def _scope(self, metadata: Mapping[str, Any]) -> str:
        return resolve_payer(self.payer, *names_of(metadata, {}, self.tenant_key, self.session_key)).scope

    def _start(
        self,
        text: str,
        run_id: UUID,
        metadata: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
        serialized: Mapping[str, Any] | None,
    ) -> None:
        metadata = metadata or {}
        params: Mapping[str, Any] = kwargs.get("invocation_params") or {}
        model = metadata.get("ls_model_name") or params.get("model_name") or params.get("model")
        model = model if isinstance(model, str) else None
        tools = params.get("tools") or kwargs.get("tools") or params.get("functions")
        prompt = _count(text, model) + (_count(json.dumps(tools, default=str), model) if tools else 0)
        caps = [metadata.get("ls_max_tokens"), *(params.get(name) for name in CAP_FIELDS)]
        cap = min((c for c in caps if type(c) is int and c > 0), default=self.reserve_tokens)
        scope = self._scope(metadata)
        if self.warn_uncapped:
            self._warn((serialized or {}).get("name") or model or "a model")
        try:
            least = prompt + 1 if self.raise_on_exhausted else 1  # a refused call must not start over the budget
            reservation: Reservation | None = self.ledger.reserve_up_to(
                scope, prompt + cap, minimum=least, lease=self.lease
            )
        except BudgetExceeded as refused:
            if self.raise_on_exhausted:
                self._abandon_batch(params)
                left = refused.remaining.get(refused.account)
                raise QueryAbandoned(EXHAUSTED, scope=scope, account=refused.account, remaining=left) from refused
            reservation = None
        with self._lock:
            self._runs[run_id] = _Run(scope, reservation, prompt, model, params)
            self._counts["unreserved"] += reservation is None

    def _warn(self, name: str) -> None:
        with self._lock:
            if name in self._warned:
                return
            self._warned.add(name)
        warnings.warn(
            f"a {name} call ran outside ClearBudget's reach (inside a function or a graph node): it is accounted for "
            "and refused once a hard budget is spent, but not capped; wrap the model with budgeted() where it is built",
            ClearWarning,
            stacklevel=2,
        )

    def _abandon_batch(self, call: object) -> None:
        """Release the runs of the same model call (``llm.batch`` of prompts) started before a refused one:
        LangChain stops that call before the provider is reached and sends them no end or error event."""
        with self._lock:
            doomed = [run_id for run_id, run in self._runs.items() if call and run.call is call]
            runs = [self._runs.pop(run_id) for run_id in doomed]
        for run in runs:
            self._settle(run, None)

    def _pop(self, run_id: UUID) -> _Run | None:
        with self._lock:
            return self._runs.pop(run_id, None)

    def _usage(self, response: LLMResult, run: _Run) -> Usage | None:
        """The run's usage, or None when every generation is a cache hit (or there is none)."""
        reported: list[Usage] = []
        silent: list[str] = []
        for generations in response.generations:
            seen: list[Any] = []  # one response's usage repeated on each of its choices counts once
            for generation in generations:
                message = getattr(generation, "message", None)
                metadata = getattr(message, "usage_metadata", None)
                if is_cache_hit(message) or (metadata is not None and metadata in seen):
                    continue
                found = usage_of_message(message) if message is not None else None
                if found is not None:
                    seen.append(metadata)
                    reported.append(found)
                else:
                    silent.append(generation_text(generation))
        if not reported and not silent:
            has_output = any(response.generations) or not run.streamed
            return None if has_output else Usage(run.prompt, run.streamed, estimated=True)
        if not silent:
            return sum(reported, Usage())
        completion = sum(_count(text, run.model) for text in silent)
        if reported:
            return sum(reported, Usage(0, completion, estimated=True))
        output = response.llm_output or {}
        aggregate = usage_of_mapping(output.get("token_usage") or output.get("usage"))
        if aggregate is not None:  # a text LLM's batch: the first run's result carries the whole call's usage
            with self._lock:
                for other in self._runs.values():
                    other.paid_by_sibling |= other.call is run.call and bool(run.call)
            return aggregate
        if run.paid_by_sibling and output.get("token_usage") == {}:
            return Usage()
        return Usage(run.prompt, completion or run.streamed, estimated=True)

    def _settle(self, run: _Run, usage: Usage | None, *, cached: bool = False) -> None:
        """Commit ``usage``; None releases the run (a cache hit when ``cached``)."""
        if usage is None:
            if run.reservation is not None:
                self.ledger.release(run.reservation)
            with self._lock:
                self._counts["cache_hits" if cached else "released"] += 1
        else:
            if run.reservation is not None:
                self.ledger.commit(run.reservation, usage)
            else:
                self.ledger.charge(run.scope, usage, lease=self.lease)
            with self._lock:
                delta = (1, usage.prompt, usage.completion, usage.reasoning, usage.estimated)
                for name, value in zip(_COUNTED, delta, strict=False):
                    self._counts[name] += value
