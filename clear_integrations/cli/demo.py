"""``clear-integrations demo``: the whole pipeline on a real local model, for two tenants, in a few minutes.

A LangChain chain (``prompt | model``) wrapped in ``ClearBudget`` answers a sample of GSM8K questions (shipped with
the package) for two tenants with different daily budgets on one SQLite ledger. Each query is priced and decided:
the table shows its estimated threshold, the shadow price, the decision (cap N, abandoned, extended) and the tokens
the ledger charged. Then the same questions run under uniform caps for comparison, and (with the ``[llama-index]``
extra) a LlamaIndex agent spends from the same ledger. ``--report out.html`` writes the decision table and the
Pareto chart.

The estimator is a toy on purpose: a question's threshold grows with the quantities it mentions (a real deployment
fits one on curves measured with ``clear-integrations calibrate``). The local model, SmolLM2-135M, is far too small
to solve GSM8K: the demo shows the mechanics (caps honoured, usage counted, budgets held, queries abandoned), not
accuracy.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..allocate import allocate
from ..baselines import uniform
from ..budgeting import BudgetPolicy
from ..calibration.problems import Problem, gsm8k_sample
from ..curves.curve import CurveBatch
from ..curves.families import ShiftedSurge
from ..ledger import Budget, Ledger, open_ledger

__all__ = ["DemoRow", "QuantityEstimator", "add_demo_command", "run_demo"]

GRID = tuple(range(16, 257, 16))
TENANTS = (("acme", 1.0), ("globex", 0.4))  # the second tenant gets 40% of the first one's budget
CHAIN_SHARE = 0.4  # of each tenant's budget, for the chain (session "chain"); the agent spends the rest
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


class QuantityEstimator:
    """A toy estimator: a shifted surge whose threshold grows with the numbers a question mentions."""

    name: ClassVar[str] = "quantities"

    def threshold(self, prompt: str) -> float:
        return 16.0 + 14.0 * len(_NUMBER.findall(prompt))

    def fit(self, prompts: Sequence[str], curves: CurveBatch, meta: Any = None) -> QuantityEstimator:
        return self

    def predict(self, prompts: Sequence[str], meta: Sequence[Mapping[str, Any]] | None = None) -> CurveBatch:
        rows = [ShiftedSurge(self.threshold(p), ceiling=0.85, rate=0.05, floor=0.02).accuracy(GRID) for p in prompts]
        return CurveBatch(GRID, np.asarray(rows).reshape(len(prompts), len(GRID)))

    def to_dict(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, slots=True)
class DemoRow:
    policy: str
    tenant: str
    question: str
    threshold: float
    price: float | None
    decision: str
    tokens: int
    answer: str


class _Decisions:
    """Collects the decision metadata of every model run (a LangChain callback handler)."""

    def __init__(self) -> None:
        from langchain_core.callbacks import BaseCallbackHandler

        seen: list[dict[str, Any]] = []

        class Handler(BaseCallbackHandler):
            run_inline = True

            def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
                seen.append(dict(kwargs.get("metadata") or {}))

        self.seen = seen
        self.handler = Handler()


def _model(spec: str, threads: int) -> Any:
    if spec != "local":
        from langchain.chat_models import init_chat_model

        return init_chat_model(spec, temperature=0)
    from langchain_community.chat_models import ChatLlamaCpp

    from ..calibration.local_model import smollm2_path

    return ChatLlamaCpp(
        model_path=str(smollm2_path()),
        n_threads=threads,
        n_ctx=1024,
        temperature=0.0,
        seed=0,
        verbose=False,
        streaming=False,
    )


def _decision_label(runs: list[dict[str, Any]], answer: Any) -> tuple[str, float | None]:
    if not runs:
        meta = getattr(answer, "response_metadata", {}) or {}
        return "abandoned", meta.get("clear_shadow_price")
    first = runs[0]
    label = f"cap {first.get('clear_max_tokens')}" if first.get("clear_max_tokens") is not None else "allow"
    if len(runs) > 1:
        label += f", extended x{len(runs) - 1}"
    return label, first.get("clear_shadow_price")


def _run_policy(
    name: str, chain_of: Any, ledger: Ledger, budgets: dict[str, int], problems: list[Problem], policy_of: Any
) -> list[DemoRow]:
    from ..adapters.langchain import ClearBudget

    estimator = QuantityEstimator()
    rows: list[DemoRow] = []
    for tenant, budget in budgets.items():
        share = int(budget * CHAIN_SHARE)  # the chain's session budget; the agent gets the rest
        ledger.set_budget(f"{tenant}/chain", Budget(tokens=share))
        ledger.reset(f"{tenant}/chain")
        chain = ClearBudget(
            chain_of(), ledger=ledger, tenant=tenant, session="chain", policy=policy_of(share, len(problems))
        )
        for i, problem in enumerate(problems):
            spy = _Decisions()
            before = ledger.balance(tenant).spent
            answer = chain.invoke({"q": problem.question}, config={"callbacks": [spy.handler]})
            decision, price = _decision_label(spy.seen, answer)
            text = " ".join(str(getattr(answer, "content", answer)).split())
            row = DemoRow(
                name,
                tenant,
                problem.id,
                estimator.threshold(problem.question),
                price,
                decision,
                ledger.balance(tenant).spent - before,
                text[:48],
            )
            rows.append(row)
            price_text = "-" if row.price is None else f"{row.price:.2e}"
            print(
                f"  [{i + 1:>2}/{len(problems)}] {tenant:<7} {row.question:<8} {row.threshold:>6.0f} {price_text:>9} "
                f"{row.decision:<22} {row.tokens:>6}  {row.answer!r}",
                flush=True,
            )
    return rows


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo (see the module docstring); returns an exit status."""
    from langchain_core.prompts import ChatPromptTemplate

    problems = gsm8k_sample(args.questions)
    ledger = open_ledger(args.ledger)
    budgets = {tenant: int(args.budget * share) for tenant, share in TENANTS}
    for tenant, tokens in budgets.items():
        ledger.set_budget(tenant, Budget(tokens=tokens, window="1d"))
        ledger.reset(tenant)
    model = _model(args.model, args.threads)
    prompt = ChatPromptTemplate.from_template("Solve step by step, then give the number.\n{q}")
    print(f"ledger {args.ledger}; model {args.model}; {len(problems)} GSM8K questions; budgets {budgets}")
    header = f"  {'':>7} {'tenant':<7} {'question':<8} {'tau':>6} {'price':>9} {'decision':<22} {'tokens':>6}  answer"

    def priced(budget: int, n: int) -> BudgetPolicy:
        return BudgetPolicy(
            estimator=QuantityEstimator(), tokens_per_query=budget / n, max_tokens=args.max_tokens, wait=0.0
        )

    def capped(budget: int, n: int) -> BudgetPolicy:
        return BudgetPolicy(max_tokens=max(1, min(args.max_tokens, budget // n - 40)), wait=0.0)

    started = time.perf_counter()
    print("\nCLEAR: priced per query\n" + header)
    rows = _run_policy("clear", lambda: prompt | model, ledger, budgets, problems, priced)
    spent = {tenant: ledger.balance(tenant).spent for tenant in budgets}
    uniform_ledger = open_ledger("memory://")
    for tenant, tokens in budgets.items():
        uniform_ledger.set_budget(tenant, Budget(tokens=tokens))
    print("\nuniform caps, same questions and budgets\n" + header)
    rows += _run_policy("uniform", lambda: prompt | model, uniform_ledger, budgets, problems, capped)
    print("\ntenant   chain budget  CLEAR spent  uniform spent")
    for tenant, tokens in budgets.items():
        share = int(tokens * CHAIN_SHARE)
        print(f"{tenant:<8} {share:>12} {spent[tenant]:>12} {uniform_ledger.balance(tenant).spent:>14}")
    if args.model == "local" and args.agent_questions > 0:
        _llama_index_agent(ledger, budgets, problems, args)
    _print_expected(problems, budgets)
    print(f"done in {time.perf_counter() - started:.0f} s")
    if args.report:
        from .demo_report import write_report

        write_report(Path(args.report), rows, problems, budgets)
        print(f"wrote {args.report}")
    print("\ntenant   daily budget  spent (chain + agent)  held")
    for tenant, tokens in budgets.items():
        balance = ledger.balance(tenant)
        print(f"{tenant:<8} {tokens:>12} {balance.spent:>22} {balance.held:>5}")
    over = [t for t in budgets if ledger.balance(t).spent > budgets[t] or ledger.balance(t).held]
    return 1 if over else 0


def _chatml(messages: Sequence[Any]) -> str:
    turns = "".join(f"<|im_start|>{m.role.value}\n{m.content}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def _add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


def _multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


def _llama_index_agent(ledger: Ledger, budgets: dict[str, int], problems: list[Problem], args: Any) -> None:
    """A LlamaIndex ReActAgent with two tools per tenant, on the same ledger, each step priced and capped."""
    import asyncio

    from llama_index.core.agent.workflow import ReActAgent
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.llama_cpp import LlamaCPP

    from ..adapters.llama_index import ClearBudgetLLM
    from ..calibration.local_model import smollm2_path

    inner = LlamaCPP(
        model_path=str(smollm2_path()),
        temperature=0.0,
        max_new_tokens=args.max_tokens,
        context_window=2048,
        model_kwargs={"n_threads": args.threads},
        messages_to_prompt=_chatml,
        completion_to_prompt=lambda text: _chatml([ChatMessage(role="user", content=text)]),
        verbose=False,
    )
    tools = [FunctionTool.from_defaults(_add), FunctionTool.from_defaults(_multiply)]
    print("\nLlamaIndex ReActAgent with two tools, same ledger (each step decided and capped)")
    for tenant in budgets:
        left = ledger.balance(tenant).remaining or 0  # what the chain left of the tenant's budget
        policy = BudgetPolicy(  # a pool of its own: agent steps carry long ReAct prompts, unlike the chain's
            estimator=QuantityEstimator(),
            tokens_per_query=max(1, left // max(1, args.agent_questions)),
            max_tokens=args.max_tokens,
            wait=0.0,
            pool=f"{tenant}-agent",
        )
        llm = ClearBudgetLLM(inner, ledger=ledger, tenant=tenant, session="agent", policy=policy)
        agent = ReActAgent(tools=tools, llm=llm)

        async def solve(question: str, agent: ReActAgent = agent) -> str:
            return str(await agent.run(user_msg=question, max_iterations=4))

        for problem in problems[: args.agent_questions]:
            before = ledger.balance(tenant).spent
            try:
                answer = asyncio.run(solve(problem.question))
            except Exception as error:  # the tiny model often breaks the ReAct format: say so, keep going
                answer = f"agent stopped: {type(error).__name__}"
            spent = ledger.balance(tenant).spent - before
            print(f"  {tenant:<7} {problem.id:<8} {spent:>5} tokens  {' '.join(answer.split())[:60]!r}", flush=True)


def _print_expected(problems: list[Problem], budgets: dict[str, int]) -> None:
    """What the estimator's curves expect of each allocation: the comparison a real model would be scored on."""
    curves = QuantityEstimator().predict([p.question for p in problems])
    print("\nexpected correct answers of the chain on the estimator's curves (what CLEAR optimises):")
    for tenant, tokens in budgets.items():
        share = int(tokens * CHAIN_SHARE)
        clear = allocate(curves, share).expected_accuracy * len(problems)
        flat = uniform(curves, share).expected_accuracy * len(problems)
        print(f"  {tenant:<8} CLEAR {clear:5.2f}  uniform {flat:5.2f}  of {len(problems)}")


def add_demo_command(commands: Any) -> None:
    """Register ``demo`` on the CLI's subparsers."""
    demo = commands.add_parser("demo", help="run a budgeted LangChain chain on the local model for two tenants")
    demo.add_argument(
        "--ledger", default="sqlite:///clear-demo.db", help="ledger URL (default sqlite:///clear-demo.db)"
    )
    demo.add_argument("--model", default="local", help="'local' (SmolLM2 via llama.cpp) or an init_chat_model string")
    demo.add_argument("--questions", type=int, default=8, help="GSM8K sample questions per tenant (max 20)")
    demo.add_argument("--budget", type=int, default=4000, help="the first tenant's daily tokens (the second: 40%%)")
    demo.add_argument("--max-tokens", type=int, default=96, help="cap on one call (default 96)")
    demo.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default 2)")
    demo.add_argument("--agent-questions", type=int, default=1, help="questions per tenant for the LlamaIndex agent")
    demo.add_argument("--report", help="write an HTML report (decision table and Pareto chart) to this file")
    demo.set_defaults(run=run_demo)


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="clear-integrations")
    add_demo_command(parser.add_subparsers(dest="command", required=True))
    sys.exit(run_demo(parser.parse_args(["demo", *sys.argv[1:]])))
