# SPDX-License-Identifier: LGPL-2.1-or-later
"""`Record`: an immutable value with named fields, for the modules the command-line programs
import (`mdevd.wire`, `mdevd.calls`, `mdevd.replies`, `mdevd.cli`).

It does what `@dataclass(frozen=True, slots=True)` did for them: fields in order (`_fields`,
also its `__slots__`), equality and hashing by value, a repr that names them, assignment
refused. It exists because `import dataclasses` (which imports `inspect`) and building each
class cost as much as all the rest of `mdevdctl list`'s start-up (docs/performance.md, issue
20); the daemon's own types stay dataclasses.

A subclass lists its fields in `_fields`, makes them its `__slots__`, annotates them, and
writes an `__init__` that stores them with `_init`. `replace` returns a copy with some fields
changed (`dataclasses.replace`), `as_dict` the fields by name (`dataclasses.asdict`, one
level).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing is a start-up cost too
if TYPE_CHECKING:
    from typing import Any, ClassVar, Self


class Record:
    __slots__ = ()
    #: The fields, in order: `__init__`'s, and what equality, hashing and repr compare and show.
    _fields: ClassVar[tuple[str, ...]] = ()

    #: The `__set__` of each field's slot, in `_fields` order: storing through them directly
    #: is 3x faster than `object.__setattr__` by name (a client builds a thousand records
    #: from one ListDevices reply).
    _setters: ClassVar[tuple[Any, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._setters = tuple(getattr(cls, name).__set__ for name in cls._fields)

    def _init(self, *values: Any) -> None:
        """Store the fields' values, in `_fields` order (only `__init__` calls it)."""
        for setter, value in zip(self._setters, values, strict=True):
            setter(self, value)

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def replace(self, **changes: Any) -> Self:
        values = {name: getattr(self, name) for name in self._fields}
        values.update(changes)
        return type(self)(**values)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._fields}

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Record) and other.__class__ is self.__class__:
            return self._values() == other._values()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__qualname__}({fields})"

    def __reduce__(self) -> tuple[Any, ...]:
        # copy and pickle build a copy through __init__ (assignment is refused).
        return (type(self), self._values())
