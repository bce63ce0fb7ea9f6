"""Values of declared types <-> plain msgpack data. Pure.

A *plan* for a declared type converts a value of that type to plain data
(``to_plain``, before the codec encodes it) and plain data back to a value
of that type (``from_plain``, after the codec decodes it). ``plan_of(tp)``
is None for a type that needs no conversion: Any, None, bool, int, float,
str, bytes, and lists, dicts and unions of those. Those values take the
codec's path unchanged and are not checked against their annotation.

What is stored (docs/values.md): a dataclass as a map of its ``init``
fields; datetime, date, UUID and Decimal as their ISO or canonical text
(a datetime's ZoneInfo zone, after it in brackets, as RFC 9557 has it);
an Enum as its value; tuples, sets and frozensets as arrays; a pydantic
model as its ``model_dump(mode="python")`` with the types above made plain
(``model_validate`` reads it back). The journal never names a class: the
reader's declared type says what to build.

A value that does not fit raises ``Mismatch`` with the path inside the
value where it does not. ``return_plan(fn)`` is the plan of a function's
return annotation (the awaited type of an async function), cached per
function object; an annotation that cannot be resolved counts as none.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import types
import typing
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo


class Mismatch(Exception):
    """A value does not fit its declared type; ``path`` says where in it."""

    def __init__(self, reason: str, path: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path

    def at(self, part: str) -> Mismatch:
        return Mismatch(self.reason, part + self.path)

    def __str__(self) -> str:
        return f"at {self.path}: {self.reason}" if self.path else self.reason


Convert = Callable[[Any], Any]
_ALL: frozenset[type] = frozenset({object})  # a shape that overlaps every other


class Plan:
    """How to convert one declared type; ``shape`` is the plain types it
    decodes from (used to tell the members of a union apart)."""

    __slots__ = ("from_plain", "name", "shape", "to_plain")

    def __init__(self, name: str, shape: frozenset[type], to_plain: Convert,
                 from_plain: Convert) -> None:
        self.name = name
        self.shape = shape
        self.to_plain = to_plain
        self.from_plain = from_plain


_PLAIN_SCALARS: dict[Any, frozenset[type]] = {
    bool: frozenset({bool}),
    int: frozenset({int}),
    float: frozenset({float, int}),
    str: frozenset({str}),
    bytes: frozenset({bytes}),
    type(None): frozenset({type(None)}),
    None: frozenset({type(None)}),
}
_PLANS: dict[Any, Plan | None] = {}
# Function object -> its return plan. Read directly by the step's hot path
# (context.py) with ``.get(fn, MISSING)``, then ``return_plan`` on a miss.
FN_PLANS: dict[Any, Plan | None] = {}
MISSING: Any = object()
_FN_PLANS_KEPT = 4096  # functions made on the fly (lambdas) would grow it for ever
# Code objects of functions with no return annotation: a lambda made anew
# for every step has the same code each time, and needs no plan.
_NO_RETURN: set[Any] = set()
_MISSING = MISSING


def plan_of(tp: Any) -> Plan | None:
    """The plan for ``tp``; None if values of it need no conversion.

    TypeError (naming the type) for a type that cannot be supported: a
    union whose members cannot be told apart when read back, a dataclass
    whose annotations cannot be resolved.
    """
    try:
        return _PLANS[tp]
    except KeyError:
        pass
    except TypeError:  # unhashable: not a type we know
        return None
    plan = _build(tp)
    _PLANS[tp] = plan
    return plan


def return_plan(fn: Any) -> Plan | None:
    """The plan of ``fn``'s return annotation, cached per function object."""
    try:
        plan = FN_PLANS.get(fn, _MISSING)
    except TypeError:  # an unhashable callable
        return _return_plan(fn)
    if plan is _MISSING:
        code = getattr(fn, "__code__", None)
        if code is not None and code in _NO_RETURN:
            return None
        plan = _return_plan(fn)
        if len(FN_PLANS) >= _FN_PLANS_KEPT:
            FN_PLANS.clear()
        FN_PLANS[fn] = plan
        if code is not None and "return" not in getattr(fn, "__annotations__", {"return": 0}):
            if len(_NO_RETURN) >= _FN_PLANS_KEPT:
                _NO_RETURN.clear()
            _NO_RETURN.add(code)
    return plan  # type: ignore[no-any-return]


