"""Ledger throughput: reserve+commit pairs per second per backend, one client and concurrent, side by side.

    python -m clear_integrations.bench.ledger_bench --pairs 20000 --sqlite-pairs 2000 --clients 8
    python -m clear_integrations.bench.ledger_bench --url memory:// --url sqlite:////tmp/b.db --url redis://127.0.0.1:6379/15

Every pair is ``reserve(scope, 100)`` then ``commit(reservation, 60)`` on a tenant with a hard budget and
a session, so the budget check, the two-account hold and the event log are all exercised. "threads" runs
``clients`` threads on one sync ledger; "async" runs ``clients`` asyncio tasks on one async ledger.
The SQLite figures are durable pairs (WAL, synchronous=FULL: two fsyncs per pair).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from ..errors import ClearError
from ..ledger import Budget, open_async_ledger, open_ledger
from ..ledger.urls import parse_ledger_url

__all__ = ["main", "run_ledger_bench"]

_TOKENS, _USED = 100, 60
_WARM_UP = 50


def _prefix() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}:"


def _tenant() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}"


def _cleanup(url: str, prefix: str) -> None:
    if parse_ledger_url(url).kind != "redis":
        return
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])
    client.close()


def _threads(url: str, prefix: str, pairs: int, clients: int) -> tuple[float, float]:
    """``(pairs/s, CPU seconds per pair)`` of ``clients`` threads on one sync ledger (after a warm-up)."""
    ledger = open_ledger(url, prefix=prefix)
    tenant = _tenant()
    ledger.set_budget(tenant, Budget(10**12))
    for _ in range(_WARM_UP):
        ledger.commit(ledger.reserve(f"{tenant}/warm-up", _TOKENS), _USED)
    per_client = max(1, pairs // clients)
    barrier = threading.Barrier(clients + 1)

    def work(index: int) -> None:
        scope = f"{tenant}/s{index}"
        barrier.wait()
        for _ in range(per_client):
            ledger.commit(ledger.reserve(scope, _TOKENS), _USED)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start, cpu = time.perf_counter(), time.process_time()
    for worker in workers:
        worker.join()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert ledger.balance(tenant).spent == (per_client * clients + _WARM_UP) * _USED
    ledger.close()
    return per_client * clients / elapsed, cpu / (per_client * clients)


async def _tasks(url: str, prefix: str, pairs: int, clients: int) -> tuple[float, float]:
    """``(pairs/s, CPU seconds per pair)`` of ``clients`` asyncio tasks on one async ledger."""
    per_client = max(1, pairs // clients)
    async with open_async_ledger(url, prefix=prefix) as ledger:
        tenant = _tenant()
        await ledger.set_budget(tenant, Budget(10**12))
        for _ in range(_WARM_UP):
            await ledger.commit(await ledger.reserve(f"{tenant}/warm-up", _TOKENS), _USED)

        async def work(index: int) -> None:
            scope = f"{tenant}/a{index}"
            for _ in range(per_client):
                await ledger.commit(await ledger.reserve(scope, _TOKENS), _USED)

        start, cpu = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as group:
            for index in range(clients):
                group.start_soon(work, index)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert (await ledger.balance(tenant)).spent == (per_client * clients + _WARM_UP) * _USED
    return per_client * clients / elapsed, cpu / (per_client * clients)


def _safe(url: str) -> str:
    return url.split("@")[-1] if "@" in url else url


def _fsync_ms(path: Path, samples: int = 50) -> float:
    """Median latency of a small write + fsync in ``path``'s folder: the floor of one durable SQLite step."""
    probe = path.parent / f".fsync-probe-{uuid.uuid4().hex[:8]}"
    times = []
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(samples):
            start = time.perf_counter()
            os.write(fd, b"x" * 512)
            os.fsync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        probe.unlink()
    return statistics.median(times) * 1e3


def _round_trip_us(url: str, samples: int = 2000) -> float:
    """Mean PING round trip on one connection: the floor of one Redis step (a pair makes two)."""
    import redis

    client = redis.Redis.from_url(url)
    client.ping()
    start = time.perf_counter()
    for _ in range(samples):
        client.ping()
    elapsed = time.perf_counter() - start
    client.close()
    return elapsed / samples * 1e6


def _context(url: str) -> str:
    parsed = parse_ledger_url(url)
    if parsed.kind == "sqlite":
        return f"fsync {_fsync_ms(Path(parsed.location).resolve()):.2f} ms"
    if parsed.kind == "redis":
        return f"PING round trip {_round_trip_us(url):.0f} us"
    return ""


