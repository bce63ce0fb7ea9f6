"""Payloads sent without a declared type (signals, inputs, children's inputs) are stored
as typed values are (docs/values.md), so the receiver's declared type builds them back;
fan_out and wait_child decode their children's results into the declared type."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from support.engine import KINDS, Home, wait
from support.suspend import until_state

from memable_log import Context, NotSerializable, WorkflowFailed


@dataclass(frozen=True)
class Payment:
    amount: Decimal
    paid_at: datetime
    ref: UUID


PAYMENT = Payment(Decimal("10.50"), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), UUID(int=7))
PLAIN = {"amount": "10.50", "paid_at": "2026-01-02T03:04:05+00:00",
         "ref": "00000000-0000-0000-0000-000000000007"}


@pytest.fixture(params=KINDS)
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Home:
    return Home(request.param, tmp_path)


@pytest.fixture(params=[kind for kind in KINDS if kind != "reentered"])
def own(request: pytest.FixtureRequest, tmp_path: Path) -> Home:
    return Home(request.param, tmp_path)


async def test_a_signal_payload_of_a_declared_type_is_sent_as_a_typed_value(home: Home) -> None:
    got: dict[str, Any] = {}  # each re-run from the top writes them again

    async def wf(ctx: Context) -> None:
        got["paid"] = await ctx.suspend("paid", type=Payment)
        got["raw"] = await ctx.suspend("raw")
        got["tags"] = await ctx.suspend("tags", type=set[str])

    async with home.engine({"wf": wf}) as engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        await engine.signal("wf", iid, "paid", PAYMENT)
        await until_state(engine, iid, "suspended")
        await engine.signal("wf", iid, "raw", PAYMENT)  # no type: its plain form
        await until_state(engine, iid, "suspended")
        await engine.signal("wf", iid, "tags", {"b", "a"})
        await wait(engine, iid)
    assert got == {"paid": PAYMENT, "raw": PLAIN, "tags": {"a", "b"}}


async def test_an_input_of_a_declared_type_is_sent_as_a_typed_value(home: Home) -> None:
    seen: dict[str, Any] = {}

    async def child(ctx: Context) -> None:
        seen["child"] = ctx.input

    async def wf(ctx: Context) -> None:
        seen["parent"] = ctx.input
        await ctx.child("c", "child", {"when": date(2026, 3, 4), "pay": PAYMENT})

    async with home.engine({"wf": wf, "child": child}) as engine:
        await wait(engine, await engine.invoke("wf", PAYMENT))
    assert seen == {"parent": PLAIN, "child": {"when": "2026-03-04", "pay": PLAIN}}


async def test_a_payload_of_another_class_is_still_refused_naming_it(home: Home) -> None:
    class Opaque:
        pass

    async def wf(ctx: Context) -> None:
        await ctx.suspend("k")

    async with home.engine({"wf": wf}) as engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        with pytest.raises(NotSerializable, match=r"signal 'k'.*Opaque"):
            await engine.signal("wf", iid, "k", Opaque())
        with pytest.raises(NotSerializable, match="input of workflow 'wf'"):
            await engine.invoke("wf", [Opaque()])


async def priced(ctx: Context) -> Payment:
    return Payment(Decimal(ctx.input), PAYMENT.paid_at, PAYMENT.ref)


async def test_fan_out_decodes_each_result_into_the_workflow_s_return_type(own: Home) -> None:
    got: dict[str, Any] = {}

    async def parent(ctx: Context) -> None:
        got["f"] = await ctx.fan_out("f", priced, ["1.10", "2.20"])
        got["g"] = await ctx.fan_out("g", "priced", ["3.30"])  # by name: plain

    async with own.engine({"parent": parent, "priced": priced}) as engine:
        await wait(engine, await engine.invoke("parent"))
    assert got["f"] == [Payment(Decimal("1.10"), PAYMENT.paid_at, PAYMENT.ref),
                        Payment(Decimal("2.20"), PAYMENT.paid_at, PAYMENT.ref)]
    assert got["g"] == [{**PLAIN, "amount": "3.30"}]


async def test_wait_child_decodes_into_type_and_names_the_key_when_it_does_not_fit(
    own: Home,
) -> None:
    got: dict[str, Any] = {}

    async def parent(ctx: Context) -> None:
        await ctx.start_child("a", priced, "4.40")
        got["a"] = await ctx.wait_child("a", type=Payment)
        await ctx.start_child("b", priced, "5.50")
        await ctx.wait_child("b", type=date)

    async with own.engine({"parent": parent, "priced": priced}) as engine:
        iid = await engine.invoke("parent")
        with pytest.raises(WorkflowFailed) as info:
            await wait(engine, iid)
    assert got == {"a": Payment(Decimal("4.40"), PAYMENT.paid_at, PAYMENT.ref)}
    assert info.value.error_type == "TypeMismatch"
    assert f"child 'b' of instance {iid!r}" in str(info.value)
