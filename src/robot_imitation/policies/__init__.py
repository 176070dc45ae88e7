"""Policy families: one interface, chosen by type name.

- ``base``: ``Policy``, the base class of every family (``loss(batch)``, ``act(obs)``,
  ``reset()``, ``build(spec, stats, settings)``, ``from_config(dict)``), ``Batch``,
  ``Normalizer``.
- ``config``: ``PolicyConfig``, the input/output layout every family's config holds (what the
  inference backends and the policy node read).
- ``registry``: ``register_policy`` (a class decorator), ``policy_class(name)``,
  ``available_policies()``; other packages add families through the entry-point group
  ``robot_imitation.policies``.
- ``encoders``: the suite's camera encoder (``ImageEncoder``, ``SpatialSoftmax``), which every
  family that takes camera observations builds with ``camera_encoders(cfg)``; its options are
  ``config.CameraOptions``.
- ``mlp/``: the built-in family ``mlp`` (MLP + camera CNN, heads mse/gaussian/gmm/categorical);
  ``act/`` (a CVAE action-chunking transformer); ``diffusion/`` (a denoiser over action chunks,
  DDIM sampling).

Adding a family in this package: a folder ``policies/<name>/`` with its config dataclass (a
``PolicyConfig`` subclass whose fields are declared with ``settings.setting``) and its
``Policy`` subclass decorated ``@register_policy("<name>")``, and the module in
``registry.BUILTIN``. From another package: the same two classes there, and an entry point
``<name> = "package.module:Class"`` in the group ``robot_imitation.policies``.

``registry`` and ``config`` import no torch; the names of ``base`` load it when first used.
"""
from .config import LAYOUT, PolicyConfig, input_layout
from .registry import (ENTRY_POINT_GROUP, UnknownPolicyError, available_policies, policy_class,
                       register_policy, unregister_policy)

__all__ = ["LAYOUT", "PolicyConfig", "input_layout", "ENTRY_POINT_GROUP", "UnknownPolicyError",
           "available_policies", "policy_class", "register_policy", "unregister_policy",
           "Policy", "Batch", "Normalizer", "make_policy"]


def __getattr__(name):
    if name in ("Policy", "Batch", "Normalizer"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_policy(spec, settings=None, stats=None):
    """A new policy of ``settings.policy`` (a ``TrainConfig``; default: its defaults, mlp) for
    ``spec``, normalized by ``stats`` when given (untrained weights)."""
    if settings is None:
        from ..learning.config import TrainConfig

        settings = TrainConfig()
    return policy_class(settings.policy).build(spec, stats, settings)
