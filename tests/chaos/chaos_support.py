"""Helpers of the fault-injection tests: short load, deployments and the exactly-once check.

The scenarios themselves live in benchmarks/chaos.py, which also prints the
figures of docs/reliability.md. These tests run short versions of them and
check what must hold whatever the timing: no request without a reply, no
operation with two different replies, no lease with a wrong secret.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

# The scenarios are importable as benchmarks.* from the repository root.
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.chaos import LoadShape  # noqa: E402
from benchmarks.chaos_deployment import APP_ID, ChaosDeployment  # noqa: E402
from benchmarks.chaos_load import Report  # noqa: E402

#: Errors that must never appear: each means a wrong or unreadable lease.
WRONG_ANSWERS = {"wrong_secret", "unopenable_lease", "internal_error"}

#: Short load for the tests: 5 requests per second for 15 s, the fault after 4 s.
TEST_SHAPE = LoadShape(rate=5.0, duration_s=15.0, fault_after_s=4.0, wait_s=30.0, broker_down_s=10.0)


def start_deployment(bootstrap: str, redis_url: str, secrets: int = 3) -> ChaosDeployment:
    """Start a deployment with `secrets` pooled 2-of-3 secrets named chaos/secret-N."""
    deployment = ChaosDeployment(bootstrap, redis_url)

    async def start() -> None:
        await deployment.start()
        for i in range(secrets):
            await deployment.put(f"{APP_ID}/secret-{i}")

    try:
        asyncio.run(start())
    except BaseException:
        asyncio.run(deployment.stop())
        raise
    return deployment


def check_exactly_once(report: Report) -> None:
    """Check that every request got exactly one final reply and no lease was wrong."""
    assert report.sent > 0, "the load sent no request"
    assert report.lost == 0, f"{report.lost} of {report.sent} requests got no reply within the client's timeout"
    assert report.duplicates == 0, f"{report.duplicates} operations got two different replies"
    wrong = sorted(set(report.errors) & WRONG_ANSWERS)
    assert not wrong, f"wrong answers: {wrong} ({report.error_text()})"
    assert report.leases > 0, f"no lease was delivered ({report.error_text()})"
