"""Values: msgpack, user hooks for other types, zstd for large values, never pickle."""

from __future__ import annotations

import copyreg
import os
import pickle
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.engine import KINDS, Calls, Home, of_type, wait

from memable_log import Context, Engine, NotSerializable, WorkflowFailed
from memable_log._core.codec import MAX_BLOB, TAG_MSGPACK, TAG_ZSTD, Codec, EncodeError


@dataclass(frozen=True)
class Point:
    x: int
    y: int


def encode_hook(obj: Any) -> tuple[str, Any]:
    if isinstance(obj, Point):
        return "point", [obj.x, obj.y]
    if isinstance(obj, datetime):
        return "datetime", obj.isoformat()
    raise TypeError(f"no encoding for {type(obj).__name__}")


def decode_hook(tag: str, plain: Any) -> Any:
    if tag == "point":
        return Point(*plain)
    if tag == "datetime":
        return datetime.fromisoformat(plain)
    raise ValueError(f"unknown tag {tag!r}")


WHEN = datetime(2024, 5, 17, 9, 30, 15, 250_000, tzinfo=timezone(timedelta(hours=2)))


@pytest.fixture(params=KINDS)
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Home:
    return Home(request.param, tmp_path)


def typed_engine(home: Home, workflow: Any) -> Engine:
    return home.engine({"typed": workflow}, codec=(encode_hook, decode_hook))


async def test_user_types_round_trip_through_inputs_steps_and_outputs(home: Home) -> None:
    calls = Calls()
    seen: list[Any] = []

    async def typed(ctx: Context) -> Any:
        start: Point = ctx.input["start"]
        moved = await ctx.step("move").run(calls.fn("move", Point(start.x + 1, start.y + 2)))
        when = await ctx.step("when").run(calls.fn("when", WHEN))
        nested = await ctx.step("nested").run(
            calls.fn("nested", {"points": [moved, start], "at": [when, when + timedelta(days=1)]})
        )
        seen.append((ctx.input, moved, when, nested))
        return {"end": moved, "at": when, "nested": nested}

    expected = {
        "end": Point(11, 22),
        "at": WHEN,
        "nested": {
            "points": [Point(11, 22), Point(10, 20)],
            "at": [WHEN, WHEN + timedelta(days=1)],
        },
    }
    engine = typed_engine(home, typed)
    async with engine:
        instance_id = await engine.invoke("typed", {"start": Point(10, 20), "at": WHEN})
        result = await wait(engine, instance_id)
    assert result == expected
    assert type(result["end"]) is Point
    assert result["at"].utcoffset() == timedelta(hours=2)

    engine = typed_engine(home, typed)
    async with engine:
        assert await engine.wait(instance_id) == expected  # the stored output
        await engine.restart(instance_id)
        assert await wait(engine, instance_id) == expected  # replayed from the journal
    assert calls.counts == {"move": 1, "when": 1, "nested": 1}
    first, replay = seen
    assert first == replay
    assert first[0] == {"start": Point(10, 20), "at": WHEN}


