"""A holder started as a real process, driven over a real Kafka broker.

The test plays every other part: the controlling domain that stores a sealed
fragment, the authorizer that sends fetch commands with the fragment key
sealed to the holder, and the reassembler that opens the reply.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from schemas.audit import DeadLetter
from schemas.holders import DestroyFragment, HolderAck, HolderHeartbeat, HolderStatus, StoreFragment
from schemas.operations import FetchCommand, FragmentResponse
from schemas.sealed import fragment_key_info, fragment_transit_info
from shardbus.crypto import aead, envelope
from shardbus.crypto.keys import MasterKey
from shardbus.store.mapping import BACKUP_SLOT

from holders.hardening import HOLDER_DATA_BYTES, HOLDER_FILE_BYTES, HOLDER_OPEN_FILES

from holder_harness import ROOT, HolderUnderTest, read_limits, read_status

pytestmark = pytest.mark.integration

SECRET = "db/password"
VERSION = 3
INDEX = 2
FRAGMENT = b"fragment bytes for index 2"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Domain:
    """The parts a test plays: master key holder, authorizer and reassembler."""

    def __init__(self, holder: HolderUnderTest) -> None:
        self.holder = holder
        self.master_key = MasterKey.generate()
        self.reassembler = envelope.EnvelopeKeyPair.generate()

    def fragment_key(self, slot: str) -> bytes:
        return self.master_key.fragment_key(SECRET, VERSION, INDEX, slot)

    def store(self, slot: str = "", *, seal_for: str | None = None, fragment: bytes = FRAGMENT) -> StoreFragment:
        """Return a StoreFragment whose blob is sealed for `seal_for` (default: the slot it names)."""
        sealed_slot = seal_for or slot or self.holder.holder_id
        blob = aead.seal_fragment(
            self.fragment_key(sealed_slot), fragment, secret_id=SECRET, version=VERSION, index=INDEX,
            holder_id=sealed_slot, key_version=self.master_key.version,
        )
        return StoreFragment(
            holder_id=self.holder.holder_id, secret_name=SECRET, secret_version=VERSION, fragment_index=INDEX,
            key_version=self.master_key.version, sealed_fragment=blob, request_id=uuid.uuid4().hex,
            key_slot=slot,
        )

    def fetch(self, heartbeat: HolderHeartbeat, *, slot: str | None = None, deadline_ms: int | None = None,
              sealed_key: bytes | None = None, operation_id: str | None = None) -> FetchCommand:
        operation_id = operation_id or uuid.uuid4().hex
        if sealed_key is None:
            holder_key = envelope.PublicKey.from_bytes(heartbeat.kem, heartbeat.public_key)
            sealed_key = envelope.seal(
                holder_key, self.fragment_key(slot or self.holder.holder_id),
                info=fragment_key_info(operation_id, self.holder.holder_id, INDEX),
            )
        return FetchCommand(
            operation_id=operation_id, holder_id=self.holder.holder_id, secret_name=SECRET,
            secret_version=VERSION, fragment_index=INDEX, sealed_fragment_key=sealed_key,
            reassembler_public_key=self.reassembler.public_bytes(), reassembler_kem="x25519",
            deadline_ms=deadline_ms if deadline_ms is not None else _now_ms() + 60_000,
        )

    async def response(self, command: FetchCommand) -> FragmentResponse:
        return await self.holder.inbox.wait_for(  # type: ignore[return-value]
            FragmentResponse, lambda m: m.operation_id == command.operation_id
        )

    async def ack(self, command: StoreFragment | DestroyFragment) -> HolderAck:
        return await self.holder.inbox.wait_for(  # type: ignore[return-value]
            HolderAck, lambda m: m.request_id == command.request_id
        )


async def test_heartbeat_carries_public_key(holder: HolderUnderTest) -> None:
    heartbeat = await holder.first_heartbeat()

    assert heartbeat.holder_id == holder.holder_id
    assert heartbeat.pid == holder.process.pid
    assert heartbeat.kem == "x25519"
    assert len(heartbeat.public_key) == 32
    assert heartbeat.status == HolderStatus.READY
    assert heartbeat.loaded == ()


async def test_fetch_returns_fragment_sealed_to_reassembler(holder: HolderUnderTest) -> None:
    domain = Domain(holder)
    heartbeat = await holder.first_heartbeat()
    store = domain.store()
    await holder.send(store)
    ack = await domain.ack(store)
    assert ack.ok

    fetch = domain.fetch(heartbeat)
    await holder.send(fetch)
    response = await domain.response(fetch)

    assert response.error == ""
    assert response.fragment_index == INDEX
    assert response.holder_id == holder.holder_id
    info = fragment_transit_info(fetch.operation_id, holder.holder_id, INDEX)
    assert envelope.open_(domain.reassembler, response.sealed_fragment, info=info) == FRAGMENT


async def test_heartbeat_lists_loaded_fragment(holder: HolderUnderTest) -> None:
    domain = Domain(holder)
    store = domain.store()
    await holder.send(store)
    await domain.ack(store)

    heartbeat = await holder.inbox.wait_for(HolderHeartbeat, lambda m: len(m.loaded) == 1)

    loaded = heartbeat.loaded[0]
    assert (loaded.secret_name, loaded.secret_version, loaded.fragment_index) == (SECRET, VERSION, INDEX)


async def test_fetch_from_backup_slot(holder: HolderUnderTest) -> None:
    domain = Domain(holder)
    heartbeat = await holder.first_heartbeat()
    store = domain.store(BACKUP_SLOT)
    await holder.send(store)
    await domain.ack(store)

    fetch = domain.fetch(heartbeat, slot=BACKUP_SLOT)
    await holder.send(fetch)
    response = await domain.response(fetch)

    assert response.error == ""
    info = fragment_transit_info(fetch.operation_id, holder.holder_id, INDEX)
    assert envelope.open_(domain.reassembler, response.sealed_fragment, info=info) == FRAGMENT


async def test_fetch_not_loaded(holder: HolderUnderTest) -> None:
    domain = Domain(holder)
    heartbeat = await holder.first_heartbeat()

    fetch = domain.fetch(heartbeat)
    await holder.send(fetch)
    response = await domain.response(fetch)

    assert response.error == "not_loaded"
    assert response.sealed_fragment == b""


async def test_fetch_after_destroy_not_loaded(holder: HolderUnderTest) -> None:
    domain = Domain(holder)
    heartbeat = await holder.first_heartbeat()
    store = domain.store()
    await holder.send(store)
    await domain.ack(store)
    destroy = DestroyFragment(holder.holder_id, SECRET, 0, uuid.uuid4().hex)
    await holder.send(destroy)
    assert (await domain.ack(destroy)).ok

    fetch = domain.fetch(heartbeat)
    await holder.send(fetch)
    response = await domain.response(fetch)

    assert response.error == "not_loaded"


async def test_fetch_with_wrong_slot_key_fails(holder: HolderUnderTest) -> None:
    domain = Domain(holder)
    heartbeat = await holder.first_heartbeat()
    store = domain.store()  # Sealed for the holder's own slot.
    await holder.send(store)
    await domain.ack(store)

    fetch = domain.fetch(heartbeat, slot=BACKUP_SLOT)
    await holder.send(fetch)
    response = await domain.response(fetch)

    assert response.error == "open_failed"
    assert response.sealed_fragment == b""


async def test_store_with_wrong_slot_fails(holder: HolderUnderTest) -> None:
    domain = Domain(holder)
    heartbeat = await holder.first_heartbeat()
    # The blob is sealed for the holder's slot, but the store names "backup",
    # so the holder binds the wrong id and the tag does not verify.
    store = domain.store(BACKUP_SLOT, seal_for=holder.holder_id)
    await holder.send(store)
    await domain.ack(store)

    fetch = domain.fetch(heartbeat, slot=BACKUP_SLOT)
    await holder.send(fetch)
    response = await domain.response(fetch)

    assert response.error == "open_failed"


async def test_fetch_with_tampered_key_fails(holder: HolderUnderTest) -> None:
    domain = Domain(holder)
    heartbeat = await holder.first_heartbeat()
    store = domain.store()
    await holder.send(store)
    await domain.ack(store)
    good = domain.fetch(heartbeat)
    tampered = bytearray(good.sealed_fragment_key)
    tampered[-1] ^= 0x01

    fetch = domain.fetch(heartbeat, sealed_key=bytes(tampered))
    await holder.send(fetch)
    response = await domain.response(fetch)

    assert response.error == "open_failed"


async def test_fetch_with_key_for_other_operation_fails(holder: HolderUnderTest) -> None:
    domain = Domain(holder)
    heartbeat = await holder.first_heartbeat()
    store = domain.store()
    await holder.send(store)
    await domain.ack(store)
    earlier = domain.fetch(heartbeat)

    # A fragment key replayed from another operation's fetch does not open.
    fetch = domain.fetch(heartbeat, sealed_key=earlier.sealed_fragment_key)
    await holder.send(fetch)
    response = await domain.response(fetch)

    assert response.error == "open_failed"


async def test_fetch_after_deadline_expired(holder: HolderUnderTest) -> None:
    domain = Domain(holder)
    heartbeat = await holder.first_heartbeat()
    store = domain.store()
    await holder.send(store)
    await domain.ack(store)

    fetch = domain.fetch(heartbeat, deadline_ms=_now_ms() - 1)
    await holder.send(fetch)
    response = await domain.response(fetch)

    assert response.error == "expired"
    assert response.sealed_fragment == b""


async def test_malformed_record_dead_lettered(holder: HolderUnderTest) -> None:
    domain = Domain(holder)
    heartbeat = await holder.first_heartbeat()
    garbage = b"\x81\xa1v\x01 not a command"
    await holder.send(garbage)

    letter = await holder.inbox.wait_for(DeadLetter)

    assert letter.source_topic == holder.topics.holder(holder.holder_id)
    assert letter.payload_size == len(garbage)
    assert letter.payload_sha256 == hashlib.sha256(garbage).digest()
    assert letter.reason

    fetch = domain.fetch(heartbeat)
    await holder.send(fetch)
    response = await domain.response(fetch)
    assert response.error == "not_loaded"


async def test_command_for_other_holder_dead_lettered(holder: HolderUnderTest) -> None:
    domain = Domain(holder)
    heartbeat = await holder.first_heartbeat()
    fetch = domain.fetch(heartbeat)
    misaddressed = FetchCommand(**{**{f: getattr(fetch, f) for f in fetch.__dataclass_fields__},
                                   "holder_id": "someone-else"})
    await holder.send(misaddressed)

    letter = await holder.inbox.wait_for(DeadLetter)

    assert "holder_id" in letter.reason
    assert not [m for m in holder.inbox.messages if isinstance(m, FragmentResponse)]


async def test_sigterm_stops_holder(holder: HolderUnderTest) -> None:
    await holder.first_heartbeat()

    holder.process.terminate()
    code = holder.process.wait(30)

    assert code == 0
    draining = await holder.inbox.wait_for(HolderHeartbeat, lambda m: m.status == HolderStatus.DRAINING)
    assert draining.loaded == ()


def _read_environ_without_privileges(pid: int) -> int:
    """Return the exit code of a child that, with every capability but CAP_IPC_LOCK dropped, reads /proc/PID/environ."""
    script = (
        "import sys\n"
        "from holders.hardening import drop_capabilities\n"
        "drop_capabilities()\n"
        f"try:\n    open('/proc/{pid}/environ', 'rb').read()\n"
        "except PermissionError:\n    sys.exit(3)\n"
    )
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=30, check=False).returncode


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux only")
async def test_holder_process_not_dumpable(holder: HolderUnderTest) -> None:
    await holder.first_heartbeat()
    pid = holder.process.pid

    assert read_limits(pid)["Max core file size"] == ("0", "0")
    # A control process of the same user, with the same capabilities but
    # still dumpable, is readable, which shows the check can tell them apart.
    control = subprocess.Popen(
        [sys.executable, "-c", "from holders.hardening import drop_capabilities; drop_capabilities(); "
                               "import time; time.sleep(60)"],
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while _read_environ_without_privileges(control.pid) != 0:
            assert time.monotonic() < deadline, "the control process never became readable"
        assert _read_environ_without_privileges(pid) == 3
    finally:
        control.kill()
        control.wait()



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux only")
async def test_holder_process_resource_limits(holder: HolderUnderTest) -> None:
    await holder.first_heartbeat()
    pid = holder.process.pid

    limits = read_limits(pid)
    status = read_status(pid)
    applied = next(line for line in holder.log_path.read_text().splitlines() if "hardening applied:" in line)

    assert limits["Max core file size"] == ("0", "0")
    assert limits["Max open files"] == (str(HOLDER_OPEN_FILES), str(HOLDER_OPEN_FILES))
    assert limits["Max data size"] == (str(HOLDER_DATA_BYTES), str(HOLDER_DATA_BYTES))
    assert limits["Max file size"] == (str(HOLDER_FILE_BYTES), str(HOLDER_FILE_BYTES))
    assert int(status["VmData"].split()[0]) * 1024 < HOLDER_DATA_BYTES
    # SIGXFSZ is ignored, so a write past the file size limit fails instead of killing the holder.
    assert int(status["SigIgn"], 16) & (1 << (signal.SIGXFSZ - 1))
    # The data limit leaves mlockall working: where the holder may lock
    # memory (CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK), its pages are locked.
    if "memory locked" in applied:
        assert int(status["VmLck"].split()[0]) > 0
    assert "data size limited" in applied
    assert "file size limited" in applied


async def test_largest_fragment_fits_limits(holder: HolderUnderTest) -> None:
    # A 512 KiB secret, the largest that `shardbus secret put` accepts, has
    # fragments of up to 512 KiB.
    fragment = os.urandom(512 * 1024)
    domain = Domain(holder)
    heartbeat = await holder.first_heartbeat()
    store = domain.store(fragment=fragment)
    await holder.send(store)
    ack = await domain.ack(store)
    assert ack.ok

    fetch = domain.fetch(heartbeat)
    await holder.send(fetch)
    response = await domain.response(fetch)

    assert response.error == ""
    info = fragment_transit_info(fetch.operation_id, holder.holder_id, INDEX)
    assert envelope.open_(domain.reassembler, response.sealed_fragment, info=info) == fragment
    assert holder.process.poll() is None
    assert int(read_status(holder.process.pid)["VmData"].split()[0]) * 1024 < HOLDER_DATA_BYTES
