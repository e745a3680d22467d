"""Options shared by the suites; pytest only reads ``pytest_addoption`` from the root conftest."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--target",
        default=os.environ.get("CODEGEN_E2E_TARGET", ""),
        help="Run tests/e2e against this running gateway (host:port) instead of a local "
        "cluster; tests that kill nodes are skipped. Env: CODEGEN_E2E_TARGET.",
    )
