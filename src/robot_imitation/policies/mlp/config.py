"""The mlp family's options (no torch here: the command line reads them)."""
from __future__ import annotations

from dataclasses import dataclass

from ...settings import Limits, SettingError, default_of, same_as, setting
from ..config import CameraOptions, PolicyConfig, check_cameras, check_widths

HEADS = ("mse", "gaussian", "gmm", "categorical")
_SIZES = Limits(list, nonempty=True, item=Limits(int, low=1))  # (at most MAX_WIDTH each)


@dataclass
class MlpConfig(PolicyConfig):
    """Everything needed to rebuild an mlp network (stored in policy.json)."""

    # (no setting is free at a warm start: a dropout between hidden layers is a module of its
    # own, so dropout 0 and 0.1 name the layers' weights differently)

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

    @classmethod
    def check_together(cls, options: dict) -> None:
        """Each head's own setting with that head only: ``num_classes`` (2 or more) is the
        categorical head's, a ``modes`` other than its default the gmm head's; given with
        another head they changed nothing, without a word."""
        head = options.get("head", "mse")
        classes = options.get("num_classes", 0)
        if head == "categorical" and classes < 2:
            raise SettingError(f"mlp: the categorical head needs num_classes of 2 or more "
                               f"(classes per action value), not {classes}")
        if head != "categorical" and classes:
            raise SettingError(f"mlp: num_classes {classes} is a setting of the categorical "
                               f"head, and the head is {head} (set head categorical, or leave "
                               "num_classes out)")
        modes = options.get("modes", default_of(cls, "modes"))
        if head != "gmm" and modes != default_of(cls, "modes"):
            raise SettingError(f"mlp: modes {modes} is a setting of the gmm head, and the head "
                               f"is {head} (set head gmm, or leave modes out)")
