"""Pulls of a live dump that is not written yet wait at the source's image service.

In a live migration the target pulls the memory-less image the moment the source's lazy
dump is ready, and every millisecond between the two is part of the app's freeze. Instead of
a round trip through the ``Migration`` object (the source writes "ready", the target's watch
sees it), the target asks for the image right after its claim and the source's image service
holds that pull here until the dump in the same manager process says ready (or failed).
"""

from __future__ import annotations

import asyncio

# How long a pull waits for a dump at most (the claim comes first, then the dump starts).
WAIT_S = 120.0


class LiveGates:
    """The live dumps of this node's containers that a pull may wait for, by container id."""

    def __init__(self) -> None:
        self._gates: dict[str, asyncio.Future[str]] = {}

    def open(self, image_id: str) -> None:
        """A live dump of ``image_id`` will come: its pulls wait from now on."""
        self._gates[image_id] = asyncio.get_running_loop().create_future()

    def ready(self, image_id: str) -> None:
        """The dump is written: waiting and later pulls go ahead."""
        self._settle(image_id, "")

    def fail(self, image_id: str, reason: str) -> None:
        """The dump failed or was called off: pulls are refused with ``reason``."""
        self._settle(image_id, reason or "the live dump failed")

    def close(self, image_id: str) -> None:
        """The migration ended: forget the gate (a pull then finds the image or not)."""
        gate = self._gates.pop(image_id, None)
        if gate is not None and not gate.done():
            gate.set_result("the live migration ended")

    def _settle(self, image_id: str, reason: str) -> None:
        gate = self._gates.get(image_id)
        if gate is not None and not gate.done():
            gate.set_result(reason)

    async def wait(self, image_id: str, timeout_s: float = WAIT_S) -> str:
        """"" when the image may be served now (no live dump of it, or it is ready);
        otherwise why not."""
        gate = self._gates.get(image_id)
        if gate is None:
            return ""
        try:
            return await asyncio.wait_for(asyncio.shield(gate), timeout_s)
        except TimeoutError:
            return f"the live dump of {image_id} was not ready within {timeout_s:g} s"
