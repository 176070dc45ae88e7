"""What every policy family's configuration holds: the layout of its inputs and outputs.

``PolicyConfig`` is the base of each family's config dataclass. Its fields come from the
spec (and the training's ``chunk``); the inference backends and the policy node's controller
read only these, the same way for every family. A family adds its own options as fields with
defaults, each declared with ``settings.setting`` (limits and a description): they are checked
when a config is made, and ``policy_config`` options of a training run are held to them.
``CameraOptions`` declares the camera encoder's options once, for every family that takes
camera observations (``check_cameras`` checks them).

Nothing here imports torch: the command line reads these dataclasses to build its options.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

from ..settings import Limits, SettingError, check_fields, setting

# the fields of PolicyConfig: filled from the spec, never an option of a family
# Upper limits of a network's sizes (a width of 1e8 or a feedforward of 1e9 was an allocation
# traceback at the first layer): far above what trains on one machine; the trainer's memory
# estimate refuses a network too large for the memory before it builds (learning.trainer).
MAX_WIDTH = 65536   # units, channels, features of one layer
MAX_LAYERS = 256    # layers or blocks of one network
WIDTH = Limits(int, low=1, high=MAX_WIDTH, what=f"a positive integer up to {MAX_WIDTH}")
LAYERS = Limits(int, low=1, high=MAX_LAYERS, what=f"a positive integer up to {MAX_LAYERS}")


def check_widths(name: str, sizes) -> None:
    """``SettingError`` naming ``name`` when one of its layer sizes is wider than
    ``MAX_WIDTH`` (a list setting whose items are "positive integers" in its limits)."""
    wide = [s for s in sizes if isinstance(s, int) and s > MAX_WIDTH]
    if wide:
        raise SettingError(f"{name} {','.join(map(str, sizes))}: {wide[0]} is wider than "
                           f"{MAX_WIDTH}, the widest layer a policy takes")

LAYOUT = ("low_dim_keys", "low_dim_sizes", "image_keys", "image_shapes", "action_dim", "chunk",
          "relative", "derived")


@dataclass
class PolicyConfig:
    """The input/output layout every policy has (stored in policy.json with the family's
    options)."""

    low_dim_keys: list = field(default_factory=list)   # low-dimensional observation keys, in order
    low_dim_sizes: list = field(default_factory=list)  # their sizes
    image_keys: list = field(default_factory=list)
    image_shapes: list = field(default_factory=list)  # (H, W, C) per image key
    action_dim: int = 1
    chunk: int = 1                                     # actions predicted per step
    # [action offset, size, observation key]: these actions are predicted relative to the
    # leading `size` values of that (raw) observation
    relative: list = field(default_factory=list)
    # the spec's features ({key, op, inputs, size}), computed from the low-dim inputs and
    # appended to them before normalization
    derived: list = field(default_factory=list)

    #: the chunk a training run predicts unless it sets one (``TrainConfig.chunk`` 0)
    default_chunk: ClassVar[int] = 1
    #: the learning rate of a training run that sets none (``TrainConfig.lr`` 0)
    default_lr: ClassVar[float] = 1e-3
    #: settings that change no weight's meaning, so a warm start (``TrainConfig.init_from``)
    #: may set them anew: regularization of training, how a trained network is sampled
    warm_start_free: ClassVar[tuple] = ()

    def __post_init__(self):
        check_fields(self)

    @classmethod
    def check_together(cls, options: dict) -> None:
        """``SettingError`` for a new run's options (the family's settings and
        ``policy_config``, by name) that only make sense together with another one that is not
        given: a setting that would change nothing (``num_classes`` without the categorical
        head). Not for stored configs: a checkpoint keeps loading."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PolicyConfig":
        if not isinstance(data, dict):
            raise SettingError(f"policy settings must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}  # (not the ClassVars dataclasses also list)
        unknown = set(data) - known
        if unknown:
            raise SettingError(f"unknown policy settings {sorted(unknown)} (known: "
                               f"{sorted(known)})")
        return cls(**data)

    @classmethod
    def from_stored(cls, data: dict) -> "PolicyConfig":
        """The config a checkpoint's ``policy.json`` holds (a family reads older files here);
        a new config is ``from_dict``."""
        return cls.from_dict(data)

    @classmethod
    def options(cls) -> dict:
        """The family's own fields (its options), by name."""
        return {f.name: f for f in fields(cls) if f.name not in LAYOUT}

    @property
    def low_dim(self) -> int:
        """Size of the flat raw low-dimensional input."""
        return int(sum(self.low_dim_sizes))

    @property
    def input_dim(self) -> int:
        """Size of what is normalized: raw low-dimensional inputs plus derived features."""
        return self.low_dim + int(sum(d["size"] for d in self.derived))

    def feature_specs(self) -> list:
        from ..spec import FeatureSpec

        return [FeatureSpec.from_dict(d) for d in self.derived]


def input_layout(spec, chunk: int = 1) -> dict:
    """The ``PolicyConfig`` fields of a policy for ``spec`` predicting ``chunk`` actions."""
    low = spec.low_dim_observations
    relative, offset = [], 0
    for f in spec.actions:
        if f.relative_to:
            relative.append([offset, f.shape[0], f.relative_to])
        offset += f.shape[0]
    return {"low_dim_keys": [f.key for f in low], "low_dim_sizes": [f.shape[0] for f in low],
            "image_keys": [f.key for f in spec.image_observations],
            "image_shapes": [list(f.shape) for f in spec.image_observations],
            "action_dim": spec.action_dim, "chunk": chunk, "relative": relative,
            "derived": [f.to_dict() for f in spec.features]}


@dataclass
class CameraOptions:
    """The options of the suite's camera encoder (``encoders.ImageEncoder``), declared once: a
    family that takes camera observations declares these fields ``same_as`` them (the same
    names, defaults, limits and descriptions in every family)."""

    image_channels: list = setting(
        limits=Limits(list, nonempty=True, item=WIDTH),
        default_factory=lambda: [32, 32, 64], help="camera encoder: channels of its convolutions")
    keypoints: int = setting(32, WIDTH,
                             help="camera encoder: spatial-softmax keypoints per camera")


def check_cameras(cfg, family: str) -> None:
    """``SettingError`` for ``CameraOptions`` of ``cfg`` that the encoder cannot take, when the
    spec has cameras (its group norm splits each convolution's channels into 8 groups)."""
    bad = [c for c in cfg.image_channels if c % 8]
    if cfg.image_keys and bad:
        raise SettingError(f"{family}: image_channels {cfg.image_channels}: each must be a "
                           f"multiple of 8 (the camera encoder's group norm), not {bad}")
