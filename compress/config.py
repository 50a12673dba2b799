"""Stage configuration: one dataclass per stage is the single home of every option — its name,
type, default, allowed values, help text and validation. The CLI derives its flags from it
(:meth:`StageConfig.add_arguments` / :meth:`StageConfig.from_args`), a pipeline fills it from YAML
(:meth:`StageConfig.from_dict`), and library callers build it directly; all three end in
:meth:`StageConfig.validate`, which raises :class:`~compress.errors.UserError` with one sentence.

    @dataclass(kw_only=True)
    class PruneConfig(StageConfig):
        ratio: float | None = option(None, help="channel ratio to remove",
                                     check=(lambda r: 0 < r < 1, "must satisfy 0 < ratio < 1"))

Torch-free, so building the CLI's parser stays quick.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from typing import Any, Callable, Mapping, Sequence

from .errors import UserError

Check = tuple[Callable[[Any], bool], str]


def option(default: Any = dataclasses.MISSING, *, help: str, choices: Sequence[Any] | None = None,
           check: Check | None = None, parse: Callable[[str], Any] | None = None, flag: str | None = None,
           metavar: str | None = None, group: str | None = None, label: str | None = None, repeat: bool = False,
           default_factory: Callable[[], Any] | None = None) -> Any:
    """A config field with its documentation and validation.

    ``check`` is ``(predicate, "must ...")``, applied to non-``None`` values. ``parse`` turns a
    command-line (or YAML) string into the value (e.g. ``"20M"`` → 2e7). ``flag`` overrides the
    derived ``--field-name``; ``group`` is its section in ``--help``. Error messages
    name the option by ``label`` (e.g. "learning rate") or else by its flag. A list field with
    ``repeat=True`` takes space-separated values on the command line (``--ignore a b --ignore c``)
    instead of one comma-separated value."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "check": check,
            "parse": parse, "flag": flag, "metavar": metavar, "group": group, "label": label, "repeat": repeat}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) of an annotation such as ``float | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), len(args) < len(typing.get_args(tp))
    return tp, tp is Any


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def parse_list(item: Callable[[str], Any]) -> Callable[[str], list]:
    """A parser for comma-separated values: ``"0.1,0.3"`` → ``[0.1, 0.3]``."""
    def parse(text: str) -> list:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        if not parts:
            raise ValueError("empty list")
        values = []
        for p in parts:
            try:
                values.append(item(p))
            except ValueError:
                raise ValueError(f"{p!r} is not {_describe(item)} (give a comma-separated list like "
                                 f"{'1,8' if item is int else '0.1,0.3'})") from None
        return values
    return parse


_COUNT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmg]?)\s*", re.IGNORECASE)


def parse_count(text: str) -> float:
    """'20M' → 2e7, '1.5G' → 1.5e9, '300000' → 3e5."""
    m = _COUNT.fullmatch(str(text))
    if not m:
        raise ValueError(f"not a count: {text!r} (e.g. 20M, 1.5G, 300000)")
    return float(m.group(1)) * {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]


