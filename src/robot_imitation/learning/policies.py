"""The mlp policy family under its former names (``Policy``, ``PolicyConfig``), for code
written before policy families: new code uses ``robot_imitation.policies`` (the base class,
the registry) and ``robot_imitation.policies.mlp``."""
from ..policies.base import Batch, Normalizer
from ..policies.mlp.config import HEADS, MlpConfig as PolicyConfig
from ..policies.mlp.model import ImageEncoder, MlpPolicy as Policy, SpatialSoftmax, mlp

__all__ = ["Batch", "HEADS", "ImageEncoder", "Normalizer", "Policy", "PolicyConfig",
           "SpatialSoftmax", "mlp"]
