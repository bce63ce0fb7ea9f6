"""Typed values in the engine (SPEC-NEXT §7): steps, suspensions, children, results.

A step's value is decoded into its function's return annotation; the first
run and every replay return equal values of that type. Nothing in the
journal names a class. A value that does not fit fails naming the key: at
encode (NotSerializable, nothing written) or at decode (TypeMismatch).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pydantic
import pytest
from support.engine import KINDS, Home, of_type, wait
from support.suspend import until_state

from memable_log import Context, TypeMismatch, WorkflowFailed


@dataclass(frozen=True)
class Line:
    sku: str
    qty: int
    price: Decimal


@dataclass
class Invoice:
    id: UUID
    issued: datetime
    due: date
    lines: tuple[Line, ...]
    tags: set[str]


class Payment(pydantic.BaseModel):
    invoice: UUID
    paid_at: datetime
    amount: Decimal


class Untyped:
    """A dataclass-like class the library knows nothing of."""


@dataclass
class NoAnnotation:
    n: int


INVOICE = Invoice(
    id=UUID(int=42), issued=datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC),
    due=date(2026, 2, 1), lines=(Line("a", 2, Decimal("9.99")),), tags={"x", "y"},
)
CALLS: list[str] = []


def make_invoice() -> Invoice:
    CALLS.append("invoice")
    return INVOICE


async def pay(invoice: Invoice) -> Payment:
    CALLS.append("pay")
    return Payment(invoice=invoice.id, paid_at=invoice.issued, amount=Decimal("19.98"))


def when() -> datetime:
    return datetime(2026, 5, 6, 7, 8, 9, 10)  # naive


async def billing(ctx: Context) -> Invoice:
    invoice = await ctx.step("invoice").run(make_invoice)
    payment = await ctx.step("pay").run(pay, invoice)
    at = await ctx.step("when").run(when)
    ctx_seen.append((invoice, payment, at))
    return invoice


ctx_seen: list[tuple[Invoice, Payment, datetime]] = []


@pytest.fixture(params=KINDS)
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Home:
    CALLS.clear()
    ctx_seen.clear()
    return Home(request.param, tmp_path)


# A workflow's own return annotation types its result: the re-entered form
# registers a dispatching wrapper (support/engine.py) that has none.
@pytest.fixture(params=[kind for kind in KINDS if kind != "reentered"])
def own(request: pytest.FixtureRequest, tmp_path: Path) -> Home:
    CALLS.clear()
    ctx_seen.clear()
    return Home(request.param, tmp_path)


async def test_steps_return_their_declared_types(own: Home) -> None:
    async with own.engine({"billing": billing}) as engine:
        iid = await engine.invoke("billing")
        assert await engine.result(iid, Invoice) == INVOICE
    assert CALLS == ["invoice", "pay"]
    [(invoice, payment, at)] = ctx_seen
    assert invoice == INVOICE
    assert type(invoice.lines) is tuple
    assert type(invoice.lines[0]) is Line
    assert type(invoice.tags) is set
    assert type(payment) is Payment
    assert payment.amount == Decimal("19.98")
    assert at == datetime(2026, 5, 6, 7, 8, 9, 10)
    assert at.tzinfo is None


async def test_a_replay_returns_the_same_typed_values_as_the_first_run(home: Home) -> None:
    async def wf(ctx: Context) -> None:
        await billing(ctx)
        await ctx.suspend("go")

    async with home.engine({"wf": wf}) as engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
    async with home.engine({"wf": wf}) as engine:  # a new lifetime: replayed from the journal
        await engine.signal("wf", iid, "go", None)
        await wait(engine, iid)
    assert CALLS == ["invoice", "pay"]
    first, replayed = ctx_seen
    assert replayed == first
    assert [type(v) for v in replayed] == [Invoice, Payment, datetime]
    assert replayed[0] is not first[0]
    assert type(replayed[0].lines[0].price) is Decimal


async def test_the_journal_names_no_class(own: Home) -> None:
    async with own.engine({"billing": billing}) as engine:
        await engine.result(await engine.invoke("billing"), Invoice)
    raw = repr([rec.fields for rec in own.records()])
    for name in ("Invoice", "Line", "Payment", "UUID", "Decimal", "datetime"):
        assert name not in raw
    done = of_type(own.records(), "step_done", "invoice")
    assert done


async def test_a_value_that_does_not_fit_its_annotation_is_refused_naming_the_key(
    home: Home,
) -> None:
    def wrong() -> Invoice:
        return {"id": 1}  # type: ignore[return-value]

    async def wf(ctx: Context) -> None:
        await ctx.step("wrong").run(wrong)

    async with home.engine({"wf": wf}) as engine:
        iid = await engine.invoke("wf")
        with pytest.raises(WorkflowFailed) as info:
            await wait(engine, iid)
    assert info.value.error_type == "NotSerializable"
    assert "step 'wrong'" in str(info.value)
    assert "expected Invoice, got dict" in str(info.value)
    assert not of_type(home.records(), "step_done")


async def test_a_nested_value_that_does_not_fit_names_where(home: Home) -> None:
    def wrong() -> Invoice:
        return Invoice(UUID(int=1), datetime(2026, 1, 1), "tomorrow",  # type: ignore[arg-type]
                       (), set())

    async def wf(ctx: Context) -> None:
        await ctx.step("wrong").run(wrong)

    async with home.engine({"wf": wf}) as engine:
        with pytest.raises(WorkflowFailed, match=r"at \.due: expected date, got str 'tomorrow'"):
            await wait(engine, await engine.invoke("wf"))
    assert not of_type(home.records(), "step_done")


async def test_a_recorded_value_that_no_longer_fits_raises_type_mismatch(home: Home) -> None:
    def old() -> dict[str, Any]:
        return {"id": "not a uuid"}

    def new() -> Invoice:
        raise AssertionError("memoised: never called")

    async def first(ctx: Context) -> Any:
        await ctx.step("invoice").run(old)
        await ctx.suspend("go")

    async def second(ctx: Context) -> Any:  # the code changed the step's type
        try:
            await ctx.step("invoice").run(new)
        except TypeMismatch as exc:
            return str(exc)
        return "decoded"

    async with home.engine({"wf": first}) as engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
    async with home.engine({"wf": second}) as engine:
        await engine.signal("wf", iid, "go", None)
        message = await wait(engine, iid)
    assert message.startswith(f"step 'invoice' of instance {iid!r}: the recorded value does "
                              "not fit the declared type Invoice")
    assert "at .id" in message


async def test_set_and_dataclass_without_a_declared_type_are_refused(home: Home) -> None:
    def a_set():  # no annotation: plain msgpack only  # type: ignore[no-untyped-def]
        return {1, 2}

    def a_dataclass():  # type: ignore[no-untyped-def]
        return NoAnnotation(1)

    def a_tuple_keyed() -> dict[Any, int]:
        return {(1, 2): 3}

    for fn, name in ((a_set, "set"), (a_dataclass, "NoAnnotation"), (a_tuple_keyed, "dict")):
        async def wf(ctx: Context, fn: Any = fn) -> None:
            await ctx.step("s").run(fn)

        async with home.engine({f"wf-{name}": wf}) as engine:
            with pytest.raises(WorkflowFailed) as info:
                await wait(engine, await engine.invoke(f"wf-{name}"))
        assert info.value.error_type == "NotSerializable"
        assert f"type {name}" in str(info.value)
    assert not of_type(home.records(), "step_done")


async def test_an_unsupported_class_in_an_annotation_takes_the_plain_path(home: Home) -> None:
    def make() -> Untyped:
        return Untyped()

    async def wf(ctx: Context) -> None:
        await ctx.step("s").run(make)

    async with home.engine({"wf": wf}) as engine:
        with pytest.raises(WorkflowFailed, match=r"NotSerializable.*type Untyped"):
            await wait(engine, await engine.invoke("wf"))


async def test_an_ambiguous_union_fails_the_step_before_it_runs(home: Home) -> None:
    def make() -> str | datetime:
        CALLS.append("make")
        return "x"

    async def wf(ctx: Context) -> None:
        await ctx.step("s").run(make)

    async with home.engine({"wf": wf}) as engine:
        with pytest.raises(WorkflowFailed, match=r"step 's'.*str \| datetime cannot be read"):
            await wait(engine, await engine.invoke("wf"))
    assert CALLS == []


async def test_suspend_decodes_its_payload_into_type(home: Home) -> None:
    got: list[Any] = []

    async def wf(ctx: Context) -> None:
        got.append(await ctx.suspend("paid", type=Payment))
        got.append(await ctx.suspend("when", type=date))

    async with home.engine({"wf": wf}) as engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        await engine.signal("wf", iid, "paid", {"invoice": str(UUID(int=7)),
                                          "paid_at": "2026-01-01T00:00:00+00:00",
                                          "amount": "5.00"})
        await until_state(engine, iid, "suspended")  # now on "when"
        await engine.signal("wf", iid, "when", "2026-09-09")
        await wait(engine, iid)
    payment = got[-2]
    assert isinstance(payment, Payment)
    assert payment.invoice == UUID(int=7)
    assert payment.amount == Decimal("5.00")
    assert got[-1] == date(2026, 9, 9)


async def test_a_payload_that_does_not_fit_raises_type_mismatch_naming_the_key(
    home: Home,
) -> None:
    async def wf(ctx: Context) -> None:
        await ctx.suspend("when", type=date)

    async with home.engine({"wf": wf}) as engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        await engine.signal("wf", iid, "when", "someday")
        with pytest.raises(WorkflowFailed) as info:
            await wait(engine, iid)
    assert info.value.error_type == "TypeMismatch"
    assert "signal 'when'" in str(info.value)
    assert "'someday' is not a date" in str(info.value)


async def child_invoice(ctx: Context) -> Invoice:
    return INVOICE


async def test_a_child_s_result_is_decoded_into_its_workflow_s_return_type(own: Home) -> None:
    got: list[Any] = []

    async def parent(ctx: Context) -> None:
        got.append(await ctx.child("c", child_invoice))

    async with own.engine({"parent": parent, "child": child_invoice}) as engine:
        iid = await engine.invoke("parent")
        await wait(engine, iid)
        assert await engine.result(f"{iid}/c", Invoice) == INVOICE
    assert got == [INVOICE]
    assert type(got[0].lines) is tuple


async def test_result_that_does_not_fit_raises_type_mismatch(home: Home) -> None:
    async def wf(ctx: Context) -> int:
        return 5

    async with home.engine({"wf": wf}) as engine:
        iid = await engine.invoke("wf")
        assert await engine.result(iid, int) == 5
        with pytest.raises(TypeMismatch, match=f"result of instance {iid!r}.*expected Invoice"):
            await engine.result(iid, Invoice)
        with pytest.raises(TypeMismatch, match="expected str"):
            await engine.result(iid, str)


async def test_a_workflow_result_that_does_not_fit_fails_it(own: Home) -> None:
    async def wf(ctx: Context) -> Invoice:
        return "nope"  # type: ignore[return-value]

    async with own.engine({"wf": wf}) as engine:
        with pytest.raises(WorkflowFailed, match="does not fit its declared type"):
            await wait(engine, await engine.invoke("wf"))


@dataclass(frozen=True)
class Hooked:
    x: int


def hooked_encode(obj: Any) -> tuple[str, Any]:
    if isinstance(obj, Hooked):
        return "hooked", obj.x
    raise TypeError(type(obj).__name__)


def hooked_decode(tag: str, plain: Any) -> Any:
    return Hooked(plain)


def make_hooked() -> Hooked:
    CALLS.append("hooked")
    return Hooked(3)


async def with_hooks(ctx: Context) -> Hooked:
    value = await ctx.step("h").run(make_hooked)
    at = await ctx.step("when").run(when)  # not the hooks' type: converted by its annotation
    ctx_seen.append((value, at))  # type: ignore[arg-type]
    await ctx.suspend("go")
    return value


async def test_the_builder_s_codec_hooks_come_first_for_a_declared_type(own: Home) -> None:
    hooks = (hooked_encode, hooked_decode)
    async with own.engine({"wf": with_hooks}, codec=hooks) as engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
    async with own.engine({"wf": with_hooks}, codec=hooks) as engine:
        await engine.signal("wf", iid, "go", None)
        assert await wait(engine, iid) == Hooked(3)  # untyped wait: the hooks' object, as before
    assert CALLS == ["hooked"]
    assert ctx_seen == [(Hooked(3), when()), (Hooked(3), when())]
    # written through the hooks (their tag in the blob), as before types were read
    assert b"hooked" in of_type(own.records(), "step_done", "h")[0].fields["value"]
