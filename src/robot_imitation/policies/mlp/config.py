"""The mlp family's options (no torch here: the command line reads them)."""
from __future__ import annotations

from dataclasses import dataclass

from ...settings import Limits, same_as, setting
from ..config import CameraOptions, PolicyConfig, check_cameras, check_widths

HEADS = ("mse", "gaussian", "gmm", "categorical")
_SIZES = Limits(list, nonempty=True, item=Limits(int, low=1))  # (at most MAX_WIDTH each)


@dataclass
class MlpConfig(PolicyConfig):
    """Everything needed to rebuild an mlp network (stored in policy.json)."""

    hidden: list = setting(limits=_SIZES, default_factory=lambda: [256, 256],
                           help="hidden layer sizes of the MLP, e.g. 256,256")
    head: str = setting("mse", Limits(str, choices=HEADS),
                        help="policy head: mse, gaussian (learned variance), gmm (a mixture "
                        "of Gaussians), categorical (discrete actions)")
    modes: int = setting(5, Limits(int, low=1, high=100), help="gmm head: mixture components")
    num_classes: int = setting(0, Limits(int, low=0, high=65536),
                               help="categorical head: classes per action value (2 or more)")
    image_channels: list = same_as(CameraOptions, "image_channels")
    keypoints: int = same_as(CameraOptions, "keypoints")
    dropout: float = setting(0.0, Limits(float, low=0.0, high=0.95),
                             help="dropout between hidden layers")

    def __post_init__(self):
        super().__post_init__()
        check_widths("hidden", self.hidden)
        check_cameras(self, "mlp")
