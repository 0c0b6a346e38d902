"""Several worker processes serve one tenant through one Redis ledger and share one shadow price.

What it shows: four processes (``multiprocessing`` with the ``spawn`` start method, as separate hosts would be)
each run a LangChain chain ``prompt | model | parser`` wrapped in ``ClearBudget`` for the same tenant, on the same
``redis://`` ledger. Every decision reserves on the tenant's hard budget atomically in Redis, so the total spend
can never pass the budget; and the pool's price state (:class:`~clear_integrations.pricing.PriceState`) lives in
the ledger's state slot, updated by compare-and-set on every decision, so all the workers quote one shadow price
and pace the budget together: short questions (an early emergence threshold, a high plateau) are funded, long
ones (late threshold, low plateau) are abandoned before they cost a token.

The model is the shipped ``MeteredFakeChatModel``: a question of ``w`` words needs ``2w + 16`` completion tokens
for a full answer. The estimator is a small one defined here: fitted on a few synthetic measured curves, it
predicts each question's threshold and plateau from its length. The questions are the 20 GSM8K questions shipped
in the package, repeated and shuffled with a seed per worker.

The parent sets the tenant's hard budget (default 80 tokens per query; the pool's pacing target is 3/4 of that
share in completion tokens, the funded prompts take the rest; ``--tokens-per-query`` overrides it) under a unique
key prefix (deleted at the end), starts the workers, and prints one line per worker (answered, abandoned, tokens,
its price over time), the total spend against the budget, and the spread of the workers' final prices (the
max/min ratio of the medians of each worker's last 20 quotes: close to 1, because they share one price). It exits
1 if the spend passes the budget, tokens are still held at the end, or a query is unaccounted for.

    python examples/multi_worker_redis.py [--redis redis://127.0.0.1:6379/15] [--workers 4] [--queries 200]
        [--budget TOKENS] [--tokens-per-query N] [--lease SECONDS] [--kill-worker-after K] [--json summary.json]

Crash safety: ``--kill-worker-after K`` makes worker 0 hang in its (K+1)-th model call, with its reservation
held, and the parent kills it with SIGKILL. The others carry on; the dead worker's reservation comes back when
its lease (``--lease``, seconds) runs out and ``ledger.expire()`` sweeps it (run it periodically in production).

Needs a Redis server (``redis-server``) and the ``[langchain,redis]`` extras; runs in a few seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import LLMResult
from langchain_core.prompts import ChatPromptTemplate

from clear_integrations import Budget, BudgetPolicy, CurveBatch, Decision, Ledger, open_ledger
from clear_integrations.adapters.langchain import ClearBudget
from clear_integrations.budgeting import current_decision
from clear_integrations.calibration.problems import gsm8k_sample
from clear_integrations.errors import ClearError
from clear_integrations.estimators.base import Meta
from clear_integrations.testing import MeteredFakeChatModel

TENANT = "acme"
PROMPT = ChatPromptTemplate.from_template("Solve step by step: {q}")
GRID = [16, 32, 48, 64, 80, 96, 128, 160, 192, 224, 256]
MAX_TOKENS = 200  # the cap on one call
LAST = 20  # each worker's final price: the median of its last LAST quotes


def words(text: str) -> int:
    return len(text.split())


def question_of(prompt: str) -> str:
    """The question inside a formatted prompt (``Human: Solve step by step: <question>``)."""
    return prompt.partition("Solve step by step:")[2]


def needed_tokens(question_words: int) -> int:
    """Completion tokens the fake model needs for a full answer to a question of that many words."""
    return 2 * question_words + 16


def answer_length(messages: Sequence[BaseMessage]) -> int:
    return needed_tokens(words(question_of(messages[-1].text)))


def true_curve(question_words: int) -> list[float]:
    """The curve a calibration run would measure: a surge at the answer's length, a plateau falling with length."""
    tau, plateau = needed_tokens(question_words), max(0.2, 1.0 - 0.008 * question_words)
    return [plateau / (1.0 + math.exp(-(b - tau) / (0.1 * tau))) for b in GRID]