@dataclasses.dataclass(kw_only=True)
class StageConfig:
    """Base of every stage's Config: validation, dict round trip and argparse derivation."""

    @classmethod
    def _fields(cls) -> list[tuple[dataclasses.Field, Any]]:
        hints = typing.get_type_hints(cls)
        return [(f, hints[f.name]) for f in dataclasses.fields(cls)]

    # ------------------------------------------------------------------ validation
    def validate(self):
        """Check every field (type, allowed values, range), then :meth:`check`; return ``self``."""
        for f, tp in self._fields():
            value = getattr(self, f.name)
            base, optional = _base_type(tp)
            name = f.metadata.get("label") or flag_name(f)
            if value is None:
                if not optional:
                    raise UserError(f"{name} is required")
                continue
            choices = f.metadata.get("choices")
            if isinstance(value, bool) and base is str and choices and {"on", "off"} <= set(choices):
                value = "on" if value else "off"  # YAML 1.1 reads on/off as booleans
            setattr(self, f.name, value := _coerce(value, base, name, f.metadata.get("parse")))
            if choices is not None:
                items = value if isinstance(value, list) else [value]
                for v in items:
                    if v not in choices:
                        raise UserError(f"unknown {name} {v!r}; choose one of {', '.join(map(str, choices))}")
            check = f.metadata.get("check")
            if check is not None:
                ok, must = check
                if not ok(value):
                    raise UserError(f"{name} {must}, got {value!r}")
        self.check()
        return self

    def check(self) -> None:
        """Rules across fields (override); raise :class:`UserError`."""

    # ------------------------------------------------------------------ dict / YAML
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = ""):
        """A validated config from a mapping (e.g. a YAML recipe's stage). Unknown keys and values
        of the wrong type are errors naming ``where``."""
        if not isinstance(data, Mapping):
            raise UserError(f"{where or cls.__name__}: expected a mapping of options")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{where or cls.__name__}: unknown option(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")
        try:
            cfg = cls(**dict(data))
        except TypeError as e:  # a required field missing
            raise UserError(f"{where or cls.__name__}: {e}") from None
        return cfg.validate()

    # ------------------------------------------------------------------ argparse
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field, grouped by the fields' ``group``; help shows defaults."""
        groups: dict[str | None, Any] = {None: parser}
        for f, tp in cls._fields():
            group_name = f.metadata.get("group")
            if group_name not in groups:
                groups[group_name] = parser.add_argument_group(group_name)
            target = groups[group_name]
            base, _ = _base_type(tp)
            default = f.default if f.default is not dataclasses.MISSING else \
                (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
            help_text = f.metadata["help"]
            if default not in (None, [], False, ""):
                shown = ",".join(map(str, default)) if isinstance(default, list) else default
                help_text += f" (default {shown})".replace("%", "%%")
            kw: dict[str, Any] = {"dest": f.name, "help": help_text, "default": argparse.SUPPRESS}
            choices = f.metadata.get("choices")
            if base is bool:
                kw["action"] = argparse.BooleanOptionalAction
            elif f.metadata.get("repeat"):
                kw.update(nargs="+", action="extend", type=_arg_parser(f, typing.get_args(base)[0]),
                          metavar=f.metadata.get("metavar") or f.name.upper())
            else:  # choices are checked by validate(), which gives the one-line error
                kw["type"] = _arg_parser(f, base)
                kw["metavar"] = f.metadata.get("metavar") or (
                    "{" + ",".join(map(str, choices)) + "}" if choices else f.name.upper())
            target.add_argument(flag_name(f), **kw)

    @classmethod
    def argv(cls, options: Mapping[str, Any]) -> list[str]:
        """The command-line flags that give ``options`` (field name → value, as in a recipe)."""
        import json

        fields = {f.name: f for f, _tp in cls._fields()}
        out: list[str] = []
        for name, value in options.items():
            f = fields[name]
            flag = flag_name(f)
            if isinstance(value, bool):
                out.append(flag if value else "--no-" + flag[2:])
            elif value is None:
                continue
            elif isinstance(value, (list, tuple)):
                out += [flag, *map(str, value)] if f.metadata.get("repeat") else [flag, ",".join(map(str, value))]
            elif isinstance(value, dict):
                out += [flag, json.dumps(value, separators=(",", ":"))]
            else:
                out += [flag, str(value)]
        return out

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        """A validated config from parsed flags (absent flags keep the field defaults)."""
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        return cls(**given).validate()


def _arg_parser(f: dataclasses.Field, base: Any) -> Callable[[str], Any]:
    custom = f.metadata.get("parse")
    if custom is not None and not f.metadata.get("repeat"):
        fn = custom
    elif typing.get_origin(base) is list:
        fn = parse_list(typing.get_args(base)[0])
    else:
        fn = base

    def parse(text: str) -> Any:
        try:
            return fn(text)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e) or f"invalid value {text!r}") from None

    parse.__name__ = getattr(fn, "__name__", "value")
    return parse


def _coerce(value: Any, base: Any, name: str, parse: Callable[[str], Any] | None) -> Any:
    """``value`` as ``base`` (int → float, a string through ``parse``); :class:`UserError` otherwise."""
    if parse is not None and isinstance(value, str) and base is not str:
        try:
            return parse(value)
        except (TypeError, ValueError) as e:
            raise UserError(f"{name}: {e}") from None
    origin = typing.get_origin(base)
    if origin is list:
        if isinstance(value, (tuple, list)):
            item = typing.get_args(base)[0]
            return [_coerce(v, item, name, None) for v in value]
        raise UserError(f"{name} must be {_describe(base)}, got {value!r}")
    if origin is not None:  # dict[str, Any] and the like: the container type only
        if not isinstance(value, origin):
            raise UserError(f"{name} must be a {origin.__name__}, got {value!r}")
        return value
    if base is Any:
        return value
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base in (int, float) and isinstance(value, bool) or not isinstance(value, base):
        raise UserError(f"{name} must be {_describe(base)}, got {value!r}")
    if base is float and not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value!r}")
    return value
