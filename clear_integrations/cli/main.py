"""The ``clear-integrations`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._version import __version__

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
    from ..bench.curvesets import load_curves, synthetic_curves
    from ..bench.replay import replay
    from ..bench.report import format_table, write_json, write_plot

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
    from ..bench.speed import format_speed, measure_speed

    print(format_speed(measure_speed(args.sizes, repeats=args.repeats)))
    return 0


def _bench_overhead(args: argparse.Namespace) -> int:
    from ..bench.overhead import format_overhead, langchain_overhead, llama_index_overhead

    latency = args.latency / 1000
    print(
        format_overhead(
            [langchain_overhead(args.calls, latency=latency), llama_index_overhead(args.calls, latency=latency)]
        )
    )
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from ..calibration.calibrate import calibrate, load_generator
    from ..calibration.problems import gsm8k_sample, load_problems
    from ..errors import ClearError

    try:
        if args.problems == "gsm8k-sample":
            problems = gsm8k_sample(args.limit)
        else:
            problems = load_problems(args.problems, kind=args.kind, limit=args.limit)
        generator = load_generator(args.model, temperature=args.temperature, n_threads=args.threads)
        print(f"calibrating {len(problems)} problems x {len(args.budgets)} budgets x {args.samples} samples")
        curves = calibrate(
            problems,
            generator,
            budgets=args.budgets,
            samples=args.samples,
            out=args.out,
            progress=_progress if sys.stderr.isatty() else None,
            resume=not args.restart,
            seed=args.seed,
            nested=not args.capped,
        )
    except ClearError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished problems are in {args.out}; rerun the same command to resume", file=sys.stderr)
        return 130
    mean = curves.curves.matrix.mean(axis=0)
    print("budget   " + " ".join(f"{b:>6d}" for b in curves.curves.budgets.tolist()))
    print("accuracy " + " ".join(f"{a:6.3f}" for a in mean.tolist()))
    print(f"wrote {args.out} ({len(curves)} curves)")
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

    overhead = commands.add_parser(
        "bench-overhead", help="what budgeting adds per call: wrapped vs bare, LangChain and LlamaIndex"
    )
    overhead.add_argument("--calls", type=int, default=1000, help="invokes of each chain (default 1000)")
    overhead.add_argument("--latency", type=float, default=1.0, help="the fake model's latency in ms (default 1)")
    overhead.set_defaults(run=_bench_overhead)

    calib = commands.add_parser("calibrate", help="measure accuracy-at-budget curves of a model on a problem set")
    calib.add_argument(
        "--problems",
        default="gsm8k-sample",
        help="GSM8K or MATH-500 JSONL file, or 'gsm8k-sample' (20 shipped GSM8K test questions; default)",
    )
    calib.add_argument("--kind", choices=["gsm8k", "math"], help="problem format and grader (default: guessed)")
    calib.add_argument("--limit", type=int, default=None, help="use only the first N problems")
    calib.add_argument(
        "--model",
        default="local",
        help="'local' (SmolLM2 via llama.cpp; default), a .gguf path, langchain:MODULE:ATTR or llama-index:MODULE:ATTR",
    )
    calib.add_argument(
        "--budgets",
        type=_int_list,
        default=_int_list(DEFAULT_BUDGETS),
        help=f"token budgets to measure (default {DEFAULT_BUDGETS})",
    )
    calib.add_argument("--samples", type=int, default=8, help="answers per problem and budget (default 8)")
    calib.add_argument("--out", required=True, help="JSONL file to write (resumed if it exists)")
    calib.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the local model")
    calib.add_argument("--threads", type=int, default=2, help="llama.cpp threads for the local model (default 2)")
    calib.add_argument("--seed", type=int, default=0, help="sample s uses seed SEED+s (default 0)")
    calib.add_argument("--restart", action="store_true", help="overwrite --out instead of resuming")
    calib.add_argument(
        "--capped", action="store_true", help="one capped call per budget, even where one trace could be cut"
    )
    calib.set_defaults(run=_calibrate)

    from .demo import add_demo_command

    add_demo_command(commands)

    from .ledger import add_ledger_commands

    add_ledger_commands(commands)

    # Parsed by the ledger benchmark itself (see main()); listed here for --help.
    commands.add_parser("bench-ledger", help="reserve+commit pairs per second on each ledger backend, side by side")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench-ledger"]:
        from ..bench.ledger_bench import main as ledger_main

        return ledger_main(arguments[1:])
    args = _parser().parse_args(arguments)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
