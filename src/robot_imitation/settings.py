"""Limits of settings, stated once: on the dataclass field that holds each setting.

``setting(default, Limits(...))`` declares a dataclass field with its limits; ``check_fields``
(called from a dataclass's ``__post_init__``) raises ``SettingError`` naming the setting and the
bad value; ``arg_type`` turns the same limits into an argparse type, so the command line refuses
exactly what the dataclass refuses, in the same words, before anything starts:

    robot-imitation train: error: argument --steps: must be a positive integer, got 0
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass


class SettingError(ValueError):
    """A setting outside its limits (the message names the setting and the value)."""


@dataclass(frozen=True)
class Limits:
    """What values a setting may take.

    ``kind``: int, float, str, bool or list (items checked by ``item``); ``low``/``high``:
    inclusive bounds (``low_open``: ``low`` itself excluded); ``choices``; ``pattern`` (a
    regular expression a string must match in full); ``optional``: None allowed; ``what``: the
    description used in messages, when the generated one does not say it well.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple = ()
    pattern: str | None = None
    optional: bool = False
    nonempty: bool = False
    item: "Limits | None" = None
    what: str = ""

    def describe(self) -> str:
        if self.what:
            return self.what
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if self.kind is bool:
            return "true or false"
        if self.kind is list:
            items = self.item.describe_plural() if self.item else "values"
            return f"{'a non-empty' if self.nonempty else 'a'} list of {items}"
        if self.kind is int:
            if self.high is None and self.low == 1:
                return "a positive integer"
            if self.high is None and self.low == 0:
                return "a non-negative integer"
            if self.high is None and self.low is not None:
                return f"an integer >= {int(self.low)}"
            if self.low is not None:
                return f"an integer from {int(self.low)} to {int(self.high)}"
            return "an integer"
        if self.kind is float:
            if self.high is None and self.low == 0:
                return "a positive number" if self.low_open else "a non-negative number"
            if self.low is not None and self.high is not None:
                return f"a number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
            if self.low is not None:
                return f"a number {'>' if self.low_open else '>='} {self.low:g}"
            return "a finite number"
        if self.kind is dict:
            return "a mapping of names to values"
        return "a string"

    def describe_plural(self) -> str:
        text = self.describe()
        for a in ("a ", "an "):
            if text.startswith(a):
                text = text[len(a):]
                break
        return text.replace("integer", "integers").replace("number", "numbers") \
            .replace("string", "strings")

    def problem(self, value) -> str | None:
        """Why ``value`` is not allowed, or None."""
        if value is None:
            return None if self.optional else "a value"
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
                math.isfinite(value)
        elif self.kind is str:
            ok = isinstance(value, str)
        elif self.kind is list:
            ok = isinstance(value, (list, tuple)) and not (self.nonempty and not value) and \
                not (self.item and any(self.item.problem(v) for v in value))
            return None if ok else self.describe()
        else:
            ok = isinstance(value, self.kind)
        if ok and self.choices:
            ok = value in self.choices
        if ok and self.pattern is not None:
            ok = re.fullmatch(self.pattern, value) is not None
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value <= self.high
        return None if ok else self.describe()

    def check(self, name: str, value) -> None:
        """Raise ``SettingError`` unless ``value`` is allowed for the setting ``name``."""
        problem = self.problem(value)
        if problem:
            raise SettingError(f"{name} must be {problem}, got {value!r}")

    def parse(self, text: str):
        """A command-line string as the setting's value (``argparse.ArgumentTypeError`` naming
        the text when it is not an allowed one)."""
        try:
            if self.kind is int:
                value = int(text)
            elif self.kind is float:
                value = float(text)
            elif self.kind is list:
                value = [self.item.parse(x) if self.item else x
                         for x in text.split(",") if x.strip()]
            else:
                value = text
        except (ValueError, argparse.ArgumentTypeError):
            value = None
        if value is None or self.problem(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text}")
        return value


def setting(default=dataclasses.MISSING, limits: Limits | None = None, *,
            default_factory=dataclasses.MISSING, help: str = "", flag: str | None = None,
            **extra):
    """A dataclass field with its limits and its description (in the field's metadata).

    ``help``: what the setting does, in the words the command line's ``--help`` and a node's
    parameter table show; ``flag``: the command-line option when it is not ``--`` + the name
    with dashes; ``extra``: more metadata (``option_of``: the policy type a training setting
    belongs to)."""
    metadata = dict(extra)
    if limits:
        metadata["limits"] = limits
    if help:
        metadata["help"] = help
    if flag:
        metadata["flag"] = flag
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata=metadata)


def same_as(cls, name: str, **extra):
    """A field declared like ``cls``'s field ``name`` (default, limits, description), for a
    setting that is passed on to ``cls``: declared once, where it is used."""
    f = cls.__dataclass_fields__[name]
    return dataclasses.field(default=f.default, default_factory=f.default_factory,
                             metadata={**f.metadata, **extra})


def limits_of(cls, name: str) -> Limits:
    return cls.__dataclass_fields__[name].metadata["limits"]


def help_of(cls, name: str) -> str:
    return cls.__dataclass_fields__[name].metadata.get("help", "")


