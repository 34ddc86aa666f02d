"""Taking over the holders of an earlier provisioner after a restart.

Holders outlive the provisioner (see ``provisioner.process``). A provisioner
that starts for a prefix first lists every holder the registry records as
warming, in the pool, assigned or per-operation, and the backend adopts each
one by the process id the registry recorded:

- a ready holder in the pool goes back into the warm pool;
- an assigned or per-operation holder is watched again, and keeps serving
  the fragments it has;
- a holder whose process is gone is reported failed, so that its fragment
  is restored on a new holder (see ``provisioner.repair``);
- a holder still warming is stopped, because its key never reached the
  registry and the pipe that would carry it closed with the old provisioner.

A backend that cannot adopt (``can_adopt`` False) finds no holder running,
so every recorded holder is reported failed and repaired.

NOTE: this assumes one provisioner per prefix. Two provisioners started for
one prefix would both adopt the same holders.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from provisioner.backend import HolderBackend
from provisioner.pool import ReadyHolder
from provisioner.registry import HolderRecord, HolderRegistry, HolderState

log = logging.getLogger(__name__)

#: The registry states of holders that may still run, in the order they are adopted.
LIVE_STATES = (HolderState.ASSIGNED, HolderState.PER_OPERATION, HolderState.POOL, HolderState.WARMING)


@dataclass
class Adoption:
    """The holders of an earlier provisioner, sorted by what the new one does with them."""

    #: Ready, empty holders that go back into the pool.
    pooled: list[ReadyHolder] = field(default_factory=list)
    #: Assigned and per-operation holders that run and are watched again.
    in_use: list[HolderRecord] = field(default_factory=list)
    #: Holders recorded as live whose process no longer runs.
    gone: list[HolderRecord] = field(default_factory=list)
    #: Adopted holders that never became ready, which the caller stops.
    unready: list[str] = field(default_factory=list)

    @property
    def adopted_count(self) -> int:
        return len(self.pooled) + len(self.in_use) + len(self.unready)


async def adopt_running(registry: HolderRegistry, backend: HolderBackend) -> Adoption:
    """Adopt every holder the registry records as live and the backend finds running."""
    adoption = Adoption()
    for state in LIVE_STATES:
        for holder_id in await registry.ids_in_state(state):
            record = await registry.get(holder_id)
            if record is None or record.state is not state or backend.status(holder_id) is not None:
                continue  # Moved on since it was listed, or started by this provisioner.
            status = backend.adopt(holder_id, record.pid, record.public_key, record.kem)
            if status is None or not status.alive:
                adoption.gone.append(record)
            elif state is HolderState.WARMING or not record.public_key:
                adoption.unready.append(holder_id)
            elif state is HolderState.POOL:
                adoption.pooled.append(ReadyHolder(holder_id, record.public_key, record.kem))
            else:
                adoption.in_use.append(record)
    if adoption.adopted_count or adoption.gone:
        log.info(
            "adopted %d holders of an earlier provisioner (%d in the pool, %d in use, %d never ready); "
            "%d recorded holders no longer run",
            adoption.adopted_count, len(adoption.pooled), len(adoption.in_use), len(adoption.unready),
            len(adoption.gone),
        )
    return adoption
