"""An open-loop request driver and the latency summary both benchmarks print.

Open loop means the send times are fixed by the clock before the run starts:
request i is due at ``start + i / rate`` whatever happened to earlier
requests, so a slow reply never delays the next send. Latency is measured
from the due time, not from the moment the task actually ran, so a sender
that falls behind shows up as latency instead of hiding it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Results:
    """What one run at one rate produced."""

    rate: float
    duration_s: float
    sent: int = 0
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    #: The largest delay between a request's due time and the moment its task started.
    max_send_lag_s: float = 0.0

    @property
    def received(self) -> int:
        return len(self.latencies_s)

    def percentile_ms(self, fraction: float) -> float:
        """Return the nearest-rank percentile of the latencies, in milliseconds (nan if none)."""
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        rank = max(0, min(len(ordered) - 1, int(round(fraction * len(ordered) + 0.5)) - 1))
        return ordered[rank] * 1000

    @property
    def max_ms(self) -> float:
        return max(self.latencies_s) * 1000 if self.latencies_s else float("nan")

    def error_text(self) -> str:
        return ", ".join(f"{kind} {count}" for kind, count in sorted(self.errors.items())) or "none"


Fire = Callable[[int, float, Results], Awaitable[None]]


async def run_open_loop(rate: float, duration_s: float, fire: Fire, *, drain_s: float) -> Results:
    """Call ``fire(i, due, results)`` for each request at its due time, then wait up to `drain_s` for all.

    `fire` records its own outcome in `results`: a latency (``loop.time() -
    due``) or an error kind. Requests still running after the drain count as
    the error ``unfinished``.
    """
    if rate <= 0 or duration_s <= 0:
        raise ValueError(f"rate and duration must be positive, got {rate}/s for {duration_s} s")
    loop = asyncio.get_running_loop()
    results = Results(rate=rate, duration_s=duration_s)
    total = int(rate * duration_s)
    tasks: set[asyncio.Task[None]] = set()
    start = loop.time() + 0.05
    for i in range(total):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        results.max_send_lag_s = max(results.max_send_lag_s, loop.time() - due)
        task = asyncio.create_task(fire(i, due, results))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        results.sent += 1
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=drain_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            results.errors["unfinished"] += len(pending)
    return results
