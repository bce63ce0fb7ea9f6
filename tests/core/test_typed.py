"""Decoding into declared types (SPEC-NEXT §7): plans, without an engine.

Each supported type round-trips through the codec (plain msgpack) to an
equal value of the same type; a value that does not fit fails naming where
in it; a union that could not be told apart when read back is refused.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any, NewType, Optional
from uuid import UUID
from zoneinfo import ZoneInfo

import msgpack
import pydantic
import pytest

from memable_log._core.codec import Codec
from memable_log._core.typed import Mismatch, decode_as, plan_of, return_plan


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass(frozen=True)
class Point:
    x: int
    y: int


@dataclass
class Order:
    id: UUID
    placed: datetime
    due: date
    total: Decimal
    colour: Colour
    corner: tuple[Point, Point]
    path: tuple[Point, ...]
    seen: set[Point]
    tags: frozenset[str]
    by_day: dict[date, list[Decimal]]
    note: str | None = None
    parent: Optional[Order] = None  # noqa: UP045 (the old spelling works too)
    counted: int = field(default=0, init=False)


@dataclass
class Tree:
    value: int
    children: list[Tree]


class Model(pydantic.BaseModel):
    name: str
    at: datetime
    id: UUID
    amount: Decimal
    points: list[Point]
    tags: set[str]
    raw: bytes


UserId = NewType("UserId", UUID)
AWARE = datetime(2026, 3, 29, 1, 30, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=45)))


def round_trip(tp: Any, value: Any) -> Any:
    """``value`` through the plan and the codec, as a step's replay reads it."""
    plan = plan_of(tp)
    assert plan is not None
    codec = Codec()
    plain = msgpack.unpackb(codec.encode(plan.to_plain(value))[1:], strict_map_key=False)
    back = plan.from_plain(plain)
    assert type(back) is type(value)
    assert back == value
    return back


def order() -> Order:
    return Order(
        id=UUID("12345678-1234-5678-1234-567812345678"), placed=AWARE, due=date(2026, 4, 1),
        total=Decimal("10.50"), colour=Colour.BLUE, corner=(Point(0, 0), Point(3, 4)),
        path=(Point(1, 1),), seen={Point(1, 2), Point(2, 1)}, tags=frozenset({"a", "b"}),
        by_day={date(2026, 4, 1): [Decimal("1.1"), Decimal("2")]}, note=None,
        parent=Order(id=UUID(int=1), placed=datetime(2020, 1, 1), due=date(2020, 1, 1),
                     total=Decimal(0), colour=Colour.RED, corner=(Point(0, 0), Point(0, 0)),
                     path=(), seen=set(), tags=frozenset(), by_day={}),
    )


def test_a_nested_dataclass_round_trips_with_every_part_typed() -> None:
    back = round_trip(Order, order())
    assert back.parent.placed.tzinfo is None
    assert type(back.corner) is tuple
    assert type(back.corner[0]) is Point
    assert type(back.seen) is set
    assert type(back.tags) is frozenset
    assert type(next(iter(back.by_day))) is date
    assert type(back.total) is Decimal
    assert str(back.total) == "10.50"


def test_a_dataclass_is_stored_as_a_map_of_its_fields_naming_no_class() -> None:
    plain = plan_of(Order).to_plain(order())  # type: ignore[union-attr]
    assert set(plain) == {f.name for f in dataclasses.fields(Order) if f.init}
    assert plain["placed"] == "2026-03-29T01:30:00.123456+05:45"
    assert plain["corner"] == [{"x": 0, "y": 0}, {"x": 3, "y": 4}]
    assert plain["colour"] == "blue"
    assert plain["seen"] == [{"x": 1, "y": 2}, {"x": 2, "y": 1}]  # sorted: the same bytes
    blob = Codec().encode(plain)
    assert b"Order" not in blob
    assert b"Point" not in blob
    assert b"Colour" not in blob


@pytest.mark.parametrize("value", [
    AWARE, datetime(2026, 1, 1, 0, 0), datetime(2026, 1, 1, 12, 0, 0, 1, tzinfo=UTC),
    datetime(2026, 7, 1, 9, 0, tzinfo=ZoneInfo("Europe/Paris")),
    datetime(2026, 10, 25, 2, 30, tzinfo=ZoneInfo("Europe/Paris")),  # the first 02:30
    datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Paris")),  # the second
])
def test_datetimes_round_trip_exactly(value: datetime) -> None:
    back = round_trip(datetime, value)
    assert back.tzinfo is value.tzinfo or back.tzinfo == value.tzinfo
    assert back.utcoffset() == value.utcoffset()
    assert back.isoformat() == value.isoformat()
    assert back.fold == value.fold


def test_scalars_of_other_types_round_trip() -> None:
    round_trip(date, date(1999, 12, 31))
    round_trip(UUID, UUID(int=2**100))
    round_trip(Decimal, Decimal("-0.000"))
    round_trip(Colour, Colour.RED)
    round_trip(Level, Level.HIGH)
    round_trip(UserId, UserId(UUID(int=5)))
    round_trip(Annotated[date, "meta"], date(2020, 2, 29))