class LengthEstimator:
    """Predicts a curve from the question's length: a logistic surge at a threshold, up to a plateau, both linear
    in the number of words (least squares on the training curves' thresholds and plateaus)."""

    name: ClassVar[str] = "length"

    def __init__(self) -> None:
        self.tau: tuple[float, float] = (0.0, 0.0)
        self.plateau: tuple[float, float] = (0.0, 0.0)

    def fit(self, prompts: Sequence[str], curves: CurveBatch, meta: Meta = None) -> LengthEstimator:
        x = np.array([words(question_of(p)) for p in prompts], dtype=float)
        budgets = np.asarray(curves.budgets, dtype=float)
        plateaus = curves.matrix.max(axis=1)
        taus = np.array([np.interp(0.5 * top, row, budgets) for row, top in zip(curves.matrix, plateaus, strict=True)])
        slope, intercept = np.polyfit(x, taus, 1)
        self.tau = (float(intercept), float(slope))
        slope, intercept = np.polyfit(x, plateaus, 1)
        self.plateau = (float(intercept), float(slope))
        return self

    def predict(self, prompts: Sequence[str], meta: Meta = None) -> CurveBatch:
        x = np.array([words(question_of(p)) for p in prompts], dtype=float)[:, None]
        tau = np.maximum(self.tau[0] + self.tau[1] * x, 1.0)
        plateau = np.clip(self.plateau[0] + self.plateau[1] * x, 0.0, 1.0)
        budgets = np.asarray(GRID, dtype=float)[None, :]
        return CurveBatch(GRID, plateau / (1.0 + np.exp(-(budgets - tau) / (0.1 * tau))))

    def to_dict(self) -> dict[str, Any]:
        return {"tau": list(self.tau), "plateau": list(self.plateau)}


def fitted_estimator() -> LengthEstimator:
    """Fitted on synthetic measured curves of six of the sample questions (every process fits the same one)."""
    training = [p.question for p in gsm8k_sample(6)]
    prompts = [PROMPT.format_prompt(q=q).to_string() for q in training]
    return LengthEstimator().fit(prompts, CurveBatch(GRID, [true_curve(words(q)) for q in training]))


@dataclass
class Settings:
    """What every worker needs (pickled to the spawned processes)."""

    url: str
    prefix: str
    tokens_per_query: int
    lease: float
    seed: int
    kill_after: int | None = None


class Recorder(BaseCallbackHandler):
    """Sees each query's decision: the budgeted model puts it in its answer's ``response_metadata``; abandoned
    queries come through ``on_abandon``."""

    def __init__(self) -> None:
        self.price: float | None = None
        self.reason = ""
        self.abandoned = False
        self.tokens = 0

    def reset(self) -> None:
        self.price, self.reason, self.abandoned, self.tokens = None, "", False, 0

    def abandon(self, decision: Decision) -> AIMessage:
        self.price, self.reason, self.abandoned = decision.shadow_price, decision.reason, True
        return AIMessage(content="(abandoned)")

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        for generation in response.generations[0]:
            message = getattr(generation, "message", None)
            metadata = getattr(message, "response_metadata", None) or {}
            if self.price is None and not self.abandoned:
                self.price, self.reason = metadata.get("clear_shadow_price"), metadata.get("clear_reason", "")
            self.tokens += (getattr(message, "usage_metadata", None) or {}).get("total_tokens", 0)


def worker_questions(index: int, count: int, seed: int) -> list[str]:
    """This worker's stream: the sample questions repeated, each round shuffled with the worker's own seed."""
    questions = [p.question for p in gsm8k_sample()]
    rng = np.random.default_rng([seed, index])
    stream: list[str] = []
    while len(stream) < count:
        stream += [questions[i] for i in rng.permutation(len(questions))]
    return stream[:count]


def worker(index: int, count: int, settings: Settings, conn: Connection, barrier: Any) -> None:
    """One serving process: answer ``count`` queries, sending one message per query to the parent."""
    ledger = open_ledger(settings.url, prefix=settings.prefix)
    policy = BudgetPolicy(
        estimator=fitted_estimator(),
        tokens_per_query=settings.tokens_per_query,
        max_tokens=MAX_TOKENS,
        lease=settings.lease,
        wait=2.0,
    )
    kill_after = settings.kill_after if index == 0 else None

    calls = 0

    def length_or_hang(messages: Sequence[BaseMessage]) -> int:  # inside the provider call: its tokens are held
        nonlocal calls
        calls += 1
        decision = current_decision()
        if kill_after is not None and calls > kill_after and decision is not None and decision.reservation:
            reservation = decision.reservation.id
            conn.send({"kind": "in_flight", "worker": index, "pid": os.getpid(), "reservation": reservation})
            time.sleep(3600)  # the parent kills us with SIGKILL
        return answer_length(messages)

    recorder = Recorder()
    model = MeteredFakeChatModel(response_tokens=length_or_hang, latency=0.002)
    chain = ClearBudget(
        PROMPT | model | StrOutputParser(), ledger=ledger, tenant=TENANT, policy=policy, on_abandon=recorder.abandon
    )
    stream = worker_questions(index, count, settings.seed)
    barrier.wait(timeout=120)  # start together, as traffic does
    for n, question in enumerate(stream):
        recorder.reset()
        chain.invoke({"q": question}, config={"callbacks": [recorder]})
        conn.send(
            {
                "kind": "query",
                "worker": index,
                "n": n,
                "abandoned": recorder.abandoned,
                "reason": recorder.reason,
                "price": recorder.price,
                "tokens": recorder.tokens,
            }
        )
    conn.send({"kind": "done", "worker": index})
    conn.close()
    ledger.close()


