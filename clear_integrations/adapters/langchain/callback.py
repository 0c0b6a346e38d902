"""``ClearCallbackHandler``: token accounting on the ledger for any LangChain chain or agent, with no wrapping.

```python
from clear_integrations import open_ledger
from clear_integrations.adapters.langchain.callback import ClearCallbackHandler

ledger = open_ledger("memory://")
chain.invoke(x, config={"callbacks": [ClearCallbackHandler(ledger, tenant="acme")]})
ledger.usage("acme")            # prompt, completion, reasoning, calls, estimated_calls
```

Each LLM or chat-model run is charged to ``tenant`` (or ``tenant/session``); a run's ``metadata`` keys
``clear_tenant`` / ``clear_session`` override them, and child runs inherit metadata.

* **start**: reserve (``reserve_up_to``: a nearly spent budget grants what it has left) the prompt, counted
  offline with bound tool schemas, plus the cap (``ls_max_tokens``, a ``max_tokens``-like invocation parameter,
  else ``reserve_tokens``). With nothing left, ``raise_on_exhausted=True`` raises ``BudgetExceeded`` before the
  provider is called (``raise_error`` is then set, so it propagates on sync and async paths); runs of the same
  model call started before it get no end event and are released here. Otherwise the run goes on unreserved.
* **end**: commit the provider's usage summed over all generations (``usage_metadata``; one response's usage
  repeated on its ``n`` choices, as ChatOpenAI reports ``n > 1``, counts once), else ``llm_output["token_usage"]``,
  else an estimate (prompt counted at start + completion text or streamed tokens) with ``estimated=True``.
  Reasoning tokens come from ``output_token_details["reasoning"]``. A cache hit (``total_cost == 0``) is released.
* **error**: a stream that stopped early (``GeneratorExit`` when its consumer stops reading, or a failure
  mid-stream) hands over its partial generations: the provider charged them, so an estimate is committed.
  Other failures release.

An unreserved run is charged at its end with :meth:`~clear_integrations.ledger.Ledger.charge`: in full, past a
hard limit too (it shows as overage), never dropped.

Runs tagged ``clear:budgeted`` are skipped (``ClearBudget``'s proxies account for them). ``run_inline = True``: on
async paths LangChain calls this sync handler on the event loop, not in an executor thread, so a ``sqlite://`` or
``redis://`` ledger blocks the loop one round trip per event. State is keyed by ``run_id`` under a lock; nothing
global is registered, at import or per use.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage, get_buffer_string
from langchain_core.outputs import ChatGenerationChunk, Generation, GenerationChunk, LLMResult

from ...errors import BudgetExceeded
from ...ledger import DEFAULT_LEASE, Ledger, Reservation, Usage
from ...ledger.accounts import parse_scope
from ...tokens import count_tokens
from ...validation import check_tokens
from .caps import CAP_FIELDS
from .usage import is_cache_hit

__all__ = ["BUDGETED_TAG", "CallbackTotals", "ClearCallbackHandler"]

#: Runs with this tag are accounted by ``ClearBudget``'s proxies; the handler skips them.
BUDGETED_TAG = "clear:budgeted"


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


def _text(generation: Generation) -> str:
    message = getattr(generation, "message", None)
    if not isinstance(message, BaseMessage):
        return generation.text
    calls = getattr(message, "tool_calls", None) or getattr(message, "tool_call_chunks", None)
    return message.text + (json.dumps(calls, default=str) if calls else "")


def _reported(metadata: Mapping[str, Any]) -> Usage:
    completion = int(metadata.get("output_tokens") or 0)
    reasoning = int((metadata.get("output_token_details") or {}).get("reasoning") or 0)
    return Usage(int(metadata.get("input_tokens") or 0), completion, min(reasoning, completion))


def _from_llm_output(llm_output: Mapping[str, Any] | None) -> Usage | None:
    usage = (llm_output or {}).get("token_usage") or (llm_output or {}).get("usage")
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = usage.get("prompt_tokens", usage.get("input_tokens")), usage.get("completion_tokens")
    completion = usage.get("output_tokens") if completion is None else completion
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return Usage(prompt, completion, min(int(reasoning), completion))


def _add(parts: Sequence[Usage], estimated: bool = False) -> Usage:
    return Usage(
        sum(u.prompt for u in parts), sum(u.completion for u in parts), sum(u.reasoning for u in parts),
        estimated or any(u.estimated for u in parts),
    )  # fmt: skip


class ClearCallbackHandler(BaseCallbackHandler):
    """Accounts every LLM and chat-model run on ``ledger`` (see the module docstring for the rules).

    Args:
        ledger: a synchronous :class:`~clear_integrations.ledger.Ledger`.
        tenant, session: the account charged (``tenant/session`` when ``session`` is set).
        reserve_tokens: completion tokens reserved for a call that reports no cap.
        raise_on_exhausted: raise ``BudgetExceeded`` at start, before the provider call, when nothing is left.
        lease: seconds a reservation is held before the ledger expires it.
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
    ) -> None:
        self.ledger, self.tenant, self.session = ledger, tenant, session
        parse_scope(self._scope({}), "tenant")
        self.reserve_tokens = check_tokens("reserve_tokens", reserve_tokens, minimum=1)
        self.raise_on_exhausted = self.raise_error = raise_on_exhausted
        self.lease = lease
        self._lock = threading.Lock()
        self._runs: dict[UUID, _Run] = {}
        self._counts = dict.fromkeys(_COUNTED, 0)

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
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID,
        tags: list[str] | None = None, metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        if tags and BUDGETED_TAG in tags:  # a ClearBudget proxy accounts for it: skip before any work
            return
        self._start("\n".join(get_buffer_string(m) for m in messages), run_id, tags, metadata, kwargs)

    def on_llm_start(
        self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        self._start("\n".join(prompts), run_id, tags, metadata, kwargs)

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
            text = sum(_count(_text(g), run.model) for p in chunks for g in p) or run.streamed
            usage = Usage(max(usage.prompt, run.prompt), max(usage.completion, text), usage.reasoning, True)
        self._settle(run, usage)

    # -- reading --------------------------------------------------------------------------------------------------

    def totals(self) -> CallbackTotals:
        """A snapshot of what this handler settled (the ledger's ``usage(account)`` has every process's)."""
        with self._lock:
            return CallbackTotals(**self._counts, in_flight=len(self._runs))

    # -- internals ------------------------------------------------------------------------------------------------

    def _scope(self, metadata: Mapping[str, Any]) -> str:
        tenant = str(metadata.get("clear_tenant", self.tenant))
        session = metadata.get("clear_session", self.session)
        return tenant if session is None else f"{tenant}/{session}"

    def _start(
        self, text: str, run_id: UUID, tags: Sequence[str] | None, metadata: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
    ) -> None:  # fmt: skip
        if tags and BUDGETED_TAG in tags:
            return
        metadata = metadata or {}
        params: Mapping[str, Any] = kwargs.get("invocation_params") or {}
        model = metadata.get("ls_model_name") or params.get("model_name") or params.get("model")
        model = model if isinstance(model, str) else None
        tools = params.get("tools") or kwargs.get("tools") or params.get("functions")
        prompt = _count(text, model) + (_count(json.dumps(tools, default=str), model) if tools else 0)
        caps = [metadata.get("ls_max_tokens"), *(params.get(name) for name in CAP_FIELDS)]
        cap = min((c for c in caps if type(c) is int and c > 0), default=self.reserve_tokens)
        scope = self._scope(metadata)
        try:
            reservation: Reservation | None = self.ledger.reserve_up_to(scope, prompt + cap, lease=self.lease)
        except BudgetExceeded:
            if self.raise_on_exhausted:
                self._abandon_batch(params)
                raise
            reservation = None
        with self._lock:
            self._runs[run_id] = _Run(scope, reservation, prompt, model, params)
            self._counts["unreserved"] += reservation is None

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
                if is_cache_hit(message) or metadata in seen:
                    continue
                if isinstance(metadata, Mapping) and metadata.get("output_tokens") is not None:
                    seen.append(metadata)
                    reported.append(_reported(metadata))
                else:
                    silent.append(_text(generation))
        if not reported and not silent:
            has_output = any(response.generations) or not run.streamed
            return None if has_output else Usage(run.prompt, run.streamed, estimated=True)
        if not silent:
            return _add(reported)
        completion = sum(_count(text, run.model) for text in silent)
        if reported:
            return _add([*reported, Usage(0, completion)], estimated=True)
        aggregate = _from_llm_output(response.llm_output)
        if aggregate is not None:  # a text LLM's batch: the first run's result carries the whole call's usage
            with self._lock:
                for other in self._runs.values():
                    other.paid_by_sibling |= other.call is run.call and bool(run.call)
            return aggregate
        if run.paid_by_sibling and (response.llm_output or {}).get("token_usage") == {}:
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

