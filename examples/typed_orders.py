"""Typed values: dataclasses, datetimes, Decimals and UUIDs with no codec.

Run it: ``python examples/typed_orders.py``. A workflow prices an order
(a step returning a dataclass), waits for a payment (a suspension decoded
into a dataclass), starts a child workflow for the receipt, and returns
it; ``engine.result`` reads it back as a ``Receipt``. The workflow waits
for its child out of memory and runs again from the top when the child
ends: ``price`` comes from the journal then, as the same ``Quote``.

``mypy --strict`` checks it (tests/typing/): each ``run(fn, ...)`` has
``fn``'s return type and its arguments are checked against ``fn``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from uuid import UUID, uuid4

import trio

from memable_log import Context, Engine


@dataclass(frozen=True)
class Line:
    sku: str
    quantity: int
    unit_price: Decimal


@dataclass
class Quote:
    order: UUID
    lines: tuple[Line, ...]
    total: Decimal
    valid_until: datetime


@dataclass
class Payment:
    amount: Decimal
    paid_at: datetime


@dataclass
class Receipt:
    order: UUID
    paid: Payment
    skus: frozenset[str]


def price(order: UUID, skus: list[str], quantity: int) -> Quote:
    print(f"  price    ran: {len(skus)} lines")
    lines = tuple(Line(sku, quantity, Decimal("2.50")) for sku in skus)
    total = sum((line.unit_price * line.quantity for line in lines), Decimal(0))
    return Quote(order, lines, total, datetime(2030, 1, 1, tzinfo=UTC))


async def receipt(ctx: Context) -> Receipt:
    quote, payment = ctx.input["quote"], ctx.input["payment"]
    return Receipt(UUID(quote["order"]), Payment(Decimal(payment["amount"]),
                                                  datetime.fromisoformat(payment["paid_at"])),
                   frozenset(line["sku"] for line in quote["lines"]))


async def checkout(ctx: Context) -> Receipt:
    quote = await ctx.step("price").run(price, UUID(ctx.input), ["apple", "pear"], 2)
    print(f"  checkout sees a {type(quote).__name__}: total {quote.total}, "
          f"valid until {quote.valid_until:%Y-%m-%d}")
    payment = await ctx.suspend("payment", type=Payment, status="waiting for payment")
    return await ctx.child("receipt", receipt, {
        "quote": {"order": str(quote.order), "lines": [{"sku": line.sku} for line in quote.lines]},
        "payment": {"amount": str(payment.amount), "paid_at": payment.paid_at.isoformat()},
    })


async def main(path: Path) -> None:
    engine = Engine.builder().open(path).build()
    engine.register("checkout", checkout)
    engine.register("receipt", receipt)
    async with engine:
        order = uuid4()
        instance_id = await engine.invoke("checkout", str(order))
        # A signal for a wait not reached yet is kept for it.
        await engine.signal("checkout", instance_id, "payment",
                            {"amount": "10.00", "paid_at": "2026-12-07T10:00:00+00:00"})
        done = await engine.result(instance_id, Receipt)
        print(f"  -> {type(done).__name__} for order {done.order == order}: paid "
              f"{done.paid.amount} at {done.paid.paid_at:%H:%M %Z}, skus {sorted(done.skus)}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, Path(tmp) / "orders.memable")
