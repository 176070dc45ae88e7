"""The ``diffusion`` policy family: a denoiser over action chunks conditioned on the
observation, trained with the standard noise schedule and sampled with a few DDIM steps.
``config`` (``DiffusionConfig``) imports no torch; ``model`` (``DiffusionPolicy``, registered as
``diffusion``) is imported when first used."""
from .config import DiffusionConfig

__all__ = ["DiffusionConfig", "DiffusionPolicy", "DdimSchedule"]


def __getattr__(name):
    if name in ("DiffusionPolicy", "DdimSchedule"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
