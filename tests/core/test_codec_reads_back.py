"""A value is written only if it reads back (issue 13 a).

A dict with tuple keys packs (msgpack writes a tuple as an array) but its
keys come back as lists, which cannot be dict keys: once written, the step
could never be replayed. The codec decodes what it encodes and refuses a
value that does not read back, or reads back as a different value (tuples
as lists are by design), before anything is written.
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from enum import IntEnum
from pathlib import Path
from typing import Any

import msgpack
import pytest
from support.engine import Calls, Home, of_type, wait

from memable_log import Context, NotSerializable
from memable_log._core.codec import Codec, EncodeError


class Opaque:
    """A hooked type with identity equality: it never compares equal to its copy."""

    def __init__(self, n: int) -> None:
        self.n = n


def opaque_encode(obj: Any) -> tuple[str, Any]:
    if isinstance(obj, Opaque):
        return "opaque", obj.n
    raise TypeError(type(obj).__name__)


def opaque_decode(tag: str, plain: Any) -> Any:
    return Opaque(plain)


class Colour(IntEnum):
    RED = 1


def test_a_dict_with_tuple_keys_is_refused_naming_the_key() -> None:
    with pytest.raises(EncodeError) as info:
        Codec().encode({(1, 2): "x"})
    assert info.value.type_name == "dict"
    assert "(1, 2)" in str(info.value)
    assert "tuple" in str(info.value)
    assert "read" in str(info.value)


def test_a_nested_tuple_key_is_refused_naming_where_it_is() -> None:
    with pytest.raises(EncodeError) as info:
        Codec().encode({"rows": [1, {"ok": 1, ("a", "b"): 2}]})
    assert "('a', 'b')" in str(info.value)
    assert "['rows'][1]" in str(info.value)


def test_a_decode_hook_failing_on_its_own_output_is_refused_at_encode() -> None:
    def broken(tag: str, plain: Any) -> Any:
        raise ValueError("no such tag")

    codec = Codec(opaque_encode, broken)
    with pytest.raises(EncodeError, match="no such tag"):
        codec.encode([Opaque(1)])


def test_a_value_reading_back_as_a_different_value_is_refused() -> None:
    # msgpack stores a buffer's bytes: ints of 4 bytes come back as 4 bytes each.
    with pytest.raises(EncodeError, match=r"\[0\]"):
        Codec().encode([memoryview(array("i", [1, 2]))])


@pytest.mark.parametrize(
    "value",
    [
        (1, (2, 3)),
        {"pairs": [(1, 2), (3, 4)]},
        [math.nan, {"x": math.nan}],
        OrderedDict(b=1, a=2),
        {Colour.RED: "red"},
        [bytearray(b"ab"), b"cd"],
        {1: "int key", 2.5: "float key", b"k": "bytes key", None: "none key"},
        [msgpack.ExtType(5, b"raw"), (msgpack.ExtType(6, b""),)],
    ],
)
def test_values_that_read_back_are_accepted(value: Any) -> None:
    codec = Codec()
    codec.decode(codec.encode(value))


def test_hooked_values_are_accepted_whatever_their_equality() -> None:
    codec = Codec(opaque_encode, opaque_decode)
    back = codec.decode(codec.encode({"a": [Opaque(1), (Opaque(2),)]}))
    assert [item.n for item in back["a"][:1]] == [1]
    # A codec that only encodes (operations.signal's) reads hooked values as ExtType.
    Codec(opaque_encode).encode({"a": Opaque(1)})


async def test_a_step_returning_tuple_keys_is_not_serializable_and_writes_nothing() -> None:
    home = Home("memory", Path("."))
    calls = Calls()
    errors: list[NotSerializable] = []

    def grid() -> dict[tuple[int, int], str]:
        calls.counts["grid"] += 1
        return {(0, 0): "origin"}

    async def wf(ctx: Context) -> Any:
        try:
            await ctx.step("grid").run(grid)
        except NotSerializable as exc:
            errors.append(exc)
        return await ctx.step("after").run(calls.fn("after", "done"))

    engine = home.engine({"wf": wf})
    async with engine:
        instance_id = await engine.invoke("wf")
        assert await wait(engine, instance_id) == "done"
        assert [rec.fields.get("key") for rec in of_type(home.records(), "step_done")] == ["after"]
        await engine.restart(instance_id)  # it replays: nothing unreadable was kept
        assert await wait(engine, instance_id) == "done"
    assert calls.counts == {"grid": 2, "after": 1}
    (error, _) = errors
    assert "step 'grid'" in str(error)
    assert "(0, 0)" in str(error)
    assert "Nothing was written" in str(error)


def test_the_checked_value_is_handed_out_once_and_equals_a_fresh_decode() -> None:
    # encode keeps what it decoded for the next decode of that blob (a step
    # returns what it wrote); a second decode must build a new object.
    codec = Codec()
    blob = codec.encode({"a": [1, (2, 3)]})
    first = codec.decode(blob)
    second = codec.decode(blob)
    assert first == second == {"a": [1, [2, 3]]}
    assert first is not second
    first["a"].append("mutated")
    assert codec.decode(blob) == {"a": [1, [2, 3]]}
