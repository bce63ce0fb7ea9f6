"""Locations as msgpack carries them: a location beyond 64 bits (a record
inside a compacted block, _core/index.py) as msgpack ext type ``BIG_INT``,
so only those cost a Python call when a table or a snapshot is read."""

from __future__ import annotations

from typing import Any

import msgpack

BIG_INT = 1  # msgpack ext type: an unsigned int beyond 64 bits, big-endian bytes
_U64 = (1 << 64) - 1


def wire(value: Any) -> Any:
    """``value`` as msgpack can carry it: an int beyond 64 bits as ext BIG_INT."""
    if type(value) is int and value > _U64:
        return msgpack.ExtType(BIG_INT, value.to_bytes((value.bit_length() + 7) // 8, "big"))
    return value


def ext_hook(code: int, data: bytes) -> int:
    """msgpack ``ext_hook`` that reads BIG_INT back; ValueError for any other."""
    if code != BIG_INT:
        raise ValueError(f"unknown msgpack ext type {code}")
    return int.from_bytes(data, "big")
