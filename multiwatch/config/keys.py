"""One declaration per roster key: a field of the frozen dataclass that holds it.

gunicorn declares each option once, as a `Setting` with its name, type, default, validator
and doc. Here a key is declared once too, as a field of InstanceConfig, SupervisorConfig or
HttpConfig written with `key(default, coerce, doc)`: the field gives its name, type and
default, its metadata the coercer and a one-line doc. The loader's coercer tables, `check`'s
effective output and the README test (tests/test_config_keys.py) are derived from these
fields, so adding a key is one line in roster.py plus its README line. The dataclasses stay
plain, typed and picklable: a watcher child reads them without this module's help.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import field
from typing import Any, TypeVar

from multiwatch.config.coercers import Coerce

T = TypeVar("T")
_COERCE = "coerce"
_DOC = "doc"


def key(default: T, coerce: Coerce, doc: str) -> T:
    """A roster key with its default, the coercer that reads it and a one-line doc."""
    return field(default=default, metadata={_COERCE: coerce, _DOC: doc})


def described(doc: str) -> dict[str, str]:
    """The metadata of a key without a default, which the loader reads itself (an
    instance's id and directory): `field(metadata=described("..."))`."""
    return {_DOC: doc}


def declared(config: type) -> tuple[dataclasses.Field[Any], ...]:
    """The keys of a config dataclass, in declaration order."""
    return tuple(dataclasses.fields(config))


def coercers(config: type) -> Mapping[str, Coerce]:
    """Key name → coercer, for the keys with a default (the ones a section may set)."""
    return {f.name: f.metadata[_COERCE] for f in declared(config) if _COERCE in f.metadata}


def doc(spec: dataclasses.Field[Any]) -> str:
    """A key's one-line doc."""
    return str(spec.metadata.get(_DOC, ""))


def effective(config: Any) -> dict[str, Any]:
    """A config's keys and values as plain YAML data (a nested config as a mapping, a tuple
    as a list), in declaration order: what `check` prints for it."""
    return {spec.name: _plain(getattr(config, spec.name)) for spec in declared(type(config))}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return list(value) if isinstance(value, tuple) else value
