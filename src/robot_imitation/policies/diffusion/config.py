"""The diffusion family's options (no torch here: the command line reads them)."""
from __future__ import annotations

from dataclasses import dataclass

from ...settings import Limits, SettingError, same_as, setting
from ..config import LAYERS, MAX_WIDTH, WIDTH, CameraOptions, PolicyConfig, check_cameras

_POSITIVE = Limits(int, low=1)


@dataclass
class DiffusionConfig(PolicyConfig):
    """Everything needed to rebuild a diffusion network (stored in policy.json). The defaults
    train on 2 CPU cores in minutes for the built-in tasks."""

    default_chunk = 8
    # the U-Net on reach (80 demonstrations, 3,000 steps of 128): 95/100 at 3e-3, 80/100 at 1e-3
    default_lr = 3e-3
    warm_start_free = ("inference_steps", "seed")

    denoiser: str = setting("unet", Limits(str, choices=("unet", "mlp")),
                            help="the denoising network: unet (a 1D temporal convolutional "
                            "U-Net over the chunk, FiLM-conditioned) or mlp (residual MLP "
                            "blocks on the flattened chunk: faster, less precise)")
    unet_channels: list = setting(
        limits=Limits(list, nonempty=True, item=Limits(int, low=8, high=MAX_WIDTH)),
        default_factory=lambda: [64, 128],
        help="unet: channels per resolution level (each a multiple of 8; the chunk is halved "
        "between levels)")
    kernel_size: int = setting(5, Limits(int, low=1, high=15),
                               help="unet: width of the temporal convolutions (odd)")
    width: int = setting(256, WIDTH, help="mlp: width of the denoiser's residual blocks; "
                         "unet: width of the conditioning embedding")
    blocks: int = setting(3, LAYERS, help="mlp: residual blocks of the denoiser")
    train_steps: int = setting(100, Limits(int, low=2, high=10000),
                               help="diffusion steps of the noise schedule (training)")
    inference_steps: int = setting(10, _POSITIVE,
                                   help="DDIM steps at inference (at most train_steps)")
    seed: int = setting(0, Limits(int, low=0, high=2**31 - 1),
                        help="seed of the sampler's initial noise at inference (a fixed seed "
                        "gives the same chunk for the same observation)")
    image_channels: list = same_as(CameraOptions, "image_channels")
    keypoints: int = same_as(CameraOptions, "keypoints")

    @classmethod
    def from_stored(cls, data: dict) -> "DiffusionConfig":
        # policy.json written before the U-Net was the default holds no denoiser: its network
        # is the residual MLP. Only stored configs: a new run that sets `width` (the U-Net's
        # conditioning width too) and no denoiser trains the default U-Net.
        if isinstance(data, dict) and "width" in data and "denoiser" not in data:
            data = {**data, "denoiser": "mlp"}
        return cls.from_dict(data)

    def __post_init__(self):
        super().__post_init__()
        if self.inference_steps > self.train_steps:
            raise SettingError(f"diffusion: inference_steps {self.inference_steps} exceeds "
                               f"train_steps {self.train_steps}")
        bad = [c for c in self.unet_channels if c % 8]
        if bad:
            raise SettingError(f"diffusion: unet_channels {self.unet_channels}: each must be a "
                               f"multiple of 8 (the U-Net's group norm), not {bad}")
        if self.kernel_size % 2 == 0:
            raise SettingError(f"diffusion: kernel_size must be odd, got {self.kernel_size}")
        check_cameras(self, "diffusion")
