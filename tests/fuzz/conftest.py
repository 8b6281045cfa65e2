"""Prints the fuzz suite's summary line (tests/fuzz/driver.py SUMMARY) with pytest's own summary."""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.fuzz.driver import SUMMARY

    for line in SUMMARY:
        terminalreporter.write_line(line)