async def test_no_pickle_is_used_to_store_or_load_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle was used")

    for name in ("dumps", "loads", "dump", "load", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(copyreg, "__reduce_ex__", forbidden, raising=False)

    async def typed(ctx: Context) -> Any:
        return await ctx.step("p").run(lambda: [ctx.input, Point(1, 2), WHEN])

    engine = Engine.builder().in_memory().codec(encode_hook, decode_hook).build()
    engine.register("typed", typed)
    async with engine:
        instance_id = await engine.invoke("typed", Point(3, 4))
        assert await wait(engine, instance_id) == [Point(3, 4), Point(1, 2), WHEN]


class Sneaky:
    """An object that would run code if anything tried to pickle it."""

    reduced = 0

    def __reduce__(self) -> Any:
        Sneaky.reduced += 1
        return (print, ("pickled!",))

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self.__reduce__()


async def test_a_type_without_a_hook_is_not_serializable_and_never_reduced() -> None:
    errors: list[NotSerializable] = []

    async def wf(ctx: Context) -> Any:
        for key, value in (("obj", Sneaky()), ("when", WHEN), ("day", date(2024, 1, 1))):
            try:
                await ctx.step(key).run(lambda v=value: v)
            except NotSerializable as exc:
                errors.append(exc)
        return len(errors)

    engine = Engine.builder().in_memory().build()
    engine.register("wf", wf)
    async with engine:
        instance_id = await engine.invoke("wf")
        assert await wait(engine, instance_id) == 3
        with pytest.raises(NotSerializable, match="Sneaky"):
            await engine.invoke("wf", Sneaky())
    assert [e.value_type for e in errors] == ["Sneaky", "datetime", "date"]
    assert "step 'obj'" in str(errors[0])
    assert Sneaky.reduced == 0


async def test_a_failing_encode_hook_is_reported_as_not_serializable() -> None:
    def broken_hook(obj: Any) -> tuple[str, Any]:
        raise RuntimeError("hook exploded")

    def bad_tag_hook(obj: Any) -> tuple[str, Any]:
        return 7, "x"  # type: ignore[return-value]

    for hook, reason in ((broken_hook, "hook exploded"), (bad_tag_hook, "(str, value)")):
        codec = Codec(hook, decode_hook)
        with pytest.raises(EncodeError) as info:
            codec.encode({"p": Point(1, 2)})
        assert info.value.type_name == "Point"
        assert reason in str(info.value)


def test_decoding_without_a_hook_builds_no_object() -> None:
    blob = Codec(encode_hook, decode_hook).encode(Point(5, 6))
    plain = Codec().decode(blob)
    assert isinstance(plain, msgpack.ExtType)
    assert msgpack.unpackb(plain.data) == ["point", [5, 6]]


async def test_tuples_come_back_as_lists_on_the_first_run_and_on_replay(home: Home) -> None:
    seen: list[Any] = []
    calls = Calls()

    async def tuples(ctx: Context) -> Any:
        value = await ctx.step("t").run(calls.fn("t", (1, (2, 3), {"k": (4,)})))
        seen.append((ctx.input, value))
        return (value, "done")

    engine = home.engine({"tuples": tuples})
    async with engine:
        instance_id = await engine.invoke("tuples", ("a", ("b",)))
        first = await wait(engine, instance_id)
        await engine.restart(instance_id)
        again = await wait(engine, instance_id)
    expected_value = [1, [2, 3], {"k": [4]}]
    assert seen == [(["a", ["b"]], expected_value)] * 2
    assert first == again == [expected_value, "done"]
    assert calls.counts == {"t": 1}


@pytest.mark.parametrize("kind", ["disk", "memory"])
async def test_large_values_are_zstd_compressed_and_round_trip(kind: str, tmp_path: Path) -> None:
    home = Home(kind, tmp_path)
    big = {"rows": [{"id": i, "name": f"customer-{i % 50}", "ok": True} for i in range(20_000)]}
    blob = bytes(range(256)) * 10
    calls = Calls()

    async def bulk(ctx: Context) -> Any:
        rows = await ctx.step("rows").run(calls.fn("rows", big))
        stored = await ctx.step("blob").run(calls.fn("blob", blob))
        return [len(rows["rows"]), rows["rows"][12_345], stored]

    engine = home.engine({"bulk": bulk}, inline_limit=64)
    async with engine:
        instance_id = await engine.invoke("bulk")
        expected = [20_000, {"id": 12_345, "name": "customer-45", "ok": True}, blob]
        assert await wait(engine, instance_id) == expected
    (stored,) = of_type(home.records(), "step_done", "rows")
    value = stored.fields["value"]
    assert value[0] == TAG_ZSTD
    assert len(value) < len(msgpack.packb(big)) // 5

    engine = home.engine({"bulk": bulk}, inline_limit=64)
    async with engine:  # read back from the journal after a restart
        assert await engine.wait(instance_id) == expected  # the output, stored by location
        await engine.restart(instance_id)
        assert await wait(engine, instance_id) == expected
    assert calls.counts == {"rows": 1, "blob": 1}


def test_compression_is_used_only_when_it_helps() -> None:
    codec = Codec(compress_threshold=1024)
    small = codec.encode("x" * 100)
    assert small[0] == TAG_MSGPACK
    repetitive = codec.encode("x" * 100_000)
    assert repetitive[0] == TAG_ZSTD
    assert len(repetitive) < 1000
    incompressible = codec.encode(bytes(pickle_free_noise(5000)))
    assert incompressible[0] == TAG_MSGPACK
    never = Codec(compress_threshold=None).encode("x" * 100_000)
    assert never[0] == TAG_MSGPACK
    for blob in (small, repetitive, incompressible, never):
        assert Codec().decode(blob) == codec.decode(blob)


def pickle_free_noise(n: int) -> list[int]:
    """Deterministic bytes that zstd cannot shrink (a linear congruential sequence)."""
    out, state = [], 12345
    for _ in range(n):
        state = (state * 1103515245 + 12345) % 2**31
        out.append(state >> 23)
    return out


async def test_value_too_big_for_a_record_is_not_serializable_and_the_engine_lives_on() -> None:
    """Regression: a step result over the 16 MiB record limit reached the
    framing layer inside the journal's appender, whose ValueError tore down
    the whole engine (and every instance's waiters with it)."""
    huge = os.urandom(MAX_BLOB + 1024)  # incompressible
    errors: list[NotSerializable] = []

    async def wf(ctx: Context) -> Any:
        try:
            await ctx.step("huge").run(lambda: huge)
        except NotSerializable as exc:
            errors.append(exc)
        if ctx.input == "return it":
            return huge
        return await ctx.step("small").run(lambda: "fine")

    home = Home("memory", Path("."))
    engine = home.engine({"wf": wf})
    async with engine:
        instance_id = await engine.invoke("wf")
        assert await wait(engine, instance_id) == "fine"
        with pytest.raises(WorkflowFailed) as info:
            await wait(engine, await engine.invoke("wf", "return it"))
        assert info.value.error_type == "NotSerializable"
        before = home.records()
        with pytest.raises(NotSerializable, match="limit"):
            await engine.invoke("wf", huge)
        assert home.records() == before
        assert await wait(engine, await engine.invoke("wf")) == "fine"
    assert len(errors) == 3
    assert "step 'huge'" in str(errors[0])
    assert "limit" in str(errors[0])
    assert of_type(home.records(), "step_done", "huge") == []


def test_values_up_to_the_record_limit_encode() -> None:
    codec = Codec()
    body = MAX_BLOB - 16
    fits = os.urandom(body)
    assert len(codec.encode(fits)) <= MAX_BLOB
    assert codec.decode(codec.encode(fits)) == fits
    with pytest.raises(EncodeError, match="limit"):
        codec.encode(os.urandom(MAX_BLOB))
    # A big value that compresses below the limit is fine.
    assert codec.decode(codec.encode(bytes(MAX_BLOB + 1))) == bytes(MAX_BLOB + 1)


def test_malformed_blobs_raise_value_error() -> None:
    codec = Codec()
    with pytest.raises(ValueError, match="empty"):
        codec.decode(b"")
    with pytest.raises(ValueError, match="tag"):
        codec.decode(b"\x07\x90")


async def test_unencodable_workflow_output_fails_and_names_the_type() -> None:
    async def wf(ctx: Context) -> Any:
        return Point(1, 1)

    engine = Engine.builder().in_memory().build()
    engine.register("wf", wf)
    async with engine:
        instance_id = await engine.invoke("wf")
        with pytest.raises(WorkflowFailed) as info:
            await wait(engine, instance_id)
    assert info.value.error_type == "NotSerializable"
    assert "Point" in info.value.message


def normalise(value: Any) -> Any:
    """What a value looks like after a round trip: tuples become lists."""
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    return value


msgpack_ints = st.integers(-(2**63), 2**64 - 1)  # msgpack's range
msgpack_values = st.recursive(
    st.none() | st.booleans() | msgpack_ints
    | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=5)
    | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=5) | msgpack_ints, children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=100)
