"""Fixtures of the fault-injection tests: a deployment whose processes the tests kill."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

# chaos_support puts the repository root on sys.path, so it comes before benchmarks.
from chaos_support import start_deployment  # noqa: I001
from benchmarks.chaos_deployment import ChaosDeployment


@pytest.fixture(scope="module")
def chaos_deployment(kafka_bootstrap: str, redis_url: str) -> Iterator[ChaosDeployment]:
    """A deployment on the shared stack with three pooled 2-of-3 secrets, for one test module."""
    deployment = start_deployment(kafka_bootstrap, redis_url)
    try:
        yield deployment
    finally:
        asyncio.run(deployment.stop())
