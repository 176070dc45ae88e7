"""A DAgger run's settings as a person sets them: the command line's ``dagger`` and
``pipeline`` options and the DAgger node's parameters, one setting each.

``DaggerConfig`` keeps the scripted supervisor's settings in a mapping (``supervisor``, checked
against ``SUPERVISOR_LIMITS``) and each iteration's training settings in another (``train``,
``TrainConfig`` fields). A few of them are settings of their own for a person:
``SUPERVISOR_SETTINGS`` (``hold``, ``patience``) and ``TRAIN_SETTINGS`` (``train_steps``,
option ``--steps``; ``device``; the policy family ``policy``, its ``chunk`` and its options
``policy_config``, option ``--policy-option KEY=VALUE``). ``DaggerSettings`` is DaggerConfig
with those in place of the two mappings, made from the fields, nothing restated:

- every other DaggerConfig field as it is declared there (default, limits, description), so a
  field added to DaggerConfig is an option and a node parameter by itself;
- a supervisor setting: its limits from ``SUPERVISOR_LIMITS``, its default and description
  from ``InterventionGate``'s field (unless DaggerConfig's ``supervisor`` default sets it);
- a training setting: its limits and description from ``TrainConfig``'s field, its default
  from DaggerConfig's ``train`` default (else TrainConfig's).

``settings.add_arguments`` makes the command line's options from it, ``nodes.common.params_of``
the node's parameters, and ``to_config`` turns its values back into a ``DaggerConfig``.
No torch and no ROS here: the command line reads it to build its options.
"""
from __future__ import annotations

import dataclasses

from ..learning.config import TrainConfig
from ..settings import SettingError, check_fields, default_of, help_of, same_as, setting
from ..sim.supervisor import InterventionGate
from .dagger import SUPERVISOR_LIMITS, DaggerConfig

#: the supervisor settings (keys of DaggerConfig.supervisor) that are settings of their own
SUPERVISOR_SETTINGS = ("hold", "patience")
#: the training settings that are settings of their own: {name here: TrainConfig field}
TRAIN_SETTINGS = {"train_steps": "steps", "device": "device", "policy": "policy", "chunk": "chunk",
                  "policy_config": "policy_config"}


def _supervisor_field(cls, key: str):
    default = {**{f.name: f.default for f in dataclasses.fields(InterventionGate)},
               **default_of(cls, "supervisor")}[key]
    return (key, InterventionGate.__dataclass_fields__[key].type,
            setting(default, SUPERVISOR_LIMITS[key],
                    help="gated, the scripted supervisor: " + help_of(InterventionGate, key)))


def _train_field(cls, name: str, key: str):
    field = TrainConfig.__dataclass_fields__[key]
    default = default_of(cls, "train").get(key, default_of(TrainConfig, key))
    flag = field.metadata.get("flag") or (key.replace("_", "-") if key != name else None)
    mutable = isinstance(default, (dict, list))
    return (name, field.type,
            setting(dataclasses.MISSING if mutable else default, field.metadata["limits"],
                    default_factory=(lambda: type(default)(default)) if mutable
                    else dataclasses.MISSING, flag=flag,
                    help="each iteration's training: " + help_of(TrainConfig, key)))


def flat_settings(cls=DaggerConfig):
    """The dataclass of ``cls``'s settings (DaggerConfig or one like it) with its
    ``supervisor`` and ``train`` mappings replaced, in their place, by the settings of
    ``SUPERVISOR_SETTINGS`` and ``TRAIN_SETTINGS``. An instance is checked like
    ``cls``'s (``SettingError`` naming the setting and the value)."""
    fields = []
    for f in dataclasses.fields(cls):
        if f.name == "supervisor":
            fields += [_supervisor_field(cls, key) for key in SUPERVISOR_SETTINGS]
        elif f.name == "train":
            fields += [_train_field(cls, name, key) for name, key in TRAIN_SETTINGS.items()]
        else:
            fields.append((f.name, f.type, same_as(cls, f.name)))
    flat = dataclasses.make_dataclass(
        "DaggerSettings", fields,
        namespace={"__post_init__": check_fields, "__module__": __name__})
    flat.__doc__ = (f"{cls.__name__}'s settings as a person sets them (see "
                    f"robot_imitation.algorithms.dagger_settings).")
    return flat


DaggerSettings = flat_settings()


def to_config(values: dict, cls=DaggerConfig):
    """The ``cls`` (DaggerConfig) of the settings ``values`` ({name: value} of ``flat``,
    ``flat_settings(cls)``; the others at their defaults): the supervisor and training
    settings go into its ``supervisor`` and ``train`` mappings. ``SettingError`` naming an
    unknown setting or one outside its limits."""
    flat = DaggerSettings if cls is DaggerConfig else flat_settings(cls)
    names = [f.name for f in dataclasses.fields(flat)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise SettingError(f"unknown DAgger settings {unknown} (known: {sorted(names)})")
    settings = dataclasses.asdict(flat(**values))  # checked, with the defaults of the others
    supervisor = {**default_of(cls, "supervisor"),
                  **{key: settings.pop(key) for key in SUPERVISOR_SETTINGS}}
    train = default_of(cls, "train")
    for name, key in TRAIN_SETTINGS.items():  # the mapping names what differs from TrainConfig
        value = settings.pop(name)
        if key in train or value != default_of(TrainConfig, key):
            train[key] = value
    return cls(**settings, supervisor=supervisor, train=train)
