"""Record fields by name, and what a new record type must touch.

_core/records.py names every field position (``rec[r.KEY]``,
``rec[r.STEP_DONE_VALUE]``); each name must point at the SCHEMA field it
says, and every SCHEMA field must have a name. Then the mechanical part of
docs/design.md's "Adding a record type" checklist: every record type is
applied by the index, named in docs/format.md, known to the lifecycle (it
has a condition or never changes the state), and either written by
compaction or superseded by what it writes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from support.compaction import history

from memable_log._compaction import compactor
from memable_log._core import index as ix
from memable_log._core import lifecycle as lc
from memable_log._core import records as r

FORMAT_MD = Path(__file__).resolve().parents[2] / "docs" / "format.md"

COMMON = {"TYPE": 0, "SEQ": 1, "TS": 2, "INSTANCE": 3}
# A constant's prefix names its record type; the rest names the field, as
# SCHEMA spells it but for these two shortenings.
PREFIXES = {name.upper() + "_": rtype for rtype, name in r.TYPE_NAMES.items()}
PREFIXES["IMAGE_"] = r.STATE_IMAGE
PREFIXES["IMAGE_V1_"] = r.STATE_IMAGE_V1
# Version 1 types whose fields sit where their version 2 namesakes' do, and
# are read with the same constants.
SAME_AS = {r.SUSPENDED_V1: r.SUSPENDED, r.TIMER_SET_V1: r.TIMER_SET}
# Version 2 types whose fields are the first ones of their version 3 namesakes'.
PREFIX_OF = {r.STEP_DONE_V2: r.STEP_DONE, r.STEP_FAILED_V2: r.STEP_FAILED}
SHARED = {(r.STATE_IMAGE_V1, "state")}  # IMAGE_STATE reads both images' state
FIELD_ALIASES = {"type": "error_type", "deadline": "deadline_ms"}


def field_constants() -> dict[str, int]:
    """Every field-position constant in records.py: the upper-case ints that
    name no record type, less the common four, FIELDS, KEY and the seal's."""
    type_names = {name.upper() for name in r.TYPE_NAMES_WITH_SEAL.values()}
    skip = {*COMMON, "FIELDS", "KEY", "SEAL_NEXT_SEQ"}
    return {
        name: value for name, value in vars(r).items()
        if name.isupper() and not name.startswith("_") and type(value) is int
        and name not in type_names | skip
    }


def named_field(constant: str) -> tuple[int, str]:
    """(record type, SCHEMA field name) that a constant's name says."""
    prefixes = [p for p in PREFIXES if constant.startswith(p)]
    assert prefixes, f"{constant} does not begin with a record type's name"
    prefix = max(prefixes, key=len)
    field = constant[len(prefix):].lower()
    return PREFIXES[prefix], FIELD_ALIASES.get(field, field)


def sample(rtype: int) -> list[Any]:
    """A well-formed record of ``rtype`` whose fields all differ."""
    values: dict[type, Any] = {
        str: "s", bytes: b"b", int: 1, dict: {}, list: ["k"], bool: True,
    }
    fields = []
    for i, (_, allowed) in enumerate(r.SCHEMA[rtype][1]):
        value = values[allowed[0]]
        fields.append(value * (i + 1) if type(value) in (str, bytes) else value)
    if rtype in (r.STATE_IMAGE, r.STATE_IMAGE_V1):
        fields[0] = lc.RUNNING
    if rtype == r.STATE_IMAGE:
        fields[1] = []
    if rtype == r.STEP_FAILED:
        fields[-1] = [["E", "m"]]
    if rtype == r.CHILD_ENDED:
        fields[1] = lc.COMPLETED
    instance = r.ENGINE if rtype in r.ENGINE_LEVEL else "inst"  # schedules, debounce
    return r.check(r.make(rtype, 123, instance, *fields))


# -- field names ----------------------------------------------------------------------


def test_the_common_fields_are_named_where_every_record_has_them() -> None:
    rec = r.make(r.CANCELLED, 123, "inst")
    rec[r.SEQ] = 7
    view = r.view(rec, 1, 40)
    assert {name: getattr(r, name) for name in COMMON} == COMMON
    assert (rec[r.TYPE], view.seq, view.ts_ms, view.instance) == (
        r.CANCELLED, rec[r.SEQ], rec[r.TS], rec[r.INSTANCE],
    )
    assert len(COMMON) == r.FIELDS


