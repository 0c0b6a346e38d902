"""A child process for the multi-process ledger tests (run as a script, not collected by pytest).

    python ledger_worker.py race URL PREFIX SEED OPS NOW   reserve/commit against "acme", print JSON results
    python ledger_worker.py crash URL PREFIX NOW HELD      hold HELD reservations, then commit until killed

The clock is fixed at NOW (Unix seconds) so that leases never run out while the parent watches.
"""

from __future__ import annotations

import json
import random
import sys

from clear_integrations.errors import BudgetExceeded
from clear_integrations.ledger import open_ledger


def race(url: str, prefix: str, seed: int, ops: int, now: float) -> None:
    ledger = open_ledger(url, clock=lambda: now, prefix=prefix)
    rng = random.Random(seed)
    results = []
    for _ in range(ops):
        scope = f"acme/s{rng.randrange(4)}"
        try:
            r = ledger.reserve(scope, rng.randint(1, 400))
        except BudgetExceeded:
            continue
        if rng.random() < 0.15:
            results.append([r.tokens, 0, ledger.release(r), False])
        else:
            used = rng.randint(0, r.tokens)
            results.append([r.tokens, used, ledger.commit(r, used), True])
    print(json.dumps(results), flush=True)
    ledger.close()


def crash(url: str, prefix: str, now: float, held: int) -> None:
    ledger = open_ledger(url, clock=lambda: now, prefix=prefix)
    for _ in range(held):
        print("held", ledger.reserve("acme/held", 100).id, flush=True)
    while True:
        r = ledger.reserve("acme/busy", 10)
        ledger.commit(r, 7)
        print("committed", r.id, flush=True)


if __name__ == "__main__":
    mode, url, prefix, *rest = sys.argv[1:]
    if mode == "race":
        race(url, prefix, int(rest[0]), int(rest[1]), float(rest[2]))
    else:
        crash(url, prefix, float(rest[0]), int(rest[1]))
