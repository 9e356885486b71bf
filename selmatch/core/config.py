"""Configuration primitives shared by every stage.

Each stage has a frozen dataclass config (``ModelConfig``, ``TrainConfig``, ``EvalConfig``, ...)
that mixes in :class:`Config`. Its ``to_dict`` feeds manifests (and later Tune's param space and
MLflow params); ``from_dict`` rebuilds it and rejects unknown keys, so a typo in a saved manifest
or a search space is an error rather than a silently ignored setting.

Validation happens at the edge, in ``__post_init__``, with the ``check_*`` helpers below: the
message names the argument the way the CLI spells it (``--ipc``) and states the allowed range.

**Settings are declared once**, in their field: ``n_student_steps: int = setting(20,
flag="--student-steps", symbol="N", help=...)``. The field's :class:`Setting` (its metadata)
is what the command-line options are made from (:mod:`selmatch.cli.options`), what the
search's options and ``--override`` paths reach, what ``docs/configuration.md``'s meaning column
says, and what the error messages call the setting: a flag means one thing in every command
(a field name declared with two flags is an error at import).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

C = TypeVar("C", bound="Config")


class SelmatchError(Exception):
    """Base class of the errors this package raises on purpose (shown as one line by the CLI)."""


class ConfigError(SelmatchError, ValueError):
    """A setting is outside its allowed range or of the wrong kind. ``setting`` is the field's
    name when one setting is at fault (the search's ``--override`` names its assignment)."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


@dataclasses.dataclass(frozen=True)
class Setting:
    """What a config field means to its users: the metadata of :func:`setting`.

    ``flag`` is its command-line option (``""``: the field's name, ``--val-fraction``);
    ``symbol`` the papers' name for it (N, M, T+, b, α, β); ``paper`` the paper's value where
    the default differs; ``group`` the ``--help`` section; ``choices`` the allowed values of a
    string; ``metavar`` the placeholder in ``--help``; ``cli=False`` for a field no command
    offers as an option (reached by ``--override`` only)."""

    help: str
    flag: str = ""
    symbol: str = ""
    paper: str = ""
    group: str = ""
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    cli: bool = True

    def option(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")


SETTING = "selmatch.setting"
#: every declared field name's flag, for the error messages (filled as the classes are made)
_FLAGS: dict[str, str] = {}


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    factory: Callable[[], Any] | None = None,
    flag: str = "",
    symbol: str = "",
    paper: str = "",
    group: str = "",
    choices: Iterable[str] = (),
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
    """A config field with its :class:`Setting`: ``default`` (or ``factory`` for a mutable or
    nested default) and what the user reads about it."""
    meta = {SETTING: Setting(help, flag, symbol, paper, group, tuple(choices), metavar, cli)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def setting_of(field: dataclasses.Field[Any]) -> Setting | None:
    """The :class:`Setting` a field was declared with, if any."""
    value = field.metadata.get(SETTING)
    return value if isinstance(value, Setting) else None


def flag(name: str) -> str:
    """The command-line spelling of a config field: its declared flag (``n_student_steps`` ->
    ``--student-steps``), else its name's (``val_fraction`` -> ``--val-fraction``)."""
    return _FLAGS.get(name) or "--" + name.replace("_", "-")


def _register_flags(cls: type) -> None:
    for name, value in vars(cls).items():
        if not isinstance(value, dataclasses.Field) or setting_of(value) is None:
            continue
        declared = typing.cast(Setting, setting_of(value)).option(name)
        known = _FLAGS.setdefault(name, declared)
        if known != declared:
            raise TypeError(
                f"{cls.__name__}.{name} is declared as {declared}, another config's {name} as "
                f"{known}: one setting name, one flag"
            )


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """Return ``value`` if it is an integer in ``[low, high]``, else raise a one-line error."""
    upper = "∞" if high is None else str(high)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"{flag(name)} must be an integer in [{low}, {upper}], got {value!r}", setting=name
        )
    if value < low or (high is not None and value > high):
        raise ConfigError(
            f"{flag(name)} must be an integer in [{low}, {upper}], got {value}", setting=name
        )
    return value


def check_float(
    name: str,
    value: object,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float if it lies in the interval, else raise a one-line error."""
    left = "(" if low_open else "["
    right = ")" if high_open or high is None else "]"
    upper = "∞" if high is None else f"{high:g}"
    interval = f"{left}{low:g}, {upper}{right}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{flag(name)} must be a number in {interval}, got {value!r}", setting=name
        )
    number = float(value)
    too_low = number <= low if low_open else number < low
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high or number != number:  # the last test rejects NaN
        raise ConfigError(
            f"{flag(name)} must be a number in {interval}, got {value:g}", setting=name
        )
    return number


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is ``True`` or ``False`` (not 1, 0 or "false"), else raise."""
    if not isinstance(value, bool):
        raise ConfigError(f"{flag(name)} must be true or false, got {value!r}", setting=name)
    return value


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a one-line error."""
    options = tuple(choices)
    if value not in options:
        raise ConfigError(
            f"{flag(name)} must be one of {', '.join(options)}; got {value!r}", setting=name
        )
    return str(value)


def changed_settings(
    previous: Config | Mapping[str, Any],
    wanted: Config | Mapping[str, Any],
    *,
    may_change: Iterable[str] = (),
) -> list[str]:
    """The settings (dotted names for nested configs: ``model.width``) in which ``previous``
    and ``wanted`` differ, leaving out those that ``may_change``; sorted. Either may also be
    the settings as a dict (several configs' together, as a distillation's manifest holds
    them)."""
    before, now = _flat(_settings_dict(previous)), _flat(_settings_dict(wanted))
    keep = set(may_change)
    return sorted(
        k
        for k in before.keys() | now.keys()
        if k.split(".")[0] not in keep and k not in keep and before.get(k) != now.get(k)
    )


def check_resumable(
    previous: Config | Mapping[str, Any],
    wanted: Config | Mapping[str, Any],
    message: str,
    *,
    may_change: Iterable[str] = (),
) -> None:
    """The one check of a resumable folder: what it holds was made with ``wanted``'s settings
    (but for those that ``may_change``), else a one-line error, ``message`` with ``{changed}``
    replaced by the settings that differ."""
    changed = changed_settings(previous, wanted, may_change=may_change)
    if changed:
        raise ConfigError(message.format(changed=", ".join(changed)))


def _settings_dict(settings: Config | Mapping[str, Any]) -> Mapping[str, Any]:
    return settings if isinstance(settings, Mapping) else settings.to_dict()


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


class Config:
    """Mixin for dataclass configs and records: ``to_dict`` / ``from_dict`` with strict keys.

    ``from_dict`` follows the field's type: a nested :class:`Config` (also inside ``X | None``,
    a ``tuple[X, ...]`` or a ``dict[K, X]``) is rebuilt, a ``dict`` keyed by numbers gets its
    keys back from JSON's strings, a list becomes a tuple. ``to_dict`` is its inverse (keys
    that are not strings are written as ``str(key)``); a class whose ``OMIT_NONE`` is true
    leaves its ``None`` fields out (a record's not-yet-known parts)."""

    OMIT_NONE: typing.ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register_flags(cls)  # the class body's fields, before @dataclass consumes them

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if value is None and self.OMIT_NONE:
                continue
            out[field.name] = _plain(value)
        return out

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown setting(s) for {cls.__name__}: {', '.join(unknown)}; "
                f"known: {', '.join(sorted(names))}"
            )
        hints = typing.get_type_hints(cls)
        return cls(**{name: _typed(hints.get(name), value) for name, value in data.items()})

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _plain(value: Any) -> Any:
    """``value`` as JSON holds it (the inverse of :func:`_typed`)."""
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _plain(v) for k, v in value.items()}
    return value


def _typed(hint: Any, value: Any) -> Any:
    """``value`` (as JSON holds it) rebuilt as the type ``hint`` says."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or len(inner) != 1:
            return tuple(value) if isinstance(value, list) else value
        return _typed(inner[0], value)
    if isinstance(hint, type) and issubclass(hint, Config) and isinstance(value, Mapping):
        return hint.from_dict(value)
    if origin is dict and isinstance(value, Mapping) and len(args) == 2:
        key = args[0] if args[0] in (int, float) else (lambda k: k)
        return {key(k): _typed(args[1], v) for k, v in value.items()}
    if isinstance(value, list):
        item = args[0] if origin is tuple and len(args) == 2 and args[1] is Ellipsis else None
        return tuple(_typed(item, v) for v in value)
    return value