def test_every_field_constant_names_the_schema_field_at_its_position() -> None:
    constants = field_constants()
    assert constants, "no field constants found"
    for constant, position in constants.items():
        rtype, field = named_field(constant)
        fields = [name for name, _ in r.SCHEMA[rtype][1]]
        assert field in fields, f"{constant}: {r.TYPE_NAMES[rtype]} has no field {field!r}"
        assert r.FIELDS + fields.index(field) == position, (
            f"{constant} is {position}, but {r.TYPE_NAMES[rtype]}.{field} is at "
            f"{r.FIELDS + fields.index(field)}"
        )


def test_key_is_the_first_field_of_every_record_that_has_a_key() -> None:
    keyed = {t for t, (_, fields) in r.SCHEMA.items() if "key" in dict(fields)}
    assert keyed == {
        r.STEP_DONE, r.STEP_FAILED, r.STEP_STARTED, r.SUSPENDED, r.SIGNALLED,
        r.TIMER_SET, r.TIMER_FIRED, r.SUSPEND_TIMED_OUT, r.FORGOT, r.SUSPENDED_V1,
        r.TIMER_SET_V1, r.PUBLISHED, r.CHILD_STARTED, r.CHILD_ENDED,
        r.STEP_DONE_V2, r.STEP_FAILED_V2, r.ATTEMPT_FAILED,
    }
    for rtype in keyed:
        assert r.SCHEMA[rtype][1][r.KEY - r.FIELDS][0] == "key"


def test_every_schema_field_has_a_constant_or_is_the_key() -> None:
    named = {named_field(constant) for constant in field_constants()}
    for rtype, (name, fields) in r.SCHEMA.items():
        assert rtype not in SAME_AS or r.SCHEMA[SAME_AS[rtype]][1] == fields
        assert rtype not in PREFIX_OF or r.SCHEMA[PREFIX_OF[rtype]][1][:len(fields)] == fields
        like = SAME_AS.get(rtype, PREFIX_OF.get(rtype, rtype))
        for field, _ in fields:
            assert field == "key" or (rtype, field) in SHARED or (like, field) in named, (
                f"{name}.{field} has no position constant in _core/records.py"
            )


def test_each_constant_reads_its_field_from_a_real_record() -> None:
    for constant, position in field_constants().items():
        rtype, field = named_field(constant)
        rec = sample(rtype)
        assert rec[position] == r.view(rec, 1, 40).fields[field], constant


def test_a_seal_holds_its_next_seq_at_seal_next_seq() -> None:
    seal = [r.SEAL, 41]
    assert r.check_seal(seal) == seal[r.SEAL_NEXT_SEQ] == 41
    assert r.check_seal([r.SEAL, True]) is None
    assert r.check_seal([r.SEAL, 41, 0]) is None


# -- adding a record type: what can be checked mechanically ------------------------------


def test_every_record_type_has_an_apply_function_in_the_index() -> None:
    assert set(r.SCHEMA) == ix.APPLIED


def test_every_record_type_is_named_in_format_md() -> None:
    text = FORMAT_MD.read_text()
    for rtype, name in r.TYPE_NAMES.items():
        assert f"| {rtype} | `{name}` |" in text, f"{name} is not in docs/format.md"


def test_every_record_type_has_a_lifecycle_rule_or_never_changes_the_state() -> None:
    ruled = set(lc.RULES)
    assert ruled.isdisjoint(lc.UNCHANGED_BY)
    assert ruled | lc.UNCHANGED_BY == set(r.SCHEMA)
    # The table names only types that have a rule (the rule takes the step).
    assert {rtype for _, rtype in lc.TRANSITIONS} <= ruled
    assert ruled >= lc.ONLY_ON_A_MOVE


def test_every_record_type_is_synthesised_by_compaction_or_superseded_by_it() -> None:
    assert compactor.SYNTHESISED.isdisjoint(compactor.SUPERSEDED)
    assert set(r.SCHEMA) == compactor.SYNTHESISED | compactor.SUPERSEDED


def test_compaction_writes_only_the_types_it_declares_synthesised() -> None:
    rnd = random.Random(0)  # a history that ends with an instance of every kind
    made = history([
        (rnd.randrange(9 * 12), rnd.randrange(6), rnd.randrange(8), rnd.randrange(4))
        for _ in range(3000)
    ])
    index = ix.Index()
    for loc, rec in enumerate(made.records):
        index.apply(rec, loc)
    written = {rec[r.TYPE] for rec in compactor.synthesize(index, made.records.__getitem__)}
    assert written == compactor.SYNTHESISED