@dataclass
class WorkerReport:
    index: int
    share: int
    answered: int = 0
    abandoned: int = 0
    exhausted: int = 0  # abandoned because the budget ran out (not by the price)
    tokens: int = 0
    prices: list[float] = field(default_factory=list)
    killed: bool = False
    killed_reservation: str | None = None
    done: bool = False

    def price_by_quarter(self) -> list[float]:
        """The median price this worker was quoted in each quarter of its stream: the price over time."""
        return [statistics.median(part) for part in np.array_split(np.asarray(self.prices), 4) if part.size]

    @property
    def final_price(self) -> float | None:
        return statistics.median(self.prices[-LAST:]) if self.prices else None

    def add(self, message: dict[str, Any]) -> None:
        if message["abandoned"]:
            self.abandoned += 1
            self.exhausted += "exhausted" in message["reason"]
        else:
            self.answered += 1
        self.tokens += message["tokens"]
        if message["price"] is not None:
            self.prices.append(float(message["price"]))


def shares(queries: int, workers: int) -> list[int]:
    return [queries // workers + (i < queries % workers) for i in range(workers)]


def run_workers(
    settings: Settings, queries: int, workers: int, timeout: float = 120.0
) -> tuple[list[WorkerReport], float, float]:
    """Start the workers, collect their messages until every pipe closes; SIGKILL a worker that says it hangs.
    Returns the reports, the seconds from start to end, and the seconds from the first query to the last."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers)
    reports = [WorkerReport(i, share) for i, share in enumerate(shares(queries, workers))]
    processes, readers = [], {}
    for report in reports:
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(
            target=worker, args=(report.index, report.share, settings, writer, barrier), name=f"worker-{report.index}"
        )
        process.start()
        writer.close()  # the parent's copy: the pipe reads EOF once the worker exits or dies
        processes.append(process)
        readers[reader] = report
    started, deadline = time.monotonic(), time.monotonic() + timeout
    first = last = None
    while readers and time.monotonic() < deadline:
        for ready in wait(list(readers), timeout=1.0):
            assert isinstance(ready, Connection)
            report = readers[ready]
            try:
                message = ready.recv()
            except EOFError:
                del readers[ready]
                continue
            if message["kind"] == "query":
                report.add(message)
                last = time.monotonic()
                first = first or last
            elif message["kind"] == "done":
                report.done = True
            elif message["kind"] == "in_flight":
                os.kill(message["pid"], signal.SIGKILL)
                report.killed, report.killed_reservation = True, message["reservation"]
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():  # something went wrong: do not leave it behind
            process.kill()
            process.join()
    serving = 0.0 if first is None or last is None else last - first
    return reports, time.monotonic() - started, serving


def delete_keys(url: str, prefix: str) -> None:
    """Delete the example's keys (and only those: other users of the server keep theirs)."""
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def wait_out_leases(ledger: Ledger, lease: float) -> float:
    """Sweep expired reservations until nothing is held (a dead worker's tokens come back when its lease runs
    out); returns the seconds waited. In production a periodic ``ledger.expire()`` does this."""
    begun = time.monotonic()
    while ledger.balance(TENANT).held and time.monotonic() - begun < lease + 10:
        time.sleep(0.1)
        ledger.expire()
    return time.monotonic() - begun


def expired_tokens(ledger: Ledger) -> dict[str, int]:
    """Tokens given back by lease expiry, per reservation id (from the ledger's audit log)."""
    return {e.reservation_id: e.tokens for e in ledger.events(TENANT) if e.kind == "expire" and e.reservation_id}


def report(args: argparse.Namespace, budget: int, reports: list[WorkerReport], run: dict[str, Any]) -> dict[str, Any]:
    """Print the per-worker lines and the totals; return the summary, with what failed."""
    for r in reports:
        status = " KILLED" if r.killed else ("" if r.done else " FAILED")
        price = f"{r.final_price:.2e}" if r.final_price is not None else "-"
        quarters = " ".join(f"{p:.1e}" for p in r.price_by_quarter())
        print(
            f"worker {r.index}: {r.answered:>3} answered {r.abandoned:>3} abandoned"
            f" ({r.exhausted:>2} on an empty budget) {r.tokens:>6} tokens"
            f" | price by quarter {quarters} | final {price}{status}"
        )
    finals = [r.final_price for r in reports if r.final_price is not None and not r.killed]
    spread = max(finals) / min(finals) if finals and min(finals) > 0 else math.inf
    answered, abandoned = sum(r.answered for r in reports), sum(r.abandoned for r in reports)
    lost = sum(r.share - r.answered - r.abandoned for r in reports if r.killed)
    spent, held = run["spent"], run["held"]
    print(
        f"{args.workers} workers, {args.queries} queries in {run['serving_s']:.1f}s"
        f" ({run['elapsed_s']:.1f}s with the processes' start):"
        f" {answered} answered, {abandoned} abandoned" + (f", {lost} lost with a killed worker" if lost else "")
    )
    print(f"spent {spent} of {budget} tokens ({spent / budget:.0%}), held {held}")
    failures = []
    for r in (r for r in reports if r.killed):
        tokens = run["expired"].get(r.killed_reservation or "")
        if tokens is None:
            failures.append(f"worker {r.index}'s reservation {r.killed_reservation} did not expire")
        else:
            print(
                f"worker {r.index} was killed holding {tokens} tokens: they came back when its lease"
                f" ({args.lease:g}s) ran out (waited {run['waited_s']:.1f}s after the run)"
            )
    print(f"final prices (median of each worker's last {LAST} quotes): spread max/min = {spread:.3f}")
    if run["state"] is not None:
        state = run["state"]
        print(f"one price state in Redis for all the workers: {state['price']:.2e} after {state['queries']} decisions")
    if spent > budget:
        failures.append(f"spent {spent} > budget {budget}")
    if held:
        failures.append(f"{held} tokens still held")
    if answered + abandoned + lost != args.queries or not all(r.done or r.killed for r in reports):
        failures.append(f"{answered + abandoned + lost} of {args.queries} queries accounted for")
    return {
        "workers": args.workers,
        "queries": args.queries,
        "budget": budget,
        **{key: value for key, value in run.items() if key != "state"},
        "answered": answered,
        "abandoned": abandoned,
        "exhausted": sum(r.exhausted for r in reports),
        "lost": lost,
        "killed": [r.index for r in reports if r.killed],
        "final_prices": [r.final_price for r in reports],
        "price_spread": spread,
        "shared_decisions": 0 if run["state"] is None else run["state"]["queries"],
        "per_worker": [{"answered": r.answered, "abandoned": r.abandoned, "tokens": r.tokens} for r in reports],
        "failures": failures,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15", help="the shared ledger (a Redis URL)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--queries", type=int, default=200, help="queries in all, shared among the workers")
    parser.add_argument("--budget", type=int, default=None, help="the tenant's token budget (default 80/query)")
    parser.add_argument(
        "--tokens-per-query", type=int, default=None, help="the pacing target (default 3/4 of the budget's share)"
    )
    parser.add_argument("--lease", type=float, default=30.0, help="reservation lease in seconds")
    parser.add_argument("--kill-worker-after", type=int, default=None, metavar="K", help="SIGKILL worker 0 mid-call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.queries < args.workers:
        parser.error("need at least one worker and one query per worker")
    budget = args.budget if args.budget is not None else 80 * args.queries
    # The pool's pacing target, in completion tokens per arriving query: 3/4 of the budget's share (the prompts of
    # the funded queries take the rest). The hard budget on the ledger is the backstop, never passed.
    tokens_per_query = args.tokens_per_query or max(1, 3 * budget // (4 * args.queries))

    prefix = f"clear-example-{uuid.uuid4().hex[:12]}:"
    try:
        ledger = open_ledger(args.redis, prefix=prefix)
    except ClearError as error:
        print(f"cannot open the ledger at {args.redis}: {error}", file=sys.stderr)
        return 2
    try:
        ledger.set_budget(TENANT, Budget(tokens=budget))
        settings = Settings(args.redis, prefix, tokens_per_query, args.lease, args.seed, args.kill_worker_after)
        reports, elapsed, serving = run_workers(settings, args.queries, args.workers)
        held_after_run = ledger.balance(TENANT).held
        killed = any(r.killed for r in reports)
        waited = wait_out_leases(ledger, args.lease) if killed else 0.0
        balance = ledger.balance(TENANT)
        run = {
            "prefix": prefix,
            "tokens_per_query": tokens_per_query,
            "elapsed_s": elapsed,
            "serving_s": serving,
            "spent": balance.spent,
            "held": balance.held,
            "held_after_run": held_after_run,
            "waited_s": waited,
            "expired": expired_tokens(ledger),
            "state": ledger.get_state(TENANT)[0],
        }
    finally:
        ledger.close()
        delete_keys(args.redis, prefix)
    summary = report(args, budget, reports, run)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2))
    for failure in summary["failures"]:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
