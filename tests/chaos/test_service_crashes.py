"""Each shardbus process killed with SIGKILL under steady load: every request still gets one reply.

The services run as processes on the shared stack (see conftest.py). Each
test drives load, kills one process mid-load, starts it again at once, and
checks the replies of every request sent (benchmarks/chaos.py does the same
at a higher rate and prints the figures).
"""

from __future__ import annotations

import pytest

# chaos_support puts the repository root on sys.path, so it comes before benchmarks.
from chaos_support import TEST_SHAPE, check_exactly_once  # noqa: I001
from benchmarks.chaos import run_scenario

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_authorizer_killed_under_load(chaos_deployment) -> None:
    outcome = await run_scenario("authorizer", chaos_deployment, TEST_SHAPE)

    check_exactly_once(outcome.report)


async def test_reassembler_killed_under_load(chaos_deployment) -> None:
    outcome = await run_scenario("reassembler", chaos_deployment, TEST_SHAPE)

    check_exactly_once(outcome.report)


async def test_provisioner_killed_under_load(chaos_deployment) -> None:
    pids_before = await chaos_deployment.holder_pids()

    outcome = await run_scenario("provisioner", chaos_deployment, TEST_SHAPE)

    check_exactly_once(outcome.report)
    pids_after = await chaos_deployment.holder_pids()
    for holder_id, pid in pids_before.items():
        assert pids_after.get(holder_id) == pid, f"holder {holder_id} did not survive the provisioner's crash"


async def test_holder_killed_under_load(chaos_deployment) -> None:
    outcome = await run_scenario("holder", chaos_deployment, TEST_SHAPE)

    check_exactly_once(outcome.report)
    assert "replaced it" in outcome.detail, outcome.detail
