"""One writer at a time per output: a lease with an owner, a heartbeat and an expiry.

    OUT/_lease.json   {owner: run id, token, command, host, pid, started_at, heartbeat_at, ttl_s, released}

A run takes the lease before it writes anything into the output and gives it back at the
end. The lease is created with create-if-absent and every later change (heartbeat, take
over, release) is a compare-and-swap on the version read (`Store.replace_if`: If-Match on
S3, a POSIX lock locally), so two drivers can never both believe they took it.

A second writer is told "output busy: run X since T" (exit status BUSY) or, with
`--wait`, waits for the lease. A lease whose heartbeat is older than its `ttl_s` belongs
to a dead (or cut off) driver and is taken over; on the same host a lease whose process
is gone is taken over at once. Expiry compares the holder's clock with the reader's:
keep clocks in sync (NTP) and `ttl_s` well above any skew.

The lease is for liveness and a clear message; correctness does not rest on it alone: the
manifest switch is a compare-and-swap on the version (pipeline.io.manifest), so a driver
that lost its lease without noticing cannot overwrite what the new holder published.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Optional

from pydantic import BaseModel, ConfigDict

from pipeline.errors import ExitStatus, PipelineError
from pipeline.io.store import Store

logger = logging.getLogger(__name__)

LEASE = "_lease.json"


class OutputBusy(PipelineError):
    """Another live writer holds the output."""

    exit_status = ExitStatus.BUSY


class LeaseLost(PipelineError):
    """This run's lease was taken over (its heartbeats stopped for longer than the ttl)."""


class LeaseInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    owner: str
    token: str
    command: str = "run"
    host: str = ""
    pid: int = 0
    pid_started: float = 0.0
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    ttl_s: float = 60.0
    released: bool = False

    def describe(self, now: float) -> str:
        since = dt.datetime.fromtimestamp(self.started_at).isoformat(timespec="seconds")
        return (
            f"{self.command} {self.owner} since {since} (host {self.host}, pid {self.pid}, "
            f"last heartbeat {now - self.heartbeat_at:.0f}s ago)"
        )


def _process_started(pid: int) -> float:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - gone, or no psutil
        return 0.0


def _alive(info: LeaseInfo) -> bool:
    """On this host: is the holder's process still the one that took the lease?"""
    started = _process_started(info.pid)
    return started > 0 and (not info.pid_started or abs(started - info.pid_started) < 1.0)


