"""The step path's CPU savings (docs/performance.md, "CPU per step"): each
shortcut gives what the long way gave."""

from __future__ import annotations

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
