"""The ``mlp`` policy family: an MLP on the low-dimensional observations, a small CNN per
camera (spatial-softmax keypoints), heads mse / gaussian / gmm / categorical, action chunks.

``config`` (``MlpConfig``, ``HEADS``) imports no torch; ``model`` (``MlpPolicy``, registered as
``mlp``) is imported when first used.
"""
from .config import HEADS, MlpConfig

__all__ = ["HEADS", "MlpConfig", "MlpPolicy", "ImageEncoder", "SpatialSoftmax", "mlp"]


def __getattr__(name):
    if name in ("MlpPolicy", "ImageEncoder", "SpatialSoftmax", "mlp"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