class WriterLease:
    """`with WriterLease(store, owner=run_id).acquire():` ... `lease.check()` before publishing."""

    def __init__(self, store: Store, owner: str, command: str = "run", ttl_s: float = 60.0,
                 wait: bool = False, poll_s: float = 2.0, wait_timeout_s: Optional[float] = None):
        self.store = store
        self.owner = owner
        self.command = command
        self.ttl_s = ttl_s
        self.wait = wait
        self.poll_s = poll_s
        self.wait_timeout_s = wait_timeout_s
        self.info: Optional[LeaseInfo] = None
        self._tag: Optional[str] = None
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    # -- acquire ---------------------------------------------------------------------
    def _mine(self) -> LeaseInfo:
        now = time.time()
        pid = os.getpid()
        return LeaseInfo(owner=self.owner, token=uuid.uuid4().hex, command=self.command, host=socket.gethostname(),
                         pid=pid, pid_started=_process_started(pid), started_at=now, heartbeat_at=now, ttl_s=self.ttl_s)

    def _free(self, cur: LeaseInfo, now: float) -> Optional[str]:
        """Why the current lease may be taken (None: it is held)."""
        if cur.released:
            return "released"
        if now - cur.heartbeat_at > cur.ttl_s:
            return f"expired: no heartbeat for {now - cur.heartbeat_at:.0f}s (ttl {cur.ttl_s:.0f}s)"
        if cur.host == socket.gethostname() and not _alive(cur):
            return f"its process {cur.pid} on this host is gone"
        return None

    def acquire(self) -> "WriterLease":
        from pipeline.io.commit import fault_point

        deadline = None if self.wait_timeout_s is None else time.monotonic() + self.wait_timeout_s
        announced = False
        while True:
            mine = self._mine()
            data = json.dumps(mine.model_dump(), sort_keys=True).encode()
            got = self.store.read_tagged(LEASE)
            if got is None:
                if self.store.create(LEASE, data):
                    return self._won(mine, data)
                continue  # someone created it just now: look again
            raw, tag = got
            try:
                cur = LeaseInfo.model_validate_json(raw)
            except ValueError:
                cur = None  # unreadable: treat as free (a lease is always written whole)
            now = time.time()
            why = "unreadable" if cur is None else self._free(cur, now)
            if why is not None:
                new_tag = self.store.replace_if(LEASE, data, tag)
                if new_tag is not None:
                    if cur is not None and not cur.released:
                        logger.warning("took over the output lease of %s: %s", cur.describe(now), why)
                    fault_point("lease-acquired")
                    return self._won(mine, data, new_tag)
                continue  # lost the race for it: look again
            assert cur is not None
            if not self.wait or (deadline is not None and time.monotonic() > deadline):
                raise OutputBusy(
                    f"output busy: {cur.describe(now)} is writing {self.store.root_uri}; wait for it to "
                    "finish (or rerun with --wait); a crashed writer's lease expires "
                    f"{max(0.0, cur.ttl_s - (now - cur.heartbeat_at)):.0f}s after its last heartbeat"
                )
            if not announced:
                logger.info("output busy: %s; waiting for it (--wait)", cur.describe(now))
                announced = True
            time.sleep(self.poll_s)

    def _won(self, mine: LeaseInfo, data: bytes, tag: Optional[str] = None) -> "WriterLease":
        self.info = mine
        self._tag = tag if tag is not None else self._tag_of(data)
        self._thread = threading.Thread(target=self._beat, name="output-lease", daemon=True)
        self._thread.start()
        return self

    def _tag_of(self, data: bytes) -> str:
        got = self.store.read_tagged(LEASE)
        return got[1] if got is not None and got[0] == data else ""

    # -- hold --------------------------------------------------------------------------
    def _beat(self) -> None:
        interval = max(0.2, self.ttl_s / 4)
        while not self._stop.wait(interval):
            try:
                self._renew()
            except Exception as e:  # noqa: BLE001 - a transient store error: try again next beat
                logger.warning("output lease heartbeat failed (%s: %s); retrying", type(e).__name__, e)
            if self._lost.is_set():
                return

    def _renew(self, released: bool = False) -> bool:
        with self._lock:
            if self.info is None or self._lost.is_set():
                return False
            info = self.info.model_copy(update={"heartbeat_at": time.time(), "released": released})
            data = json.dumps(info.model_dump(), sort_keys=True).encode()
            new_tag = self.store.replace_if(LEASE, data, self._tag or "")
            if new_tag is None:
                self._lost.set()
                logger.error("the output lease of %s was taken over by another writer", self.store.root_uri)
                return False
            self.info, self._tag = info, new_tag
            return True

    def check(self) -> None:
        """Raise if this run no longer holds the lease (call before publishing)."""
        if self._lost.is_set() or not self._renew():
            raise LeaseLost(
                f"this run lost its lease on {self.store.root_uri} (another writer took it over after "
                f"{self.ttl_s:.0f}s without a heartbeat); nothing was published by this run. "
                "Rerun once the other writer is done"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self._renew(released=True)
        except Exception as e:  # noqa: BLE001 - an unreleased lease expires by itself
            logger.warning("could not release the output lease (%s); it expires after %.0fs", e, self.ttl_s)

    def __enter__(self) -> "WriterLease":
        if self.info is None:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def read_lease(store: Store) -> Optional[LeaseInfo]:
    raw = store.read_json(LEASE)
    return LeaseInfo.model_validate(raw) if raw else None
