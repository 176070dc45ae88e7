"""The base class of every policy family: what the trainer, the checkpoint loader, the
inference backends and the policy node call, the same way for every family.

A family is a ``Policy`` subclass with a config dataclass (a ``PolicyConfig`` subclass, its
``config_class``), registered by type name (``registry.register_policy``). It implements:

- ``loss(batch)``: the training loss of a ``Batch`` (raw observations, raw action chunks and
  their mask), a scalar tensor, or (loss, {name: scalar}) with metrics to log;
- ``act(obs)``: raw observations {key: (B, ...)} in, a raw action chunk (B, chunk, action_dim)
  out: normalization and relative actions are the policy's business, inside the model;

and may override ``reset()`` (between episodes; a policy that keeps state between calls also
sets ``traceable = False``), ``set_statistics`` (the training split's statistics), ``options``
and ``build``, and set ``deploy_defaults`` (how the policy node executes its chunks by default).

Every policy holds the normalizers ``obs_norm`` (low-dimensional inputs and derived features,
in spec order) and ``act_norm`` (actions, relative where declared), set from the training
split's statistics per the spec's normalization methods; ``normalized_inputs``,
``normalize_actions`` and ``raw_actions`` use them. A family is free not to.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..settings import SettingError
from ..spec import derive
from .config import PolicyConfig, input_layout


class PolicyError(SettingError):
    """A family that breaks the interface (a loss that is not a scalar tensor): one line
    naming the family."""


@dataclass
class Batch:
    """One training batch: raw observations {key: (B, ...)} (images uint8 (B, H, W, C)), the
    raw action chunks to predict (B, chunk, action_dim) and their mask (B, chunk): 1 where the
    target step lies inside the sample's episode (None: all)."""

    obs: dict
    actions: torch.Tensor
    mask: torch.Tensor | None = None


