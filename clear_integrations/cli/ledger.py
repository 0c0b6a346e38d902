"""``clear-integrations ledger show|set|reset|apply``: inspect and configure per-tenant budgets.

```
clear-integrations ledger show sqlite:///budgets.db acme acme/batch     # a table of balances
clear-integrations ledger show redis://redis:6379/0 --budgets budgets.toml
clear-integrations ledger set sqlite:///budgets.db acme 100000 --window 1d --mode hard
clear-integrations ledger reset sqlite:///budgets.db acme               # zero spent (held is kept)
clear-integrations ledger apply redis://redis:6379/0 budgets.toml       # only changed budgets are written
```

Bad input exits with code 2 and a message naming the field; an unreachable store exits with code 1.
Also runs as ``python -m clear_integrations.cli.ledger ...``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ClearError, InvalidBudget, LedgerUnavailable
from ..ledger import Balance, Budget, Ledger, load_budgets, open_ledger

__all__ = ["add_ledger_commands", "format_balances", "main"]

_COLUMNS = ("account", "limit", "window", "mode", "spent", "held", "remaining", "over")


def _open(args: argparse.Namespace) -> Ledger:
    return open_ledger(args.url, prefix=args.prefix)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else str(value)


def format_balances(rows: Sequence[tuple[Balance, Budget | None]]) -> str:
    """A text table of balances: account, limit, window, mode, spent, held, remaining, over."""
    table = [list(_COLUMNS)]
    for balance, budget in rows:
        window = budget.window if budget is not None else None
        values = (balance.account, balance.limit, window, balance.mode, balance.spent, balance.held)
        table.append([_cell(v) for v in (*values, balance.remaining, balance.over)])
    widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i < 4 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    )


def _show(args: argparse.Namespace) -> int:
    accounts: list[str] = list(args.accounts)
    if args.budgets:
        accounts += [name for name in load_budgets(args.budgets) if name not in accounts]
    with _open(args) as ledger:
        if not accounts:
            seen = {event.account for event in ledger.events()}
            accounts = sorted(seen)
            if not accounts:
                print("no accounts in this ledger yet: add one with 'ledger set URL ACCOUNT TOKENS' or 'ledger apply'")
                return 0
        rows = [(ledger.balance(name), ledger.get_budget(name)) for name in accounts]
    print(format_balances(rows))
    return 0


def _tokens(text: str) -> int:
    try:
        return int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise InvalidBudget("tokens", text, "must be a whole number of tokens, e.g. 100000") from None


def _set(args: argparse.Namespace) -> int:
    try:
        budget = Budget(_tokens(args.tokens), args.window, args.mode)
    except InvalidBudget as exc:  # name the command's field: tokens, window, mode
        raise InvalidBudget(exc.field.removeprefix("budget."), exc.value, exc.reason) from None
    with _open(args) as ledger:
        ledger.set_budget(args.account, budget)
        row = (ledger.balance(args.account), ledger.get_budget(args.account))
    print(format_balances([row]))
    return 0


def _reset(args: argparse.Namespace) -> int:
    with _open(args) as ledger:
        ledger.reset(args.account)
        row = (ledger.balance(args.account), ledger.get_budget(args.account))
    print(format_balances([row]))
    return 0


def _apply(args: argparse.Namespace) -> int:
    budgets = load_budgets(args.file)
    with _open(args) as ledger:
        changed = ledger.apply_budgets(budgets)
    print(f"applied {args.file}: {changed} of {len(budgets)} budgets changed")
    return 0


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report library errors as one line: bad input exits 2, an unreachable store 1."""

    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except LedgerUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except (ClearError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return guarded


def add_ledger_commands(subparsers: Any) -> None:
    """Register ``ledger show|set|reset|apply`` on an argparse subparsers object."""
    ledger = subparsers.add_parser("ledger", help="inspect and configure per-tenant budgets on a ledger URL")
    commands = ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")

    def command(name: str, help_text: str, run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("url", metavar="URL", help="memory://, sqlite:///path.db or redis://host:6379/0")
        parser.add_argument("--prefix", default="clear:", help="Redis key prefix (default clear:)")
        parser.set_defaults(run=_guarded(run))
        return parser

    show = command("show", "a table of balances: limit, window, mode, spent, held, remaining, over", _show)
    show.add_argument("accounts", nargs="*", metavar="ACCOUNT", help="tenant or tenant/session (default: all seen)")
    show.add_argument("--budgets", metavar="FILE", help="show the accounts of this budgets file (TOML or YAML)")

    set_ = command("set", "set an account's budget (usage so far is kept)", _set)
    set_.add_argument("account", metavar="ACCOUNT")
    set_.add_argument("tokens", metavar="TOKENS", help="the limit, a whole number of tokens")
    set_.add_argument("--window", default=None, help="fixed UTC window: 30s, 15m, 1h, 1d, 7d, ... (default: none)")
    set_.add_argument("--mode", choices=["hard", "soft"], default="hard", help="hard refuses, soft reports overage")

    reset = command("reset", "zero an account's spent tokens and usage totals (held tokens are kept)", _reset)
    reset.add_argument("account", metavar="ACCOUNT")

    apply = command("apply", "set every budget of a budgets file that differs", _apply)
    apply.add_argument("file", metavar="FILE", help="budgets.toml (or .yaml with PyYAML)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ledger ...`` on its own (``python -m clear_integrations.cli.ledger show URL ...``)."""
    parser = argparse.ArgumentParser(prog="clear-integrations")
    add_ledger_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments if arguments[:1] == ["ledger"] else ["ledger", *arguments])
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
