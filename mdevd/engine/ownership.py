# SPDX-License-Identifier: LGPL-2.1-or-later
"""Who owns each device, and the end of transient devices' lifetimes (`mdevd.owners`).

The core records an owner with each device made or defined through mdevd and forgets it with
the device; this keeps them (durably, through an `OwnerRecord`, before the call that made the
device returns), answers whose devices end with a connection or a unit, and removes a device
whose lifetime ended through the `stop` function the core hands it. A device a VM still holds
is not yanked: the stop is tried again until it is released, for a bounded time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from mdevd.engine.runner import BackgroundTasks, IoRunner
from mdevd.errors import Busy, MdevdError, NotActive, NotFound
from mdevd.owners import LIFETIME_CONNECTION, LIFETIME_MANUAL, Owner, OwnerRecord

log = logging.getLogger("mdevd.engine")

#: Seconds a change of a manual owner waits before the record is written, so that a burst of
#: changes costs one write; a lifetime is written before its call returns.
SAVE_DELAY = 1.0

#: `stop(uuid)`: remove a transient device whose lifetime ended; False if it is none now.
Stop = Callable[[str], Awaitable[bool]]


class Ownerships:
    def __init__(
        self,
        record: OwnerRecord | None,
        io: IoRunner,
        stop: Stop,
        background: BackgroundTasks,
        *,
        release_wait: float,
        release_poll: float,
    ) -> None:
        self._record = record
        self._io = io
        self._stop = stop
        self._background = background
        self.release_wait = release_wait
        self.release_poll = release_poll
        self._owners: dict[str, Owner] = {}
        # A write of the record is due (`_save_soon`): the one write that covers every change
        # until it starts.
        self._save_due = False
        self._save_lock = asyncio.Lock()
        #: Devices whose lifetime ended, being removed (or waiting to be released).
        self._ending: set[str] = set()
        #: Changed since the last write.
        self._dirty = False

    async def load(self, present: Callable[[str], bool]) -> None:
        """Read the record; owners of devices no longer `present` are dropped."""
        if self._record is None:
            return
        loaded = await self._io.run(self._record.load)
        self._owners = {uuid: owner for uuid, owner in loaded.items() if present(uuid)}
        if self._owners != loaded:
            self._save_soon()

    def close(self) -> None:
        pass  # a write still due is the daemon's `flush` (it stops), else lost with an owner

    # ---- reading ---------------------------------------------------------------------------

    def get(self, uuid: str) -> Owner | None:
        return self._owners.get(uuid)

    def all(self) -> dict[str, Owner]:
        return dict(self._owners)

    def owned_by_connection(self, connection: str) -> list[str]:
        """The transient devices that live as long as the bus connection `connection`."""
        return sorted(
            uuid
            for uuid, owner in self._owners.items()
            if owner.lifetime == LIFETIME_CONNECTION and owner.connection == connection
        )

    def owned_by_unit(self, unit: str) -> list[str]:
        """The transient devices that live as long as the systemd unit `unit`."""
        return sorted(uuid for uuid, owner in self._owners.items() if owner.unit == unit)

    # ---- changing --------------------------------------------------------------------------

    async def record(self, uuid: str, owner: Owner | None, *, defined: bool) -> None:
        """Record `uuid`'s owner. A lifetime is written before the call that made the device
        returns: lost to a daemon killed right after the reply, it would leave the device to
        outlive its owner. A manual owner is written within `SAVE_DELAY` seconds, off the
        call's path, with the other changes meanwhile (what a kill in that moment costs is
        an owner, never a device). A defined device has no lifetime: it lives until
        undefined. A failure to write is logged: the device exists, and its call must not
        fail for this."""
        if owner is not None and defined and owner.lifetime != LIFETIME_MANUAL:
            owner = replace(owner, lifetime=LIFETIME_MANUAL, connection="")
        if not self._set(uuid, owner):
            return
        if owner is None or owner.lifetime == LIFETIME_MANUAL:
            self._save_soon()
            return
        try:
            await self._save()
        except Exception as error:
            log.error("device %s: recording its owner failed: %s", uuid, error)

    def _save_soon(self) -> None:
        """Write the record `SAVE_DELAY` seconds from now, once for all changes meanwhile: a
        burst of creates or stops (a host starting its VMs) costs one write, not one each."""
        if self._save_due:
            return
        self._save_due = True

        async def later() -> None:
            try:
                await asyncio.sleep(SAVE_DELAY)
                self._save_due = False
                await self._save()
            except Exception as error:  # logged: the next change writes again
                log.error("saving the device owners failed: %s", error)

        self._background.spawn(later())

    async def flush(self) -> None:
        """Write what is not written yet (the daemon stops)."""
        if self._dirty:
            try:
                await self._save()
            except Exception as error:
                log.error("saving the device owners failed: %s", error)

    def defined(self, uuid: str) -> None:
        """The device is defined now: its lifetime, if it had one, is `manual` from now on."""
        owner = self._owners.get(uuid)
        if owner is not None and owner.lifetime != LIFETIME_MANUAL:
            self._set(uuid, replace(owner, lifetime=LIFETIME_MANUAL, connection=""))
            self._save_soon()

    def forget(self, uuid: str) -> None:
        """The device is gone (neither defined nor active): its owner with it."""
        if self._set(uuid, None):
            self._save_soon()

    def _set(self, uuid: str, owner: Owner | None) -> bool:
        if owner is None:
            changed = self._owners.pop(uuid, None) is not None
        elif self._owners.get(uuid) == owner:
            changed = False
        else:
            self._owners[uuid] = owner
            changed = True
        self._dirty = self._dirty or changed
        return changed

    async def _save(self) -> None:
        if self._record is not None:
            async with self._save_lock:
                self._dirty = False
                await self._io.run(self._record.save, dict(self._owners))

    # ---- ending ----------------------------------------------------------------------------

    def end_lifetime(self, uuid: str) -> None:
        """The device's owner is gone (its connection closed, its unit stopped): remove it,
        which the core reports as `stopped` with reason `owner-gone`. One that a VM holds is
        tried again every `release_poll` seconds until released, for at most `release_wait`."""
        owner = self._owners.get(uuid)
        if owner is None or owner.lifetime == LIFETIME_MANUAL or uuid in self._ending:
            return
        self._ending.add(uuid)
        self._background.spawn(self._end(uuid, owner))

    async def _end(self, uuid: str, owner: Owner) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.release_wait
        told = False
        try:
            while True:
                try:
                    if await self._stop(uuid):
                        log.info("device %s: removed, its owner %s is gone", uuid, owner.label)
                    return
                except Busy:
                    if loop.time() > deadline:
                        log.error(
                            "device %s: its owner %s is gone, but it stayed in use for %g s;"
                            " left as it is",
                            uuid,
                            owner.label,
                            self.release_wait,
                        )
                        return
                    if not told:
                        log.warning(
                            "device %s: its owner %s is gone, but it is in use; removing it"
                            " once released",
                            uuid,
                            owner.label,
                        )
                        told = True
                    await asyncio.sleep(self.release_poll)
                except (NotActive, NotFound):
                    return
        except MdevdError as error:
            log.error("device %s: removing it after its owner left failed: %s", uuid, error)
        finally:
            self._ending.discard(uuid)