def run_ledger_bench(urls: list[str], pairs: int, clients: int, *, repeat: int = 3) -> list[dict[str, Any]]:
    """Measure reserve+commit pairs/s on every URL: one client, ``clients`` threads, ``clients`` async tasks.

    Each figure is the best of ``repeat`` runs (the machine is shared; the best run is the least disturbed).
    Returns one row per (url, mode): backend, url, mode, clients, pairs, pairs_per_s, ``vs_single`` (the
    ratio to the single-client figure of the same URL, measured in the same run), ``cpu_us_per_pair``
    (this process's CPU time per pair in the timed part, all threads: what the ledger costs the caller,
    whatever else runs on the machine) and ``context`` (the store's floor: fsync latency for SQLite, PING round trip
    for Redis, measured in the same run).
    """
    rows: list[dict[str, Any]] = []
    for url in urls:
        kind = parse_ledger_url(url).kind
        context = _context(url)
        single = 0.0
        for mode, count in (("single", 1), ("threads", clients), ("async", clients)):
            best, cpu = 0.0, 0.0
            for _ in range(max(1, repeat)):
                prefix = _prefix()
                try:
                    if mode == "async":
                        rate, cpu_per_pair = anyio.run(_tasks, url, prefix, pairs, count)
                    else:
                        rate, cpu_per_pair = _threads(url, prefix, pairs, count)
                finally:
                    _cleanup(url, prefix)
                if rate > best:
                    best, cpu = rate, cpu_per_pair
            single = best if mode == "single" else single
            rows.append(
                {
                    "backend": kind,
                    "url": _safe(url),
                    "mode": mode,
                    "clients": count,
                    "pairs": max(1, pairs // count) * count,
                    "pairs_per_s": round(best, 1),
                    "vs_single": round(best / single, 2) if single else None,
                    "cpu_us_per_pair": round(cpu * 1e6, 1),
                    "context": context,
                }
            )
    return rows


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of :func:`run_ledger_bench` rows."""
    lines = [
        f"{'backend':<8} {'mode':<8} {'clients':>7} {'pairs':>8} {'pairs/s':>10} {'vs single':>9}"
        f" {'cpu us/pair':>11}  context"
    ]
    for row in rows:
        ratio = f"{row['vs_single']:.2f}x" if row["vs_single"] is not None else "-"
        lines.append(
            f"{row['backend']:<8} {row['mode']:<8} {row['clients']:>7} {row['pairs']:>8} "
            f"{row['pairs_per_s']:>10,.0f} {ratio:>9} {row['cpu_us_per_pair']:>11.1f}"
            f"  {row['context'] if row['mode'] == 'single' else ''}"
        )
    return "\n".join(lines)


def _default_urls(folder: str) -> list[str]:
    urls = ["memory://", f"sqlite:///{Path(folder) / 'ledger-bench.db'}"]
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        open_ledger(redis_url).close()
    except (ClearError, ImportError):
        return urls
    return [*urls, redis_url]


def main(argv: list[str] | None = None) -> int:
    """``bench-ledger``: print the table (and write JSON with ``--json``). Returns the exit status."""
    parser = argparse.ArgumentParser(prog="clear-integrations bench-ledger", description=__doc__.splitlines()[0])
    parser.add_argument("--url", action="append", help="ledger URL (repeat); default: memory, a temp SQLite, Redis")
    parser.add_argument("--pairs", type=int, default=20_000, help="reserve+commit pairs per measurement")
    parser.add_argument("--sqlite-pairs", type=int, default=None, help="pairs for SQLite URLs (default: --pairs)")
    parser.add_argument("--clients", type=int, default=8, help="threads / async tasks in the concurrent runs")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is reported")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.clients < 1:
        parser.error("--pairs and --clients must be >= 1")
    with tempfile.TemporaryDirectory() as folder:
        urls = args.url or _default_urls(folder)
        rows: list[dict[str, Any]] = []
        for url in urls:
            sqlite = parse_ledger_url(url).kind == "sqlite"
            pairs = args.sqlite_pairs if sqlite and args.sqlite_pairs else args.pairs
            rows.extend(run_ledger_bench([url], pairs, args.clients, repeat=args.repeat))
    print(format_rows(rows))
    print("\nurls: " + ", ".join(dict.fromkeys(row["url"] for row in rows)))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