@given(value=msgpack_values, threshold=st.sampled_from([None, 0, 64]))
def test_any_msgpack_value_round_trips(value: Any, threshold: int | None) -> None:
    codec = Codec(compress_threshold=threshold)
    assert codec.decode(codec.encode(value)) == normalise(value)


@settings(max_examples=100)
@given(
    points=st.lists(st.builds(Point, msgpack_ints, msgpack_ints), max_size=5),
    moments=st.lists(st.datetimes(timezones=st.just(UTC)), max_size=3),
)
def test_hooked_values_round_trip(points: list[Point], moments: list[datetime]) -> None:
    codec = Codec(encode_hook, decode_hook)
    value = {"points": points, "moments": moments}
    assert codec.decode(codec.encode(value)) == value


# -- issue 13 o: refusals say why, and name the limits ----------------------------


@pytest.mark.parametrize("value", [2**70, -(2**63) - 1, [1, {"n": 2**64}]])
def test_an_int_beyond_64_bits_is_refused_naming_the_range(value: object) -> None:
    with pytest.raises(EncodeError, match=r"64 bits \(-2\*\*63 to 2\*\*64-1\)"):
        Codec().encode(value)


def test_not_serializable_lists_the_types_only_when_the_type_is_not_one() -> None:
    too_big = NotSerializable("step 'n'", "int", "an int outside msgpack's 64 bits")
    assert "return msgpack types" not in str(too_big)
    too_long = NotSerializable("step 'b'", "bytes", "above the 16711679-byte limit")
    assert "return msgpack types" not in str(too_long)
    assert "16711679" in str(too_long)
    stranger = NotSerializable("step 'o'", "object")
    assert "return msgpack types" in str(stranger)
    assert "codec" in str(stranger)


async def test_a_step_s_refusal_for_a_big_int_names_the_range_and_writes_nothing() -> None:
    async def flow(ctx: Context) -> str:
        try:
            await ctx.step("n").run(lambda: 2**70)
        except NotSerializable as exc:
            return str(exc)
        return "written"

    engine = Engine.builder().in_memory().build()
    engine.register("flow", flow)
    async with engine:
        message = await engine.wait(await engine.invoke("flow"))
        assert engine.status((engine.instances())[0].instance_id).steps == 0
    assert "64 bits" in message
    assert "return msgpack types" not in message