def _return_plan(fn: Any) -> Plan | None:
    while hasattr(fn, "func") and not hasattr(fn, "__code__"):  # functools.partial
        fn = fn.func
    fn = getattr(fn, "__func__", fn)  # a bound method
    while hasattr(fn, "__wrapped__"):  # a decorator's wrapper (functools.wraps)
        fn = fn.__wrapped__
    annotations = getattr(fn, "__annotations__", None)
    if not isinstance(annotations, dict) or "return" not in annotations:
        if not hasattr(fn, "__code__") and callable(fn) and not isinstance(fn, type):
            call = getattr(type(fn), "__call__", None)  # noqa: B004 (an object with __call__)
            if call is not None and hasattr(call, "__code__"):
                return _return_plan(call)
        return None
    ret = annotations["return"]
    if isinstance(ret, str):
        ret = _resolve(fn, ret)
        if ret is _MISSING:
            return None
    origin: Any = typing.get_origin(ret)
    if origin in (Awaitable, Coroutine) and typing.get_args(ret):
        ret = typing.get_args(ret)[-1]
    return plan_of(ret)


def _resolve(fn: Any, text: str) -> Any:
    """A string annotation evaluated where ``fn`` was defined (_MISSING if it cannot be)."""
    scope: dict[str, Any] = {}
    code = getattr(fn, "__code__", None)
    closure = getattr(fn, "__closure__", None)
    if code is not None and closure:
        for name, cell in zip(code.co_freevars, closure, strict=False):
            try:
                scope[name] = cell.cell_contents
            except ValueError:  # an empty cell
                pass
    try:
        return eval(text, getattr(fn, "__globals__", {}), scope)  # an annotation's text
    except Exception:
        return _MISSING


# -- building plans ----------------------------------------------------------------


def _build(tp: Any) -> Plan | None:
    if tp is Any or tp is object or tp in _PLAIN_SCALARS:
        return None
    if isinstance(tp, typing.TypeVar):
        return None
    supertype = getattr(tp, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return plan_of(supertype)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return plan_of(args[0])
    if origin is typing.Literal:
        return None
    if origin is typing.Union or origin is types.UnionType:
        return _union(tp, args)
    if origin is tuple or tp is tuple:
        return _tuple(tp, args)
    if origin in (list, Sequence) or tp in (list, Sequence):
        return _list(tp, args[0] if args else Any)
    if origin in (set, frozenset, AbstractSet) or tp in (set, frozenset, AbstractSet):
        return _set(tp, frozenset if frozenset in (origin, tp) else set,
                    args[0] if args else Any)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return _dict(tp, *(args or (Any, Any)))
    if not isinstance(tp, type):
        return None  # another typing construct: no conversion
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp)
    if issubclass(tp, enum.Enum):
        return _enum(tp)
    if issubclass(tp, datetime):
        return _text(tp, _datetime_parser(tp), _datetime_text)
    if issubclass(tp, date):
        return _text(tp, tp.fromisoformat, date.isoformat, refuse=datetime)
    if issubclass(tp, UUID):
        return _text(tp, UUID, str)
    if issubclass(tp, Decimal):
        return _text(tp, Decimal, str)
    pydantic = sys.modules.get("pydantic")  # a model's class means pydantic is imported
    if pydantic is not None and issubclass(tp, pydantic.BaseModel):
        return _pydantic(tp)
    return None  # a class the codec's hooks may know: no conversion


def name_of(tp: Any) -> str:
    """``tp`` as a person writes it: ``list[datetime]``, ``int | None``."""
    return _name(tp)


