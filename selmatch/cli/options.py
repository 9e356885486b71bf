"""Command-line options made from the config fields' :class:`~selmatch.core.config.Setting`.

A command names the fields it offers; their flag, type, choices, ``--help`` text and default
come from the field, so a setting's option reads the same in every command that has it and
its help never disagrees with the default in force. :func:`add_options` adds them (grouped by
the setting's ``group``); :func:`values` reads them back as the config's keyword arguments.

``preset=True`` is the search's way: every option defaults to ``None`` (the preset's value
stays), the help says so, and :func:`values` returns only the options given.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from selmatch.core.config import Setting, setting_of


def field_setting(cls: type, name: str) -> tuple[dataclasses.Field[Any], Setting]:
    """The field ``name`` of the config class ``cls`` and its declared setting."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise KeyError(f"{cls.__name__} has no setting {name!r}")
    declared = setting_of(fields[name])
    if declared is None:
        raise KeyError(f"{cls.__name__}.{name} is not declared with setting()")
    return fields[name], declared


def default_of(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def numbers(kind: type) -> Any:
    """An option's parser of comma-separated numbers: ``0,0.1,0.2`` -> ``(0.0, 0.1, 0.2)``."""

    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__}s, got {text!r}"
            ) from None

    parse.__name__ = f"comma-separated {kind.__name__}s"  # argparse's error names it
    return parse


def value_type(cls: type, name: str) -> Any:
    """What an option of field ``name`` parses to: ``int | None`` -> ``int``, a tuple of
    numbers -> comma-separated numbers, a tuple of strings or anything else -> ``str``."""
    hint = typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = inner[0] if len(inner) == 1 else str
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return numbers(item) if item in (int, float) else str
    return hint if hint in (int, float, str, bool) else str


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    return str(value)


def describe(declared: Setting, default: Any = None) -> str:
    """What a setting's option does, as ``--help`` and docs/configuration.md say it: the
    paper's symbol first; a switch that is on by default (``--no-monotone``) turns it off."""
    text = f"{declared.symbol}: {declared.help}" if declared.symbol else declared.help
    return f"turns off: {text}" if default is True else text


def help_text(declared: Setting, default: Any, *, preset: bool = False) -> str:
    """The option's ``--help``: :func:`describe`, then the default (with the paper's value
    where it differs); a text that states its own default keeps it. ``preset``: the search's
    options, whose default is the preset's value whatever the field's."""
    text = describe(declared, default)
    if preset:
        text = re.sub(r" \(default: [^()]*\)", "", text)
        return f"{re.sub(r'; default: [^()]*', '', text)} (default: the preset's)"
    if "(default" in text or default is None:
        return text
    paper = f"; the paper: {declared.paper}" if declared.paper else ""
    return f"{text} (default: {_show(default)}{paper})"


def add_option(
    container: argparse._ActionsContainer,
    cls: type,
    name: str,
    *,
    preset: bool = False,
    default: Any = dataclasses.MISSING,
    flag: str | None = None,
    required: bool = False,
    dest: str | None = None,
    help: str | None = None,
) -> None:
    """One option for field ``name`` of ``cls`` (``default``, ``flag`` and ``help`` replace
    the field's where a command differs, e.g. the width of its network; ``dest`` the
    attribute it is read from, the field's name by default)."""
    field, declared = field_setting(cls, name)
    if help is not None:
        declared = dataclasses.replace(declared, help=help)
    value = default_of(field) if default is dataclasses.MISSING else default
    option = flag or declared.option(name)
    kind = value_type(cls, name)
    kwargs: dict[str, Any] = {"dest": dest or name}
    if kind is bool:
        # a switch turns the default over: --compile (off by default), --no-monotone (on)
        kwargs["action"] = "store_const"
        kwargs["const"] = not value
        kwargs["default"] = None if preset else value
        kwargs["help"] = help_text(declared, value, preset=preset)
    else:
        kwargs["type"] = kind
        kwargs["default"] = None if preset else value
        kwargs["help"] = help_text(declared, value, preset=preset)
        if declared.choices:
            kwargs["choices"] = declared.choices
        else:  # the placeholder: the symbol, else the setting's name
            kwargs["metavar"] = declared.metavar or declared.symbol or name.upper()
        if required:
            kwargs["required"] = True
            kwargs["help"] = help_text(declared, None, preset=False)
    container.add_argument(option, **kwargs)


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    names: Iterable[str],
    *,
    preset: bool = False,
    defaults: Mapping[str, Any] | None = None,
    groups: dict[str, argparse._ArgumentGroup] | None = None,
    required: Iterable[str] = (),
) -> dict[str, argparse._ArgumentGroup]:
    """Options for the fields ``names`` of ``cls``, each in its setting's ``group`` (made on
    first use and returned, so a command can add its own options to a group)."""
    groups = {} if groups is None else groups
    defaults = defaults or {}
    must = set(required)
    for name in names:
        _, declared = field_setting(cls, name)
        container: argparse._ActionsContainer = parser
        if declared.group:
            if declared.group not in groups:
                groups[declared.group] = parser.add_argument_group(declared.group)
            container = groups[declared.group]
        default = defaults.get(name, dataclasses.MISSING)
        add_option(container, cls, name, preset=preset, default=default, required=name in must)
    return groups


def values(
    args: argparse.Namespace, names: Iterable[str], *, preset: bool = False
) -> dict[str, Any]:
    """The options of ``names`` as the config's keyword arguments (``preset``: only those
    given on the command line)."""
    out = {name: getattr(args, name) for name in names}
    return {k: v for k, v in out.items() if v is not None} if preset else out


class _Moved(argparse.Action):
    def __init__(
        self, option_strings: list[str], dest: str, message: str = "", **kwargs: Any
    ) -> None:
        super().__init__(
            option_strings, dest, nargs="?", help=argparse.SUPPRESS, default=argparse.SUPPRESS
        )
        self.message = message

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.error(f"{option_string} {self.message}")


def add_moved(container: argparse._ActionsContainer, old: str, message: str) -> None:
    """An option that was renamed (it meant another thing in another command): hidden from
    ``--help``, and stopping with a one-line error that says where it went, so an old command
    line fails loudly instead of reaching a setting it no longer names."""
    container.add_argument(old, action=_Moved, message=message)
