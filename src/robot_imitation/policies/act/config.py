"""The act family's options (no torch here: the command line reads them)."""
from __future__ import annotations

from dataclasses import dataclass

from ...settings import Limits, SettingError, same_as, setting
from ..config import LAYERS, WIDTH, CameraOptions, PolicyConfig, check_cameras



@dataclass
class ActConfig(PolicyConfig):
    """Everything needed to rebuild an act network (stored in policy.json). The defaults train
    on 2 CPU cores in minutes for the built-in tasks (ACT's own sizes, 512 wide with 4
    encoder layers, are for camera policies on a GPU: set them with ``policy_config``). On
    push_obstacle (100 demonstrations, 6,000 steps) 128 wide with 2 encoder layers succeeded in
    43-49 of 50 episodes by execution, 64 wide with one in 24-41."""

    default_chunk = 8
    warm_start_free = ("dropout", "kl_weight")

    dim_model: int = setting(128, WIDTH, help="width of the transformer's tokens")
    heads: int = setting(4, WIDTH, help="attention heads (dim_model must divide by it)")
    encoder_layers: int = setting(2, LAYERS, help="transformer encoder layers (observation "
                                  "and latent tokens)")
    decoder_layers: int = setting(1, LAYERS, help="transformer decoder layers (one query per "
                                  "action of the chunk)")
    vae_layers: int = setting(1, LAYERS, help="layers of the CVAE encoder over the "
                              "demonstrated chunk (training only)")
    feedforward: int = setting(512, WIDTH, help="feedforward width of every layer")
    latent_dim: int = setting(16, WIDTH, help="CVAE latent size")
    kl_weight: float = setting(10.0, Limits(float, low=0.0), help="weight of the KL term")
    dropout: float = setting(0.1, Limits(float, low=0.0, high=0.95),
                             help="dropout inside the transformer")
    image_channels: list = same_as(CameraOptions, "image_channels")
    keypoints: int = same_as(CameraOptions, "keypoints")

    def __post_init__(self):
        super().__post_init__()
        if self.dim_model % self.heads:
            raise SettingError(f"act: dim_model {self.dim_model} does not divide into "
                               f"{self.heads} heads")
        check_cameras(self, "act")
