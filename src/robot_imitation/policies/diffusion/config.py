"""The diffusion family's options (no torch here: the command line reads them)."""
from __future__ import annotations

from dataclasses import dataclass

from ...settings import Limits, SettingError, same_as, setting
from ..config import CameraOptions, PolicyConfig, check_cameras

_POSITIVE = Limits(int, low=1)


@dataclass
class DiffusionConfig(PolicyConfig):
    """Everything needed to rebuild a diffusion network (stored in policy.json). The defaults
    train on 2 CPU cores in minutes for the built-in tasks."""

    default_chunk = 8

    width: int = setting(256, _POSITIVE, help="width of the denoiser's residual blocks")
    blocks: int = setting(3, _POSITIVE, help="residual blocks of the denoiser")
    train_steps: int = setting(100, Limits(int, low=2, high=10000),
                               help="diffusion steps of the noise schedule (training)")
    inference_steps: int = setting(10, _POSITIVE,
                                   help="DDIM steps at inference (at most train_steps)")
    seed: int = setting(0, Limits(int, low=0, high=2**31 - 1),
                        help="seed of the sampler's initial noise at inference (a fixed seed "
                        "gives the same chunk for the same observation)")
    image_channels: list = same_as(CameraOptions, "image_channels")
    keypoints: int = same_as(CameraOptions, "keypoints")

    def __post_init__(self):
        super().__post_init__()
        if self.inference_steps > self.train_steps:
            raise SettingError(f"diffusion: inference_steps {self.inference_steps} exceeds "
                               f"train_steps {self.train_steps}")
        check_cameras(self, "diffusion")
