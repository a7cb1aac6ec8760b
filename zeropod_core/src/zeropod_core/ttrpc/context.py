"""What a handler knows about the call it serves: method, metadata and deadline.

Go handlers read these from a ``context.Context`` (``ttrpc.GetMetadata``, ``ctx.Deadline()``);
here they come as an explicit :class:`CallContext` argument, which keeps handlers testable
without a connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field


class Metadata(Mapping[str, tuple[str, ...]]):
    """ttrpc metadata: keys map to one or more string values, in the order received.

    Keys are lower-cased, as Go's ``ttrpc.MD`` does on Get, Set and Append, so that lookups do
    not depend on how the peer spelled a key.
    """

    __slots__ = ("_data",)

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._data: dict[str, list[str]] = {}
        for key, value in pairs:
            self._data.setdefault(key.lower(), []).append(value)

    @classmethod
    def of(cls, values: Mapping[str, str | Sequence[str]] | None) -> Metadata:
        """Metadata from ``{key: value}`` or ``{key: [values]}``; None gives empty metadata."""
        pairs: list[tuple[str, str]] = []
        for key, value in (values or {}).items():
            if isinstance(value, str):
                pairs.append((key, value))
            else:
                pairs.extend((key, item) for item in value)
        return cls(pairs)

    def first(self, key: str) -> str | None:
        """The first value of ``key`` (Go: ``GetMetadataValue``), or None."""
        values = self._data.get(key.lower())
        return values[0] if values else None

    def pairs(self) -> list[tuple[str, str]]:
        """Every (key, value), as they go on the wire (one KeyValue each)."""
        return [(key, value) for key, values in self._data.items() for value in values]

    def __getitem__(self, key: str) -> tuple[str, ...]:
        return tuple(self._data[key.lower()])

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Metadata({self.pairs()!r})"


@dataclass(slots=True)
class CallContext:
    """One call as the server sees it. ``deadline`` is on the event loop's clock."""

    service: str
    method: str
    stream_id: int
    metadata: Metadata = field(default_factory=Metadata)
    deadline: float | None = None

    @property
    def full_method(self) -> str:
        """``/service/method``, the form Go ttrpc logs and interceptors use."""
        return f"/{self.service}/{self.method}"

    def time_remaining(self) -> float | None:
        """Seconds until the caller's deadline (may be negative), or None without one."""
        if self.deadline is None:
            return None
        return self.deadline - asyncio.get_running_loop().time()
