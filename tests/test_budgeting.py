from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import anyio
import numpy as np
import pytest

from clear_integrations import CurveBatch, InvalidBudget
from clear_integrations.budgeting import AsyncBudgetController, BudgetController, BudgetPolicy
from clear_integrations.ledger import Budget, Ledger, Usage, open_async_ledger, open_ledger

GRID = [16, 32, 64, 128]
EASY = [0.0, 0.3, 0.9, 0.95]
HOPELESS = [0.0, 0.0, 0.0, 0.01]


class KeywordEstimator:
    """Predicts a surge for prompts that say 'easy' and a flat line otherwise."""

    name: ClassVar[str] = "keyword"

    def fit(self, prompts: Sequence[str], curves: CurveBatch, meta: Any = None) -> KeywordEstimator:
        return self

    def predict(self, prompts: Sequence[str], meta: Sequence[Mapping[str, Any]] | None = None) -> CurveBatch:
        return CurveBatch(GRID, [EASY if "easy" in p else HOPELESS for p in prompts])

    def to_dict(self) -> dict[str, Any]:
        return {}


@pytest.fixture(params=["memory", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Ledger:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'policy.db'}"
    opened = open_ledger(url)
    opened.set_budget("acme", Budget(tokens=1_000))
    return opened


def test_without_pricing_calls_are_capped_to_what_is_left(ledger: Ledger) -> None:
    control = BudgetController(ledger, BudgetPolicy(reserve_tokens=400))
    first = control.begin("acme/s1", "hello", prompt_tokens=100)
    assert (first.action, first.max_tokens) == ("cap", 400)  # a hard budget: the call is capped at what it holds
    assert ledger.balance("acme").held == 500
    free = control.begin("free/s1", "hello", prompt_tokens=100)
    assert (free.action, free.max_tokens) == ("allow", None)  # no hard budget: the model keeps its own cap
    control.fail(free)
    assert control.end(first, Usage(prompt=100, completion=150)) == 250
    second = control.begin("acme/s1", "hello", prompt_tokens=100, requested=800)
    assert (second.action, second.max_tokens) == ("cap", 650)  # 1000 - 250 spent - 100 prompt
    control.fail(second)
    assert ledger.balance("acme").spent == 250 and ledger.balance("acme").held == 0


def test_exhausted_budget_abandons_without_reserving(ledger: Ledger) -> None:
    control = BudgetController(ledger, BudgetPolicy(min_tokens=50))
    ledger.commit(ledger.reserve("acme", 960), 960)
    decision = control.begin("acme", "hello", prompt_tokens=10)
    assert decision.abandoned and decision.reservation is None and "exhausted" in decision.reason
    assert control.end(decision, Usage()) == 0
    assert ledger.balance("acme").held == 0


def test_the_price_funds_easy_prompts_and_abandons_hopeless_ones(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(tokens=10**6))
    control = BudgetController(ledger, BudgetPolicy(estimator=KeywordEstimator(), tokens_per_query=64, max_tokens=128))
    decisions = [control.begin("acme", p, prompt_tokens=5) for p in ["easy one", "hard one"] * 30]
    easy, hard = decisions[-2], decisions[-1]
    assert easy.action == "cap" and easy.max_tokens is not None and easy.max_tokens >= 64
    assert hard.abandoned and hard.shadow_price is not None and hard.expected_accuracy == pytest.approx(0.01)
    state, version = ledger.get_state("acme")
    assert state is not None and state["queries"] == 60 and version >= 60
    assert easy.metadata()["clear_action"] == "cap"


def test_processes_share_the_price_through_the_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    policy = BudgetPolicy(estimator=KeywordEstimator(), tokens_per_query=64)
    one, two = BudgetController(open_ledger(url), policy), BudgetController(open_ledger(url), policy)
    for _ in range(5):
        one.begin("acme", "easy", prompt_tokens=1)
        two.begin("acme", "easy", prompt_tokens=1)
    state, _ = open_ledger(url).get_state("acme")
    assert state is not None and state["queries"] == 10


def test_extend_continues_a_cut_call_only_while_tokens_beat_the_price(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(tokens=10**6))
    control = BudgetController(ledger, BudgetPolicy(estimator=KeywordEstimator(), tokens_per_query=128))
    decision = control.begin("acme", "easy", prompt_tokens=5)
    assert decision.shadow_price is not None and decision.shadow_price < 1e-3  # the knee 64 -> 128 sets the price
    cheap = control.extend(decision, used=32, prompt_tokens=40)
    assert cheap is not None and cheap.action == "extend" and cheap.max_tokens == 96  # 32 -> 128: most surplus
    assert cheap.reservation is not None and cheap.reservation.tokens == 40 + 96
    capped = BudgetController(ledger, BudgetPolicy(estimator=KeywordEstimator(), tokens_per_query=128, max_tokens=32))
    step = capped.extend(decision, used=32, prompt_tokens=40)
    assert step is not None and step.max_tokens == 32  # one call never exceeds the policy's cap
    assert control.extend(decision, used=64, prompt_tokens=80) is None  # 64 -> 128 adds 0.05: not worth 144 tokens
    assert control.extend(decision, used=128, prompt_tokens=40) is None  # nothing beyond the last point


def test_bad_policy_values_name_the_field() -> None:
    with pytest.raises(InvalidBudget, match="min_tokens"):
        BudgetPolicy(min_tokens=0)
    with pytest.raises(InvalidBudget, match="max_tokens"):
        BudgetPolicy(max_tokens=-5)


def test_threads_never_overspend(ledger: Ledger) -> None:
    control = BudgetController(ledger, BudgetPolicy(reserve_tokens=60))
    rng = np.random.default_rng(0)
    usage = rng.integers(0, 60, size=(8, 25))

    def worker(row: np.ndarray) -> None:
        for used in row:
            decision = control.begin("acme/t", "q", prompt_tokens=5)
            if not decision.abandoned:
                cap = decision.max_tokens if decision.max_tokens is not None else 60
                control.end(decision, Usage(prompt=5, completion=int(min(used, cap))))

    threads = [threading.Thread(target=worker, args=(row,)) for row in usage]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    balance = ledger.balance("acme")
    assert balance.held == 0 and balance.spent <= 1_000


@pytest.mark.anyio
async def test_async_twin_decides_the_same_way() -> None:
    ledger = open_async_ledger("memory://")
    await ledger.set_budget("acme", Budget(tokens=1_000))
    control = AsyncBudgetController(ledger, BudgetPolicy(estimator=KeywordEstimator(), tokens_per_query=64))

    async def one(prompt: str) -> None:
        decision = await control.begin("acme/s", prompt, prompt_tokens=5)
        if not decision.abandoned:
            await control.end(decision, Usage(prompt=5, completion=min(decision.max_tokens or 0, 50)))

    async with anyio.create_task_group() as group:
        for i in range(40):
            group.start_soon(one, "easy" if i % 2 else "hard")
    balance = await ledger.balance("acme")
    assert balance.held == 0 and 0 < balance.spent <= 1_000
    decision = await control.begin("acme/s", "easy", prompt_tokens=5)
    assert await control.extend(decision, used=10_000, prompt_tokens=5) is None
    await control.fail(decision)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_a_call_waits_for_tokens_held_by_calls_in_flight(ledger: Ledger) -> None:
    holder = ledger.reserve("acme/other", 1_000)
    naps: list[float] = []

    def sleep(seconds: float) -> None:  # the call in flight finishes while we wait
        naps.append(seconds)
        ledger.commit(holder, 300)

    control = BudgetController(ledger, BudgetPolicy(reserve_tokens=100), sleep=sleep)
    decision = control.begin("acme/s", "q", prompt_tokens=5)
    assert not decision.abandoned and len(naps) == 1
    impatient = BudgetController(ledger, BudgetPolicy(wait=0.0))
    ledger.reserve("acme/other", ledger.balance("acme").remaining)
    assert impatient.begin("acme/s", "q", prompt_tokens=5).abandoned


def test_many_concurrent_calls_share_a_small_budget_without_losing_any(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(tokens=50 * 45))  # room for 50 calls of 45 tokens
    control = BudgetController(ledger, BudgetPolicy(reserve_tokens=40))
    answered: list[int] = []
    lock = threading.Lock()

    def call() -> None:
        decision = control.begin("acme", "q", prompt_tokens=5)
        if not decision.abandoned:
            control.end(decision, Usage(prompt=5, completion=40))
            with lock:
                answered.append(1)

    threads = [threading.Thread(target=call) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    balance = ledger.balance("acme")
    assert balance.held == 0 and balance.spent == 45 * len(answered) <= 50 * 45
    assert len(answered) == 50  # every token of the budget bought an answer


def test_the_pacer_gets_back_what_a_call_did_not_use_and_bounds_extensions(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(tokens=10**6))
    control = BudgetController(ledger, BudgetPolicy(estimator=KeywordEstimator(), tokens_per_query=128, max_tokens=32))
    decision = control.begin("acme", "easy", prompt_tokens=5)
    assert decision.paced is not None and decision.paced >= 64
    spent_before, _ = ledger.get_state("acme")
    control.end(decision, Usage(prompt=5, completion=10))
    spent_after, _ = ledger.get_state("acme")
    assert spent_before is not None and spent_after is not None
    assert spent_after["spent"] == spent_before["spent"] - (decision.paced - 10)
    state, version = ledger.get_state("acme")
    assert state is not None
    full = {**state, "spent": state["allowance"] + 10**6}  # the pool's pace is used up
    assert ledger.set_state("acme", full, expected_version=version)
    assert control.extend(decision, used=32, prompt_tokens=40) is None
