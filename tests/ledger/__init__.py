"""Tests of clear_integrations.ledger: one suite run on every backend."""
