"""The step path's CPU savings (docs/performance.md, "CPU per step"): each
shortcut gives what the long way gave."""

from __future__ import annotations

import array
import collections
import enum
import math
import random
import threading

import msgpack
import pytest

from memable_log._core.codec import Codec, EncodeError
from memable_log._core.records import CREATED, INSTANCE, make
from memable_log._journal.scheduler import Batch


def _reference(value: object) -> bytes:
    return b"\x00" + msgpack.packb(value, use_bin_type=True)


def test_a_refused_value_leaves_the_kept_packer_clean() -> None:
    codec = Codec()
    good = {"id": "req-1", "items": [{"sku": "a", "qty": 1}] * 5}
    for bad in ([1, "x" * 300, object()], {"a": [1, 2**70]}, [{1, 2}]):
        with pytest.raises(EncodeError):
            codec.encode(bad)
        blob = codec.encode(good)  # nothing of the refused value's bytes stays
        assert blob == _reference(good)
        assert codec.decode(blob) == good


def test_threads_encoding_with_one_codec_get_their_own_bytes() -> None:
    codec = Codec()
    wrong: list[int] = []

    def encode_many(seed: int) -> None:
        for i in range(2000):
            value = {"seed": seed, "i": i, "pad": "p" * (i % 97), "list": list(range(i % 13))}
            if codec.encode(value) != _reference(value):
                wrong.append(i)

    threads = [threading.Thread(target=encode_many, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_a_codec_with_hooks_packs_through_them() -> None:
    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    codec = Codec(lambda p: ("pt", p.x), lambda tag, x: ("rebuilt", tag, x))
    blob = codec.encode([Point(3), {"p": Point(4)}])
    assert codec.decode(blob) == [("rebuilt", "pt", 3), {"p": ("rebuilt", "pt", 4)}]


def _rec(instance_id: str) -> list[object]:
    return make(CREATED, 1, instance_id, "wf", b"\x00\xc0")


def test_a_batch_knows_records_added_after_it_was_asked() -> None:
    batch = Batch()
    batch.records += [_rec("a"), _rec("b")]
    assert batch.holds("a")
    assert not batch.holds("c")
    batch.records += [_rec("c")]
    assert batch.holds("c")
    assert {rec[INSTANCE] for rec in batch.records} == {"a", "b", "c"}
    assert not batch.holds("d")


# -- the strict pack: a value of exact types is not compared item by item ------------


def _refuse(obj: object) -> tuple[str, object]:
    """A hook that refuses everything as a codec without hooks does: with a
    hook, the codec takes the general way (pack loosely, decode, compare)."""
    if type(obj) is int:
        raise EncodeError("int", "an int outside msgpack's 64 bits (-2**63 to 2**64-1); "
                          "store it as a str")
    raise EncodeError(type(obj).__qualname__)


class _Colour(enum.IntEnum):
    RED = 1


class _Never(str):
    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


def _random_value(rng: random.Random, depth: int = 0) -> object:
    pick = rng.randrange(12 if depth < 4 else 7)
    leaves: list[object] = [
        rng.randrange(-(2**63), 2**64), rng.choice([0.5, -0.0, math.inf, math.nan, 1e300]),
        "".join(rng.choice("ab\xe9\u4e2d") for _ in range(rng.randrange(40))),
        bytes(rng.randrange(256) for _ in range(rng.randrange(20))), None, True, False,
    ]
    if pick < 7:
        return leaves[pick]
    items = [_random_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    if pick == 7:
        return items
    if pick == 8:
        return tuple(items)
    if pick == 9:
        return bytearray(b"\xc4\x01") if rng.random() < 0.5 else {"k": items}
    return {rng.choice(["a", "b", 1, 2.5, b"k", None, True]): item for item in items}


EDGES: list[object] = [
    {"a": 1, "b": [1, 2.5, "x", None, True, b"\x00"]},
    ("top", 1), {"t": (1, (2, [3, (4,)]))}, [math.nan, {"n": math.nan}], {math.nan: 1},
    [memoryview(b"ab")], [memoryview(array.array("i", [1, 2]))], bytearray(b"\xc5"),
    {(1, 2): "tuple key"}, [_Colour.RED], collections.OrderedDict(a=1), [_Never("x")],
    {_Never("k"): 1}, [2**64], [-(2**63) - 1], ["\ud800"], [{1, 2}], [object()],
    "plain", 7, 2.5, None, b"bytes", [], {}, [[[[[]]]]], "\xc4 in a str: \xc5\xc6",
]


@pytest.mark.parametrize("value", EDGES, ids=[repr(v)[:40] for v in EDGES])
def test_the_strict_pack_gives_what_the_general_way_gives(value: object) -> None:
    _same_outcome(value)


def test_random_values_take_either_way_alike() -> None:
    rng = random.Random(18)
    for _ in range(3000):
        _same_outcome(_random_value(rng))


def _same_outcome(value: object) -> None:
    assert _outcome(Codec(), value) == _outcome(Codec(_refuse), value)


def _outcome(codec: Codec, value: object) -> tuple[object, ...]:
    """The blob and the read-back (as repr: NaN-proof, types shown), or the refusal."""
    try:
        blob, back = codec.encode_value(value)
    except EncodeError as exc:
        return ("refused", str(exc))
    return (blob, repr(back))
