"""The ``clear-integrations`` command: demo, bench, calibrate, ledger."""

from .main import main

__all__ = ["main"]
