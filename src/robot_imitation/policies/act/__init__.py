"""The ``act`` policy family: action chunking with a transformer and a conditional VAE over the
demonstrated chunk (as ACT). ``config`` (``ActConfig``) imports no torch; ``model``
(``ActPolicy``, registered as ``act``) is imported when first used."""
from .config import ActConfig

__all__ = ["ActConfig", "ActPolicy"]


def __getattr__(name):
    if name == "ActPolicy":
        from . import model

        return model.ActPolicy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