def _name(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__qualname__
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(_name(arg) for arg in args)
    if origin is not None and args:
        return f"{_name(origin)}[{', '.join('...' if a is Ellipsis else _name(a) for a in args)}]"
    return repr(tp).replace("typing.", "")


def _shape(tp: Any, plan: Plan | None) -> frozenset[type]:
    if plan is not None:
        return plan.shape
    if tp in _PLAIN_SCALARS:
        return _PLAIN_SCALARS[tp]
    origin = typing.get_origin(tp) or tp
    if origin in (list, Sequence):
        return frozenset({list})
    if origin in (dict, Mapping):
        return frozenset({dict})
    if origin is typing.Literal:
        return frozenset(type(arg) for arg in typing.get_args(tp))
    return _ALL


def _fits(value: Any, shape: frozenset[type]) -> bool:
    if shape is _ALL:
        return True
    if type(value) is tuple and list in shape:  # plain data: a tuple is stored as a list
        return True
    return type(value) in shape or (type(value) is int and float in shape and bool not in shape)


def _expected(tp: Any, value: Any) -> Mismatch:
    return Mismatch(f"expected {_name(tp)}, got {type(value).__qualname__} {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(tp: type, parse: Callable[[str], Any], show: Callable[[Any], str],
          refuse: type | None = None) -> Plan:
    """A type stored as text: datetime, date, UUID, Decimal."""

    def to_plain(value: Any) -> Any:
        if not isinstance(value, tp) or (refuse is not None and isinstance(value, refuse)):
            raise _expected(tp, value)
        return show(value)

    def from_plain(plain: Any) -> Any:
        if type(plain) is str:
            try:
                return parse(plain)
            except (ValueError, InvalidOperation) as exc:
                raise Mismatch(f"{plain!r} is not a {tp.__qualname__} ({exc})") from None
        if isinstance(plain, tp) and (refuse is None or not isinstance(plain, refuse)):
            return plain  # a value written through the codec's hooks
        raise _expected(tp, plain)

    return Plan(tp.__qualname__, frozenset({str}), to_plain, from_plain)


def _datetime_text(value: datetime) -> str:
    """ISO 8601; a zone of the tz database (ZoneInfo) follows in brackets, as
    RFC 9557 writes it, so it comes back as that zone, not as its offset."""
    text = value.isoformat()
    tz = value.tzinfo
    if isinstance(tz, ZoneInfo) and tz.key:
        return f"{text}[{tz.key}]"
    return text


def _datetime_parser(tp: type) -> Callable[[str], Any]:
    parse: Callable[[str], Any] = tp.fromisoformat  # type: ignore[attr-defined]

    def from_text(text: str) -> Any:
        if not text.endswith("]"):
            return parse(text)
        text, _, key = text[:-1].partition("[")
        at = parse(text)
        try:
            zone = ZoneInfo(key)
        except Exception as exc:  # not in this machine's tz database
            raise ValueError(f"unknown time zone {key!r} ({exc})") from None
        local = at.replace(tzinfo=zone)
        if local.utcoffset() != at.utcoffset():  # the second of an ambiguous hour
            local = local.replace(fold=1)
        return local

    return from_text


def _enum(tp: type[enum.Enum]) -> Plan:
    shape = frozenset(type(member.value) for member in tp)

    def to_plain(value: Any) -> Any:
        if not isinstance(value, tp):
            raise _expected(tp, value)
        return value.value

    def from_plain(plain: Any) -> Any:
        try:
            return tp(plain)
        except (ValueError, TypeError):
            raise Mismatch(f"{_short(plain)} is not a value of {tp.__qualname__}") from None

    return Plan(tp.__qualname__, shape, to_plain, from_plain)


def _items(plan: Plan | None, values: Iterable[Any], at: str) -> list[Any]:
    if plan is None:
        return list(values)
    convert = getattr(plan, at)
    out = []
    for i, item in enumerate(values):
        try:
            out.append(convert(item))
        except Mismatch as exc:
            raise exc.at(f"[{i}]") from None
    return out


def _list(tp: Any, item_tp: Any) -> Plan | None:
    item = plan_of(item_tp)
    if item is None:
        return None

    def to_plain(value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise _expected(tp, value)
        return _items(item, value, "to_plain")

    def from_plain(plain: Any) -> Any:
        if type(plain) is not list:
            raise _expected(tp, plain)
        return _items(item, plain, "from_plain")

    return Plan(_name(tp), frozenset({list}), to_plain, from_plain)


def _tuple(tp: Any, args: tuple[Any, ...]) -> Plan:
    if not args or (len(args) == 2 and args[1] is Ellipsis):
        item = plan_of(args[0]) if args else None

        def to_plain(value: Any) -> Any:
            if not isinstance(value, tuple | list):
                raise _expected(tp, value)
            return _items(item, value, "to_plain")

        def from_plain(plain: Any) -> Any:
            if type(plain) is not list:
                raise _expected(tp, plain)
            return tuple(_items(item, plain, "from_plain"))

        return Plan(_name(tp), frozenset({list}), to_plain, from_plain)
    if args == ((),):
        args = ()
    plans = [plan_of(arg) for arg in args]
    size = len(plans)

    def convert(values: Any, at: str) -> list[Any]:
        out = []
        for i, (plan, item) in enumerate(zip(plans, values, strict=True)):
            try:
                out.append(item if plan is None else getattr(plan, at)(item))
            except Mismatch as exc:
                raise exc.at(f"[{i}]") from None
        return out

    def to_plain_fixed(value: Any) -> Any:
        if not isinstance(value, tuple | list) or len(value) != size:
            raise _expected(tp, value)
        return convert(value, "to_plain")

    def from_plain_fixed(plain: Any) -> Any:
        if type(plain) is not list or len(plain) != size:
            raise _expected(tp, plain)
        return tuple(convert(plain, "from_plain"))

    return Plan(_name(tp), frozenset({list}), to_plain_fixed, from_plain_fixed)


def _set(tp: Any, kind: type, item_tp: Any) -> Plan:
    item = plan_of(item_tp)

    def to_plain(value: Any) -> Any:
        if not isinstance(value, set | frozenset):
            raise _expected(tp, value)
        try:  # sorted when it can be: the same set writes the same bytes
            ordered: Iterable[Any] = sorted(value)
        except TypeError:
            ordered = value
        return _items(item, ordered, "to_plain")

    def from_plain(plain: Any) -> Any:
        if type(plain) is not list:
            if type(plain) is kind:
                return plain  # a value written through the codec's hooks
            raise _expected(tp, plain)
        try:
            return kind(_items(item, plain, "from_plain"))
        except TypeError as exc:  # an unhashable item
            raise Mismatch(f"cannot be a {kind.__qualname__}: {exc}") from None

    return Plan(_name(tp), frozenset({list}), to_plain, from_plain)


def _dict(tp: Any, key_tp: Any, value_tp: Any) -> Plan | None:
    key, item = plan_of(key_tp), plan_of(value_tp)
    if key is None and item is None:
        return None

    def convert(mapping: Mapping[Any, Any], at: str) -> dict[Any, Any]:
        to_key = (lambda k: k) if key is None else getattr(key, at)
        to_item = (lambda v: v) if item is None else getattr(item, at)
        out = {}
        for k, v in mapping.items():
            try:
                out[to_key(k)] = to_item(v)
            except Mismatch as exc:
                raise exc.at(f"[{_short(k)}]") from None
            except TypeError as exc:  # a key read back that cannot be a key
                raise Mismatch(str(exc), f"[{_short(k)}]") from None
        return out

    def to_plain(value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise _expected(tp, value)
        return convert(value, "to_plain")

    def from_plain(plain: Any) -> Any:
        if type(plain) is not dict:
            raise _expected(tp, plain)
        return convert(plain, "from_plain")

    return Plan(_name(tp), frozenset({dict}), to_plain, from_plain)


def _union(tp: Any, args: tuple[Any, ...]) -> Plan | None:
    plans = [plan_of(arg) for arg in args]
    if all(plan is None for plan in plans):
        return None
    shapes = [_shape(arg, plan) for arg, plan in zip(args, plans, strict=True)]
    by_type: dict[type, Plan | None] = {}
    for i, (plan, shape) in enumerate(zip(plans, shapes, strict=True)):
        for j in range(i + 1, len(args)):
            if (plan is not None or plans[j] is not None) and (
                shape is _ALL or shapes[j] is _ALL or shape & shapes[j]
            ):
                raise TypeError(
                    f"the union {_name(tp)} cannot be read back: {_name(args[i])} and "
                    f"{_name(args[j])} are both stored as "
                    f"{'/'.join(sorted(t.__name__ for t in shape & shapes[j])) or 'anything'}; "
                    "use a union whose members are stored differently, or one type"
                )
        for kind in shape:
            by_type.setdefault(kind, plan)
    members = list(zip(args, plans, shapes, strict=True))
    members.sort(key=lambda member: member[1] is None)  # the plans first: they check

    def to_plain(value: Any) -> Any:
        refused = []
        for _, plan, shape in members:
            if plan is None:
                if _fits(value, shape):
                    return value
                continue
            try:
                return plan.to_plain(value)
            except Mismatch as exc:
                refused.append(exc)
        if len(refused) == 1 and refused[0].path:  # it is of that member, wrong inside
            raise refused[0]
        raise _expected(tp, value)

    def from_plain(plain: Any) -> Any:
        kind = type(plain)
        if kind in by_type:
            plan = by_type[kind]
            return plain if plan is None else plan.from_plain(plain)
        if kind is int and float in by_type:
            return plain
        raise _expected(tp, plain)

    shape = frozenset().union(*shapes)
    return Plan(_name(tp), shape, to_plain, from_plain)



def _dataclass(tp: type) -> Plan:
    fields: list[tuple[str, Plan | None]] = []
    name = tp.__qualname__

    def to_plain(value: Any) -> Any:
        if not isinstance(value, tp):
            raise _expected(tp, value)
        out = {}
        for field, plan in fields:
            item = getattr(value, field)
            if plan is not None:
                try:
                    item = plan.to_plain(item)
                except Mismatch as exc:
                    raise exc.at(f".{field}") from None
            out[field] = item
        return out

    def from_plain(plain: Any) -> Any:
        if type(plain) is not dict:
            if isinstance(plain, tp):
                return plain  # a value written through the codec's hooks
            raise _expected(tp, plain)
        kwargs = {}
        for field, plan in fields:
            if field in plain:
                item = plain[field]
                if plan is not None:
                    try:
                        item = plan.from_plain(item)
                    except Mismatch as exc:
                        raise exc.at(f".{field}") from None
                kwargs[field] = item
        try:
            return tp(**kwargs)
        except Exception as exc:  # a required field missing, __post_init__ refusing
            raise Mismatch(f"cannot build {name} from {_short(plain)}: "
                           f"{type(exc).__name__}: {exc}") from None

    plan = Plan(name, frozenset({dict}), to_plain, from_plain)
    _PLANS[tp] = plan  # before the fields: a dataclass may hold itself
    try:
        hints = typing.get_type_hints(tp)
        for field in dataclasses.fields(tp):
            if field.init:
                fields.append((field.name, plan_of(hints.get(field.name, Any))))
    except Exception as exc:
        del _PLANS[tp]
        raise TypeError(f"the dataclass {name}'s field annotations cannot be resolved "
                        f"({type(exc).__name__}: {exc}); define the types it names at "
                        "module level") from None
    return plan


def _pydantic(tp: Any) -> Plan:
    def to_plain(value: Any) -> Any:
        if not isinstance(value, tp):
            raise _expected(tp, value)
        return loose(value.model_dump(mode="python"))

    def from_plain(plain: Any) -> Any:
        if isinstance(plain, tp):
            return plain
        try:
            return tp.model_validate(plain)
        except Exception as exc:  # pydantic's ValidationError
            raise Mismatch(f"{tp.__qualname__}.model_validate refused it: {exc}") from None

    return Plan(tp.__qualname__, frozenset({dict}), to_plain, from_plain)


def loose(value: Any) -> Any:
    """``value`` made plain by the types of its parts (a pydantic dump): the
    encodings above; a part of another type stays as it is."""
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return value
    if kind is dict:
        return {loose(k): loose(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [loose(item) for item in value]
    if isinstance(value, set | frozenset):
        try:
            return [loose(item) for item in sorted(value)]
        except TypeError:
            return [loose(item) for item in value]
    if isinstance(value, enum.Enum):
        return loose(value.value)
    if isinstance(value, datetime):
        return value.isoformat()  # pydantic reads no zone name: its offset
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, UUID | Decimal):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: loose(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def decode_as(tp: Any, plain: Any) -> Any:
    """``plain`` as a value of ``tp`` (Mismatch if it does not fit): a plan's
    ``from_plain``, or for a type needing no conversion, ``plain`` itself,
    checked if ``tp`` is a scalar type (the declared type of a wait or a
    result, read once; a step's plain values are not checked)."""
    plan = plan_of(tp)
    if plan is not None:
        return plan.from_plain(plain)
    shape = _PLAIN_SCALARS.get(tp)
    if shape is not None and not _fits(plain, shape):
        raise _expected(tp, plain)
    return plain