def test_containers_round_trip() -> None:
    round_trip(tuple[int, ...], (1, 2, 3))
    round_trip(tuple[int, str], (1, "a"))
    round_trip(tuple[()], ())
    round_trip(tuple, (1, "x"))
    round_trip(set[int], {3, 1, 2})
    round_trip(frozenset[UUID], frozenset({UUID(int=1), UUID(int=2)}))
    round_trip(list[datetime], [AWARE, AWARE])
    round_trip(dict[UUID, Point], {UUID(int=3): Point(1, 2)})
    round_trip(dict[Colour, int], {Colour.RED: 1})
    round_trip(Tree, Tree(1, [Tree(2, []), Tree(3, [Tree(4, [])])]))


def test_unions_round_trip_when_their_members_are_stored_differently() -> None:
    round_trip(Point | None, Point(1, 2))
    assert plan_of(Point | None).from_plain(None) is None  # type: ignore[union-attr]
    round_trip(datetime | int, AWARE)
    round_trip(datetime | int, 7)
    round_trip(Optional[Decimal], Decimal("1"))  # noqa: UP045
    round_trip(tuple[int, int] | str, (1, 2))
    round_trip(tuple[int, int] | str, "x")


def test_a_pydantic_model_round_trips() -> None:
    value = Model(name="n", at=AWARE, id=UUID(int=9), amount=Decimal("3.14"),
                  points=[Point(1, 2)], tags={"x", "y"}, raw=b"\x00\xff")
    back = round_trip(Model, value)
    assert type(back.points[0]) is Point
    assert back.raw == b"\x00\xff"
    round_trip(list[Model], [value])


def test_plain_types_need_no_plan() -> None:
    for tp in (Any, int, str, float, bool, bytes, None, type(None), list, dict,
               list[int], dict[str, list[int]], int | None, int | str, list[dict[str, Any]]):
        assert plan_of(tp) is None, tp


def test_an_ambiguous_union_is_refused_naming_both_members() -> None:
    for tp, names in ((str | datetime, ("str", "datetime")), (Point | Order, ("Point", "Order")),
                      (UUID | date, ("UUID", "date")), (Level | int, ("Level", "int"))):
        with pytest.raises(TypeError, match="cannot be read back") as info:
            plan_of(tp)
        assert all(name in str(info.value) for name in names)


def test_a_value_that_does_not_fit_names_where_it_does_not() -> None:
    bad = order()
    bad.corner = (Point(0, 0), "corner")  # type: ignore[assignment]
    with pytest.raises(Mismatch) as info:
        plan_of(Order).to_plain(bad)  # type: ignore[union-attr]
    assert str(info.value) == "at .corner[1]: expected Point, got str 'corner'"
    with pytest.raises(Mismatch, match="expected date, got datetime"):
        plan_of(date).to_plain(AWARE)  # type: ignore[union-attr]


def test_plain_data_that_does_not_fit_is_refused_not_returned() -> None:
    plan = plan_of(Order)
    assert plan is not None
    plain = plan.to_plain(order())
    for change, where in (({"placed": "yesterday"}, ".placed"), ({"colour": "green"}, ".colour"),
                          ({"corner": [{"x": 1, "y": 1}]}, ".corner"), ({"id": 5}, ".id"),
                          ({"total": "ten"}, ".total")):
        with pytest.raises(Mismatch) as info:
            plan.from_plain({**plain, **change})
        assert info.value.path == where
    with pytest.raises(Mismatch, match="cannot build Point"):
        plan_of(Point).from_plain({"x": 1})  # type: ignore[union-attr]
    with pytest.raises(Mismatch, match="expected Point"):
        plan_of(Point).from_plain([1, 2])  # type: ignore[union-attr]
    with pytest.raises(Mismatch, match="model_validate"):
        plan_of(Model).from_plain({"name": 1})  # type: ignore[union-attr]
    with pytest.raises(Mismatch, match="expected int"):
        decode_as(int, "1")
    assert decode_as(float, 1) == 1


def test_the_return_plan_is_the_awaited_type_and_cached_per_function() -> None:
    async def fetch() -> Point:
        return Point(1, 2)

    def later() -> Awaitable[Point]:
        return fetch()

    def plain() -> list[int]:
        return []

    assert return_plan(fetch) is plan_of(Point)
    assert return_plan(later) is plan_of(Point)
    assert return_plan(plain) is None
    assert return_plan(lambda: 1) is None
    assert return_plan(fetch) is return_plan(fetch)


def test_a_return_annotation_that_cannot_be_resolved_counts_as_none() -> None:
    def fn() -> Nowhere:  # type: ignore[name-defined]  # noqa: F821
        return 1

    assert return_plan(fn) is None


def test_a_method_a_partial_and_a_callable_object_have_their_plans() -> None:
    import functools

    class Maker:
        def point(self, x: int) -> Point:
            return Point(x, x)

        def __call__(self) -> Point:
            return Point(0, 0)

    maker = Maker()
    assert return_plan(maker.point) is plan_of(Point)
    assert return_plan(functools.partial(maker.point, 1)) is plan_of(Point)
    assert return_plan(maker) is plan_of(Point)


def test_a_decorated_function_has_the_plan_of_the_function_it_wraps() -> None:
    import functools

    def logged(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            return fn(*args)

        return wrapper

    @logged
    def make() -> Point:
        return Point(0, 0)

    assert return_plan(make) is plan_of(Point)


def test_a_lambda_made_for_every_step_is_not_cached_once_per_lambda() -> None:
    from memable_log._core.typed import FN_PLANS

    def make(i: int) -> Any:
        return lambda: i

    return_plan(make(0))
    size = len(FN_PLANS)
    for i in range(100):
        assert return_plan(make(i)) is None
    assert len(FN_PLANS) == size