def default_of(cls, name: str):
    """A field's default without making an instance."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


# the number of episodes of a run (the command line's --episodes, record_demonstrations,
# evaluate_ros): stated once
EPISODES = Limits(int, low=1)


def check_fields(obj) -> None:
    """Check every field of the dataclass instance ``obj`` that states its limits."""
    for f in dataclasses.fields(obj):
        limits = f.metadata.get("limits")
        if limits is not None:
            limits.check(f.name, getattr(obj, f.name))


def arg_type(limits_or_cls, name: str | None = None):
    """An argparse ``type`` for a setting: ``arg_type(Limits(...))``, ``arg_type(cls, name)``,
    or ``arg_type(lambda: cls, name)``, where the class is looked up only when the option is
    given (a class whose module is slow to import)."""
    def limits() -> Limits:
        if isinstance(limits_or_cls, Limits):
            return limits_or_cls
        cls = limits_or_cls if isinstance(limits_or_cls, type) else limits_or_cls()
        return limits_of(cls, name)

    def parse(text: str):
        return limits().parse(text)

    parse.__name__ = name or "value"
    return parse


# ===================================================================== the command line
def flag_of(cls, name: str) -> str:
    """The command-line option of the field ``name``: ``--batch-size`` for ``batch_size``."""
    f = cls.__dataclass_fields__[name]
    return "--" + f.metadata.get("flag", name.replace("_", "-"))


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return "none" if not value else ",".join(f"{k}={v}" for k, v in value.items())
    return "none" if value is None or value == "" else str(value)


def key_value(text: str) -> tuple:
    """``KEY=VALUE`` (the value read as YAML: 3, 0.5, true, [32, 32], text) as (key, value)."""
    import yaml

    from .paths import yaml_load

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {text}")
    try:
        return key.strip(), yaml_load(value) if value.strip() else ""
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"the value of {key.strip()} is not valid YAML, "
                                         f"got {value}") from None


def add_arguments(parser, cls, exclude=(), defaults: dict | None = None) -> None:
    """One option per field of the dataclass ``cls`` (but ``exclude``), from the field: its
    flag, its type (the field's limits: refused by the parser in the dataclass's words), its
    help with the default. Options not given stay None (``given_arguments``): a settings file
    keeps its values. A bool field gives ``--name``/``--no-name``; a mapping gives a repeatable
    ``--flag KEY=VALUE``. ``defaults``: {name: value} for options of this command whose default
    is not the field's: an option not given takes it, and its help shows it."""
    defaults = dict(defaults or {})
    unknown = set(defaults) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"defaults of no field of {cls.__name__}: {sorted(unknown)}")
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        limits = f.metadata.get("limits")
        text = f.metadata.get("help", "")
        value = defaults.get(f.name)  # None: the field's default, applied by the caller
        shown = value if f.name in defaults else default_of(cls, f.name)
        default = f" (default: {_shown(shown)})"
        flag = flag_of(cls, f.name)
        if limits is not None and limits.kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=value, help=text + default)
        elif limits is not None and limits.kind is dict:
            parser.add_argument(flag, dest=f.name, action="append", type=key_value,
                                metavar="KEY=VALUE", default=value,
                                help=text + " (repeatable)")
        else:
            parser.add_argument(flag, dest=f.name, default=value, help=text + default,
                                metavar=flag[2:].replace("-", "_").upper(),
                                type=arg_type(cls, f.name) if limits is not None else str)


def given_arguments(args, cls, settings: dict | None = None) -> dict:
    """``settings`` (from a file, say) with the options of ``add_arguments`` that were given
    on top; a mapping's pairs are added to the mapping the settings hold."""
    out = dict(settings or {})
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        limits = f.metadata.get("limits")
        if limits is not None and limits.kind is dict:
            base = out.get(f.name)
            value = {**(base if isinstance(base, dict) else {}), **dict(value)}
        out[f.name] = value
    return out


def closest(word, known) -> str:
    """": did you mean 'x'?" for the known word closest to ``word``, else the known ones."""
    import difflib

    close = difflib.get_close_matches(str(word), list(known), n=1, cutoff=0.6)
    return f": did you mean '{close[0]}'?" if close else f" (known: {', '.join(known)})"


def name_prefixes(name: str) -> list:
    """``name``, then each part of it before an ``_``, longest first: what a variant's name
    falls back to (``push_obstacle_fast``: push_obstacle, then push)."""
    parts = str(name).split("_")
    return ["_".join(parts[:n]) for n in range(len(parts), 0, -1)]


def shown(value) -> str:
    """``repr(value)``, cut to 80 characters (a value quoted in a one-line error)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_keys(value, known, where: str, place: str, error=SettingError) -> dict:
    """``value`` as a mapping holding only ``known`` keys; else ``error`` naming the file
    (``where``), the key, where it is (``place``) and the closest known key."""
    if not isinstance(value, dict):
        raise error(f"{where}: {place} must be a mapping, got {type(value).__name__} "
                    f"{shown(value)}")
    for key in value:
        if key not in known:
            raise error(f"{where}: unknown key '{key}' in {place}{closest(key, known)}")
    return value
