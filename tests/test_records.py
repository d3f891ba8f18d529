"""records.quick_init: every event and decision record is built fast and is still a frozen dataclass.

Enumerated, not sampled: every dataclass of events.py and decisions.py must use quick_init, and each
one is checked for the same fields, values, equality, hash and refusals as the plain frozen dataclass
it replaces, with defaults and with every field given.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
from typing import Any

import pytest

from hookrules import decisions, events
from hookrules.records import quick_init

RECORDS = sorted({cls for module in (events, decisions) for _, cls in inspect.getmembers(module, inspect.isclass)
                  if dataclasses.is_dataclass(cls) and cls.__module__ == module.__name__}, key=lambda c: c.__name__)

#: a value of each field's declared type, other than its default
SAMPLES: dict[str, Any] = {"str": "x", "int": 7, "bool": True, "bytes": b"\x00p", "str | None": "y", "int | None": 3,
                           "bytes | None": b"q", "bool | None": False}


def _sample(f: dataclasses.Field[Any]) -> Any:
    kind = str(f.type)
    if kind in SAMPLES:
        return SAMPLES[kind]
    if "Mapping" in kind:
        return events.frozen_map({"k": "v"})
    if "tuple" in kind:
        return ("a",)
    if kind == "Client":
        return events.Client(id="c")
    raise AssertionError(f"no sample for a field of type {kind}: add one")


def _plain(cls: type) -> Any:
    """The class as @dataclass(frozen=True, slots=True) alone makes it: the reference."""
    fields = [(f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory))
              for f in dataclasses.fields(cls)]
    return dataclasses.make_dataclass(cls.__name__, fields, frozen=True, slots=True)


def test_every_record_class_is_found() -> None:
    names = {cls.__name__ for cls in RECORDS}
    assert {"Client", "Conn", "Message", "SubOpts", "TopicFilter", "Event", "Allow", "Deny", "Ignore", "Rewrite",
            "Drop"} <= names


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_each_record_is_built_by_quick_init(cls: type) -> None:
    assert cls.__init__ is object.__init__, f"{cls.__name__}: put @quick_init above its @dataclass"
    assert cls.__dataclass_params__.frozen and "__slots__" in vars(cls)  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_each_record_holds_what_the_plain_dataclass_holds_and_refuses_changes(cls: type) -> None:
    fields = dataclasses.fields(cls)
    required = {f.name: _sample(f) for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    full = {f.name: _sample(f) for f in fields}
    plain = _plain(cls)
    for given in (required, full):
        record = cls(**given)
        reference = plain(**given)
        assert type(record) is cls
        assert [getattr(record, f.name) for f in fields] == [getattr(reference, f.name) for f in fields]
        assert all(getattr(record, name) is value for name, value in given.items())
        assert record == cls(**given)
        try:
            expected: Any = hash(reference)
        except TypeError as exc:  # a field that holds a mappingproxy: unhashable either way
            expected = type(exc)
        assert (hash(record) if expected is not TypeError else pytest.raises(TypeError, hash, record).type) == expected
        positional = cls(*(given.get(f.name, getattr(reference, f.name)) for f in fields))
        assert positional == record
        assert copy.copy(record) == record
        if not any("Mapping" in str(f.type) for f in fields):  # a mappingproxy is neither deep-copied nor pickled
            assert copy.deepcopy(record) == record and pickle.loads(pickle.dumps(record)) == record
        for f in fields:
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(record, f.name, full[f.name])
            with pytest.raises(dataclasses.FrozenInstanceError):
                delattr(record, f.name)
        with pytest.raises((AttributeError, TypeError)):
            record.extra = 1  # type: ignore[attr-defined]
    if fields:
        with pytest.raises(TypeError):
            cls(**full, not_a_field=1)


def test_quick_init_refuses_a_class_it_cannot_speed_up() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int = 0

    @dataclasses.dataclass(slots=True)
    class NotFrozen:
        a: int = 0

    for cls in (NoSlots, NotFrozen):
        with pytest.raises(TypeError, match="quick_init goes above"):
            quick_init(cls)


def _post_init() -> type:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        a: int = 0

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("a < 0")
    return Checked


def _init_var() -> type:
    @dataclasses.dataclass(frozen=True, slots=True)
    class WithInitVar:
        a: int = 0
        b: dataclasses.InitVar[int] = 0
    return WithInitVar


def _not_init() -> type:
    @dataclasses.dataclass(frozen=True, slots=True)
    class NotInit:
        a: int = 0
        b: int = dataclasses.field(default=1, init=False)
    return NotInit


def _kw_only() -> type:
    @dataclasses.dataclass(frozen=True, slots=True)
    class KwOnly:
        a: int = dataclasses.field(default=0, kw_only=True)
    return KwOnly


def _inherited() -> type:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Base:
        a: int = 0

    @dataclasses.dataclass(frozen=True, slots=True)
    class Derived(Base):
        b: int = 0
    return Derived


@pytest.mark.parametrize(("make", "says"), [
    (_post_init, "__post_init__"), (_init_var, "InitVar"), (_not_init, "init=False"), (_kw_only, "kw_only"),
    (_inherited, "their own class's"),
], ids=lambda v: getattr(v, "__name__", v))
def test_quick_init_refuses_what_its_plain_init_would_drop(make: Any, says: str) -> None:
    """A dataclass feature the twin's plain __init__ would skip quietly (a __post_init__ check, an InitVar)
    is refused when the class is made."""
    with pytest.raises(TypeError, match=says):
        quick_init(make())