class Normalizer(nn.Module):
    """x -> (x - shift) / scale, with the statistics as buffers (saved with the weights)."""

    def __init__(self, size: int):
        super().__init__()
        self.register_buffer("shift", torch.zeros(size))
        self.register_buffer("scale", torch.ones(size))

    def set(self, shift, scale) -> None:
        self.shift.copy_(torch.as_tensor(shift, dtype=torch.float32))
        self.scale.copy_(torch.as_tensor(scale, dtype=torch.float32).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale + self.shift


# an input whose spread (standard deviation, or half its range) in the training data is below
# this is constant there: scaled by 1 (its own units), not by its spread of ~0, which made a
# change the data never showed (a target's orientation 0.1 degree off) thousands of standard
# deviations at the policy's input
CONSTANT_SPREAD = 1e-5


def _spreads(spec, stats: dict) -> list:
    """Per policy input: (key, shift, spread) per the spec's observation method."""
    min_max = spec.normalization.get("observations", "mean_std") == "min_max"
    out = []
    for f in spec.policy_inputs:
        s = stats["observations"][f.key]
        out.append((f.key, (s.max + s.min) / 2 if min_max else s.mean,
                    (s.max - s.min) / 2 if min_max else s.std))
    return out


def constant_inputs(spec, stats: dict) -> list:
    """The policy inputs constant in the training data, as ``key[i:j]`` (scaled by 1)."""
    found = []
    for key, _, spread in _spreads(spec, stats):
        flat = np.atleast_1d(np.asarray(spread)).reshape(-1) < CONSTANT_SPREAD
        i = 0
        while i < len(flat):
            if flat[i]:
                j = i
                while j < len(flat) and flat[j]:
                    j += 1
                found.append(f"{key}[{i}]" if j == i + 1 else f"{key}[{i}:{j}]")
                i = j
            else:
                i += 1
    return found


def normalization(spec, stats: dict) -> tuple:
    """(observation shift, scale, action shift, scale) from the training split's statistics
    (``FieldStats`` per policy input, and of the actions), per the spec's methods. An input
    constant in the data (``CONSTANT_SPREAD``) is scaled by 1."""
    parts = _spreads(spec, stats)
    shift = np.concatenate([np.atleast_1d(p[1]) for p in parts])
    spread = np.concatenate([np.atleast_1d(p[2]) for p in parts])
    scale = np.where(spread < CONSTANT_SPREAD, 1.0, spread)
    a = stats["actions"]
    if spec.normalization.get("actions", "min_max") == "min_max":
        act = ((a.max + a.min) / 2, np.maximum((a.max - a.min) / 2, 1e-6))
    else:
        act = (a.mean, a.std)
    return shift, scale, act[0], act[1]


def statistics_record(spec, stats: dict) -> dict:
    """The statistics as JSON, as a checkpoint stores them."""
    return {"observations": {f.key: stats["observations"][f.key].to_dict()
                             for f in spec.policy_inputs},
            "actions": stats["actions"].to_dict(), "methods": dict(spec.normalization)}


class Policy(nn.Module):
    """Base of every policy family (see the module docstring)."""

    config_class: ClassVar[type] = PolicyConfig
    type_name: ClassVar[str] = ""      # set by register_policy
    # act() is a pure function of its inputs (no state between calls, no Python branching on
    # values): TorchScript tracing and ONNX export may run it
    traceable: ClassVar[bool] = True
    # what loss() averages over: "samples", or "valid_steps" (the unmasked chunk steps of the
    # batch; a multi-process run then rescales each process's loss to the whole batch's)
    loss_mean_over: ClassVar[str] = "samples"
    # the statistics its relative actions are normalized with: of the next step ("step"), or
    # of every step of the chunk ("chunk": a family whose sampler clips to the normalized
    # range needs its later steps inside it; the others keep the next step's finer scale)
    action_statistics: ClassVar[str] = "step"
    # how the policy node executes this family's chunks by default (its ``chunk_mode`` "auto",
    # see ``deployment``): the controller's chunk_mode, and for "chunk" optionally
    # chunk_execute (default: half the chunk) and prefetch (ticks of lead of the next chunk)
    deploy_defaults: ClassVar[dict] = {"chunk_mode": "first"}

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, "
                            f"not a {type(cfg).__name__}")
        self.cfg = cfg
        self.obs_norm = Normalizer(cfg.input_dim)
        self.derived = cfg.feature_specs()
        self.act_norm = Normalizer(cfg.action_dim)

    @classmethod
    def deployment(cls, cfg: PolicyConfig) -> dict:
        """The controller settings {chunk_mode, chunk_execute, prefetch} that chunk_mode "auto"
        takes for a policy of ``cfg``: ``deploy_defaults``, sized to ``cfg.chunk``. Executing
        half the chunk before the next one is computed, from an observation ``prefetch`` ticks
        before it is needed, keeps the policy reactive without inference on every tick."""
        out = {"chunk_mode": "first", "chunk_execute": 0, "prefetch": 0, **cls.deploy_defaults}
        if out["chunk_mode"] == "chunk":
            out["chunk_execute"] = min(out["chunk_execute"] or max(1, cfg.chunk // 2), cfg.chunk)
            out["prefetch"] = min(out["prefetch"], out["chunk_execute"] - 1)
        return out

    # ----------------------------------------------------------------- building
    @classmethod
    def options(cls, settings) -> dict:
        """The family's options from the training settings (``TrainConfig``): the settings
        declared as this type's (``option_of``), then ``policy_config``."""
        own = {f.name: getattr(settings, f.name) for f in fields(settings)
               if f.metadata.get("option_of") == cls.type_name}
        return {**own, **dict(getattr(settings, "policy_config", {}) or {})}

    @classmethod
    def check_options(cls, options: dict, where: str = "policy_config",
                      settings: list | tuple = ()) -> None:
        """``SettingError`` for an option the family's config does not have, or a value
        outside the limits its field states. ``settings``: the flags of the family's options
        that are training settings of their own (``--hidden``): named apart, since they are
        not given in ``policy_config``."""
        own = cls.config_class.options()
        unknown = sorted(set(options) - set(own))
        if unknown:
            named = {flag.lstrip("-").replace("-", "_") for flag in settings}
            listed = sorted(set(own) - named)
            apart = f"; set with their own flags: {', '.join(sorted(settings))}" \
                if settings else ""
            raise SettingError(f"{where}: unknown options {unknown} of policy {cls.type_name} "
                               f"(its options: {', '.join(listed) or 'none'}{apart})")
        for name, value in options.items():
            limits = own[name].metadata.get("limits")
            if limits is not None:
                limits.check(f"{where} {name}", value)

    @classmethod
    def make_config(cls, spec, settings) -> PolicyConfig:
        """The config of a policy for ``spec`` trained with ``settings`` (``TrainConfig``)."""
        options = cls.options(settings)
        cls.check_options(options)
        return cls.config_class.from_dict({**input_layout(spec, settings.chunk), **options})

    @classmethod
    def build(cls, spec, stats: dict | None, settings) -> "Policy":
        """A new policy for ``spec``, with the training split's statistics ``stats`` (None:
        identity normalization) and the training settings (``TrainConfig``)."""
        policy = cls(cls.make_config(spec, settings))
        if stats is not None:
            policy.set_statistics(spec, stats)
        return policy

    @classmethod
    def from_config(cls, data: dict) -> "Policy":
        """The policy (untrained weights) of a stored config (``policy.json``'s ``policy``)."""
        return cls(cls.config_class.from_stored(data))

    def set_statistics(self, spec, stats: dict) -> None:
        """Load the training split's statistics (actions relative where declared)."""
        obs_shift, obs_scale, act_shift, act_scale = normalization(spec, stats)
        self.obs_norm.set(obs_shift, obs_scale)
        self.act_norm.set(act_shift, act_scale)

    # ----------------------------------------------------------------- helpers
    def normalized_inputs(self, obs: dict) -> torch.Tensor:
        """(B, input_dim): the low-dimensional observations and derived features, in spec
        order, normalized."""
        raw = derive(self.derived, {k: obs[k].float().reshape(obs[k].shape[0], -1)
                                    for k in self.cfg.low_dim_keys})
        low = torch.cat([raw[k] for k in self.cfg.low_dim_keys]
                        + [raw[f.key] for f in self.derived], dim=-1)
        return self.obs_norm(low)

    def action_base(self, obs: dict) -> torch.Tensor | None:
        """(B, 1, action_dim): what relative actions are measured from (None: all absolute)."""
        if not self.cfg.relative:
            return None
        first = obs[self.cfg.low_dim_keys[0]]
        base = torch.zeros(first.shape[0], 1, self.cfg.action_dim, device=first.device)
        for offset, size, key in self.cfg.relative:
            base[:, 0, offset:offset + size] = obs[key][:, :size].float()
        return base

    def normalize_actions(self, actions: torch.Tensor, obs: dict) -> torch.Tensor:
        """Raw action chunks -> what the network predicts (relative, normalized)."""
        base = self.action_base(obs)
        if base is not None:
            actions = actions - base
        return self.act_norm(actions.float())

    def raw_actions(self, predicted: torch.Tensor, obs: dict) -> torch.Tensor:
        """The inverse of ``normalize_actions``."""
        actions = self.act_norm.inverse(predicted)
        base = self.action_base(obs)
        return actions if base is None else actions + base

    # ----------------------------------------------------------------- the interface
    def loss(self, batch: Batch):
        """The training loss of ``batch`` (a scalar tensor), or (loss, {name: scalar})."""
        raise NotImplementedError

    def act(self, obs: dict) -> torch.Tensor:
        """Raw action chunks (B, chunk, action_dim) for raw observations {key: (B, ...)}."""
        raise NotImplementedError

    def inference_module(self) -> nn.Module | None:
        """A module the inference backends may run (and export) instead of ``act``: low
        (1, low_dim) float32, the low-dimensional observations side by side in spec order, and
        for a policy with cameras each camera's features (1, F) in ``image_keys`` order (the
        inputs of its split head, ``deploy.backends.split_policy``: asked only where the
        policy splits), to the raw chunk (chunk, action_dim), equal to ``act`` up to float32
        rounding, written for speed (constants folded, fewer operators). None (the default):
        ``act`` itself. ``select_backend`` checks whatever a backend runs against ``act``."""
        return None

    def reset(self) -> None:
        """A new episode starts (a policy that keeps state between calls forgets it)."""
