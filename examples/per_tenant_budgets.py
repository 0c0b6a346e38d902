"""Per-tenant budgets from a file that ops can edit, on one SQLite ledger shared by every worker process.

    python examples/per_tenant_budgets.py [path/to/budgets.db]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from clear_integrations import load_budgets, open_ledger
from clear_integrations.adapters.langchain import ClearBudget
from clear_integrations.testing import MeteredFakeChatModel

BUDGETS = """
[budgets.acme]
tokens = 5000
window = "1d"

[budgets.globex]
tokens = 800
window = "1d"

[budgets."globex/batch-jobs"]
tokens = 300
mode = "soft"
"""


def main(database: Path) -> None:
    config = database.with_suffix(".toml")
    config.write_text(BUDGETS)
    ledger = open_ledger(f"sqlite:///{database}")
    print(f"applied {ledger.apply_budgets(load_budgets(config))} budgets from {config.name}")

    chain = ChatPromptTemplate.from_template("{q}") | MeteredFakeChatModel(response_tokens=120) | StrOutputParser()
    acme = ClearBudget(chain, ledger=ledger, tenant="acme")
    globex = ClearBudget(chain, ledger=ledger, tenant="globex", session="batch-jobs")

    acme.batch([{"q": f"acme question {i}"} for i in range(8)])
    answers = globex.batch([{"q": f"globex question {i}"} for i in range(8)])
    refused = sum("budget" in a for a in answers)

    for account in ("acme", "globex", "globex/batch-jobs"):
        b = ledger.balance(account)
        print(f"{account:<18} spent {b.spent:>5} / {b.limit:<5} over {b.over:>4}  ({b.mode})")
    print(f"globex: {refused} of 8 questions refused when its hard daily budget ran out")
    assert ledger.balance("acme").spent <= 5000
    assert ledger.balance("globex").spent <= 800


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as folder:
            main(Path(folder) / "budgets.db")
