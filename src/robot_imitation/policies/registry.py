"""Policy families by type name: the one place a name becomes a class.

- ``register_policy("name")``: a class decorator (or ``register_policy("name", cls)``) that
  makes a ``Policy`` subclass the family ``name`` and sets its ``type_name``.
- ``policy_class("name")``: the class; an unknown name raises ``UnknownPolicyError``, one line
  naming it and the known types.
- ``available_policies()``: the known type names.

The built-in families are imported the first time they are asked for. Other packages add
families without touching this one, through the entry-point group ``robot_imitation.policies``
(as ros2cli and gymnasium plugins do), e.g. in a ``pyproject.toml``::

    [project.entry-points."robot_imitation.policies"]
    tiny = "my_package.tiny:TinyPolicy"

An entry point is loaded when its name is asked for and not registered yet; listing reads the
names without importing anything. Nothing here imports torch.
"""
from __future__ import annotations

import importlib
import re
from importlib import metadata

ENTRY_POINT_GROUP = "robot_imitation.policies"
# built-in families: the module whose import registers each
BUILTIN = {"mlp": "robot_imitation.policies.mlp.model",
           "act": "robot_imitation.policies.act.model",
           "diffusion": "robot_imitation.policies.diffusion.model"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

_REGISTRY: dict = {}


class UnknownPolicyError(ValueError):
    """A policy type that is not registered, built in or an entry point (names it and the
    known ones), or one whose entry point cannot be loaded."""


def register_policy(name: str, cls=None):
    """Register ``cls`` (a ``Policy`` subclass) as the family ``name``; as a decorator when
    ``cls`` is not given. Registering another class under a taken name is an error."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"a policy type name is letters, digits, '_', '.', '-', got {name!r}")

    def add(cls):
        from .base import Policy

        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise TypeError(f"policy type {name!r}: {cls!r} is not a subclass of "
                            "robot_imitation.policies.Policy")
        home = BUILTIN.get(name)
        if home is not None and cls.__module__ != home:
            # a family copied from a built-in one with its decorator left as it was would
            # otherwise take the built-in's name (and its checkpoints) without a word
            raise ValueError(f"{cls.__module__}.{cls.__qualname__} registers the policy type "
                             f"{name!r}, a built-in family's name ({home}): register it "
                             "under a name of its own")
        old = _REGISTRY.get(name)
        if old is not None and old is not cls:
            raise ValueError(f"policy type {name!r} is registered already, by "
                             f"{old.__module__}.{old.__qualname__}")
        cls.type_name = name
        _REGISTRY[name] = cls
        return cls

    return add if cls is None else add(cls)


def unregister_policy(name: str) -> None:
    """Forget the family ``name`` (tests; a plugin being reloaded)."""
    _REGISTRY.pop(name, None)


def _registered_by(module: str) -> str:
    return ", ".join(repr(n) for n, c in sorted(_REGISTRY.items()) if c.__module__ == module)


def _entry_points() -> list:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def available_policies() -> list:
    """The known policy type names: registered, built in, or named by an entry point."""
    return sorted(set(_REGISTRY) | set(BUILTIN) | {ep.name for ep in _entry_points()})


def policy_class(name: str):
    """The ``Policy`` subclass registered as ``name`` (importing a built-in family or loading
    an entry point of that name the first time). ``UnknownPolicyError`` when there is none."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    named = [ep for ep in _entry_points() if isinstance(name, str) and ep.name == name]
    if isinstance(name, str) and name in BUILTIN:
        if named:   # which one the user means cannot be told: neither is taken
            raise UnknownPolicyError(
                f"policy type {name!r}: the entry point {named[0].value} takes the name of a "
                f"built-in family ({BUILTIN[name]}); it needs a name of its own")
        try:
            importlib.import_module(BUILTIN[name])  # registers itself
        except (ImportError, TypeError, ValueError) as exc:
            raise UnknownPolicyError(f"policy type {name!r}: its module {BUILTIN[name]} "
                                     f"cannot be imported: {type(exc).__name__}: "
                                     f"{exc}") from None
        if name not in _REGISTRY:
            raise UnknownPolicyError(
                f"policy type {name!r}: its module {BUILTIN[name]} registers no family of that "
                f"name (it registers {_registered_by(BUILTIN[name]) or 'none'}); its class "
                f"needs @register_policy({name!r})")
    elif isinstance(name, str):
        if len({ep.value for ep in named}) > 1:
            raise UnknownPolicyError(
                f"policy type {name!r}: named by several entry points "
                f"({', '.join(sorted({ep.value for ep in named}))}); uninstall all but one")
        for ep in named:
            try:
                loaded = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin is named, not fatal
                raise UnknownPolicyError(
                    f"policy type {name!r}: its entry point {ep.value} cannot be loaded: "
                    f"{type(exc).__name__}: {exc}") from None
            if name not in _REGISTRY:
                try:
                    register_policy(name, loaded)
                except (TypeError, ValueError) as exc:
                    raise UnknownPolicyError(f"entry point {ep.value}: {exc}") from None
            break
    if name not in _REGISTRY:
        raise UnknownPolicyError(f"unknown policy type {name!r} (known types: "
                                 f"{', '.join(available_policies())})")
    return _REGISTRY[name]
