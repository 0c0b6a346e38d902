"""SQLite under stress: a write lock held by another process (plain reads do not queue behind it), and a full
disk (the ledger recovers as soon as space is freed)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clear_integrations.errors import LedgerUnavailable
from clear_integrations.ledger import Budget, Ledger, open_ledger
from clear_integrations.ledger.sqlite import SQLiteStore

from .conftest import FakeClock


def test_reads_do_not_wait_for_the_write_lock(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "locked.db"
    ledger = Ledger(SQLiteStore(f"sqlite:///{path}", str(path), timeout=10.0), clock=clock)
    ledger.set_budget("acme", Budget(1000))
    ledger.commit(ledger.reserve("acme", 100), 60)
    ledger.set_state("p", {"price": 1.0}, expected_version=0)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    writer = threading.Thread(target=lambda: ledger.commit(ledger.reserve("acme", 10), 10))
    writer.start()  # queues for the lock (up to busy_timeout)
    time.sleep(0.2)
    started = time.monotonic()
    assert ledger.get_budget("acme") == Budget(1000)
    assert ledger.usage("acme").total == 60
    assert len(ledger.events("acme")) == 3
    assert ledger.get_state("p") == ({"price": 1.0}, 1)
    waited = time.monotonic() - started
    assert writer.is_alive()  # still waiting for the lock
    other.execute("COMMIT")
    writer.join(10)
    assert waited < 1.0, waited
    assert ledger.usage("acme").total == 70  # the reader sees the writer's commit
    other.close()
    ledger.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs mounted for the test (needs root and mount rights: skipped with the reason otherwise)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode(errors='replace').strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while True:
            os.write(descriptor, b"x" * 65536)
    with contextlib.suppress(OSError):
        while True:
            os.write(descriptor, b"x" * 512)
    os.close(descriptor)
    return filler


@pytest.mark.slow
@pytest.mark.parametrize("freed", [1_000_000, 3_000_000])
def test_a_full_disk_recovers_once_space_is_freed(small_disk: Path, clock: FakeClock, freed: int) -> None:
    """With less room than SQLite's 4 MB WAL, the WAL used to eat every byte freed, and the ledger never recovered."""
    url = f"sqlite:///{small_disk / 'ledger.db'}"
    with open_ledger(url, clock=clock) as ledger:
        ledger.set_budget("acme", Budget(10**11))
    ledger = open_ledger(url, clock=clock)
    filler = _fill(small_disk)

    def until_full() -> None:
        for _ in range(100):
            ledger.commit(ledger.reserve("acme", 10), 5)

    with pytest.raises(LedgerUnavailable, match="full"):
        until_full()
    spent = ledger.usage("acme").total  # reads still answer
    os.truncate(filler, filler.stat().st_size - freed)
    for _ in range(2000):
        ledger.commit(ledger.reserve("acme", 10), 5)
    assert ledger.usage("acme").total == spent + 2000 * 5
    ledger.close()
