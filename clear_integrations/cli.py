"""The ``clear-integrations`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._version import __version__

__all__ = ["main"]

DEFAULT_BUDGETS = "16,32,48,64,96,128,192,256"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _bench(args: argparse.Namespace) -> int:
    from .bench.curvesets import load_curves, synthetic_curves
    from .bench.replay import replay
    from .bench.report import format_table, write_json, write_plot

    if args.train:
        train = load_curves(args.train)
        source = f"{args.train} ({len(train)} queries)"
    else:
        train = synthetic_curves(args.synthetic, seed=args.seed)
        source = f"{len(train)} synthetic S-shaped curves (pass --train PATH for measured ones)"
    test = load_curves(args.test) if args.test else None
    protocol = f"fit on train, score on {args.test}" if test else f"{args.folds}-fold cross-validation"
    print(f"curves: {source}; {protocol}")
    records = replay(
        train,
        test=test,
        budgets=args.budgets,
        policies=args.policies,
        estimator=args.estimator,
        modes=args.mode,
        streams=args.streams,
        folds=args.folds,
        max_tokens=args.max_tokens,
        seed=args.seed,
        progress=_progress if sys.stderr.isatty() else None,
    )
    print(format_table(records))
    if args.json:
        write_json(records, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        write_plot(records, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _bench_speed(args: argparse.Namespace) -> int:
    from .bench.speed import format_speed, measure_speed

    print(format_speed(measure_speed(args.sizes, repeats=args.repeats)))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clear-integrations",
        description="Economic token-budget allocation for LLM reasoning (CLEAR) in LangChain and LlamaIndex apps.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = commands.add_parser("bench", help="replay accuracy-at-budget curves through every allocation policy")
    bench.add_argument("--train", help="curves: a predictive-scheduling folder or a .jsonl file (default: synthetic)")
    bench.add_argument("--test", help="score on these curves instead of cross-validating on --train")
    bench.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    bench.add_argument(
        "--budgets",
        type=_int_list,
        default=_int_list(DEFAULT_BUDGETS),
        help=f"average tokens per query (default {DEFAULT_BUDGETS})",
    )
    bench.add_argument(
        "--policies",
        type=_names,
        default=["uniform", "proportional", "clear", "oracle"],
        help="uniform,proportional,greedy_marginal,clear,oracle",
    )
    bench.add_argument("--estimator", default="prior", help="curve estimator for clear and proportional")
    bench.add_argument("--mode", type=_names, default=["batch"], help="batch,online")
    bench.add_argument(
        "--streams", type=_names, default=["uniform"], help="online traffic: uniform,easy,hard,u-shaped,bursty"
    )
    bench.add_argument("--max-tokens", type=int, default=None, help="cap on any single query")
    bench.add_argument("--synthetic", type=int, default=2000, help="synthetic queries when no --train (2000)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--json", help="write one record per cell to this JSON file")
    bench.add_argument("--plot", help="write the Pareto chart to this PNG file (needs matplotlib)")
    bench.set_defaults(run=_bench)

    speed = commands.add_parser("bench-speed", help="time the allocator at several sizes, side by side")
    speed.add_argument("--sizes", type=_int_list, default=[10_000, 100_000])
    speed.add_argument("--repeats", type=int, default=3)
    speed.set_defaults(run=_bench_speed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
