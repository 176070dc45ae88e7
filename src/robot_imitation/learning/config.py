"""``TrainConfig``: the training settings, each declared once, here.

Each field states its default, its limits (``settings.Limits``) and its description. From
these come the checks of an instance (``SettingError`` naming the setting and the value), the
command line's ``train`` options (``settings.add_arguments``) and the trainer node's parameters
(``nodes.common.params_of``). No torch here: the command line reads the fields to build its
options.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..policies.mlp.config import MlpConfig
from ..settings import (Limits, SettingError, check_fields, default_of, flag_of, same_as,
                        setting)

_POSITIVE, _NON_NEGATIVE = Limits(int, low=1), Limits(int, low=0)
MAX_BATCH = 2**20  # samples per step
SEED_LIMITS = Limits(int, low=0, high=2**32 - 1)  # numpy's seeds
DEVICE_LIMITS = Limits(str, pattern=r"auto|cpu|cuda(:\d+)?", what="auto, cpu, cuda or cuda:N")
POLICY_LIMITS = Limits(str, pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]*", what="a policy type name")


@dataclass
class TrainConfig:
    """Training settings. Each field states its limits (``settings.Limits``): an instance
    outside them is never made (``SettingError`` naming the setting and the value), and the
    command line's options and the trainer node's parameters take the same limits from here.

    ``policy`` picks the family (a registered type); its options come from the fields declared
    ``option_of`` it (mlp: hidden, head, modes, dropout) and from ``policy_config``."""

    steps: int = setting(5000, _POSITIVE, help="optimizer steps")
    # (a batch of 1e8 samples was an allocation traceback, or the OOM killer, at the first step)
    batch_size: int = setting(256, Limits(int, low=1, high=MAX_BATCH),
                              help="samples per step")
    lr: float = setting(0.0, Limits(float, low=0.0, high=1.0),
                        help="learning rate (AdamW, cosine schedule); left out (0 as a node "
                        "parameter): the policy family's default (mlp and act 1e-3, diffusion "
                        "3e-3); train refuses --lr 0 (or 1e-400, which reads as 0)")
    weight_decay: float = setting(1e-4, Limits(float, low=0.0, high=1.0),
                                  help="AdamW weight decay")
    policy: str = setting("mlp", POLICY_LIMITS,
                          help="policy family: a registered type (mlp built in; other packages "
                          "add types through the robot_imitation.policies entry points)")
    policy_config: dict = setting(
        limits=Limits(dict), default_factory=dict, flag="policy-option",
        help="options of the policy family, checked against its config: KEY=VALUE on the "
        "command line, a YAML mapping such as '{width: 64}' as a node parameter (mlp's: "
        "num_classes, image_channels, keypoints, its others are settings of their own; act's "
        "and diffusion's: all theirs, the camera encoder's image_channels and keypoints as "
        "mlp's)")
    hidden: list = same_as(MlpConfig, "hidden", option_of="mlp")
    head: str = same_as(MlpConfig, "head", option_of="mlp")
    modes: int = same_as(MlpConfig, "modes", option_of="mlp")
    chunk: int = setting(0, Limits(int, low=0, high=1000),
                         help="actions predicted per step (action chunking); 0: the policy "
                         "family's default (mlp 1, act and diffusion 8)")
    dropout: float = same_as(MlpConfig, "dropout", option_of="mlp")
    ema: float = setting(0.0, Limits(float, low=0.0, high=0.99999),
                         help="decay of an exponential moving average of the weights, which "
                         "the checkpoints hold, e.g. 0.999 (0: none)")
    seed: int = setting(0, SEED_LIMITS, help="random seed (initialization, batches, split)")
    device: str = setting("auto", DEVICE_LIMITS,
                          help="auto (CUDA when available), cpu, cuda or cuda:N")
    amp: bool = setting(True, Limits(bool), help="bf16 autocast on CUDA")
    cuda_graph: bool = setting(True, Limits(bool), help="on one CUDA GPU, capture the whole "
                               "training step (batch drawing included) in CUDA graphs after "
                               "3 eager steps and replay them (a policy that cannot be "
                               "captured trains in eager steps, logged); off: eager steps")
    compile: str = setting("none", Limits(str, choices=("none", "default", "max-autotune")),
                           help="on one CUDA GPU, torch.compile the policy's loss (forward and "
                           "backward) before the step is captured: camera policies train "
                           "1.8-2x faster at batch 1,024 after 18-39 s of compiling (H200, 16 "
                           "cores); default, or max-autotune (kernels tuned: minutes); a loss "
                           "that does not compile trains uncompiled, logged; none: not "
                           "compiled")
    val_fraction: float = setting(0.1, Limits(float, low=0.0, high=0.9),
                                  help="share of the episodes held out for validation")
    sources: list = setting(limits=Limits(list, item=Limits(str)), default_factory=list,
                            help="keep only the steps these command sources drove, by the "
                            "recorded /command_mux/source, e.g. human (HG-DAgger "
                            "interventions); empty: every step")
    include_interrupted: bool = setting(
        False, Limits(bool), help="also train on episodes that did not end (status "
        "interrupted: the recorder was stopped; recovered: salvaged after a crash); the run's "
        "dataset summary names them")
    eval_every: int = setting(1000, _NON_NEGATIVE, help="steps between validations and "
                              "evaluations (0: at the end only)")
    eval_episodes: int = setting(20, _NON_NEGATIVE, help="closed-loop episodes per evaluation "
                                 "in the task's simulation (0: none)")
    task: str | None = setting(None, Limits(str, optional=True),
                               help="built-in task for closed-loop evaluation; empty: the "
                               "dataset's")
    patience: int = setting(0, _NON_NEGATIVE, help="evaluations without improvement before "
                            "stopping early (0: never)")
    augment_shift: int = setting(4, Limits(int, low=0, high=64),
                                 help="camera images: pixels of random shift")
    init_from: str = setting("", Limits(str), help="warm start: a checkpoint of the same "
                             "architecture (empty: none)")
    log_every: int = setting(50, _POSITIVE, help="steps between progress reports")
    robot: str = setting("", Limits(str), help="robot config (config/robots name or YAML "
                         "path) whose action limits the checkpoint carries (joint limits, "
                         "gripper 0..1, velocity limits per tick); empty: the task's robot, "
                         "else the recorded actions' range")

    def __post_init__(self):
        check_fields(self)
        from ..policies.config import check_widths

        check_widths("hidden", self.hidden)  # (an allocation traceback at 1e8)
        from ..policies.registry import UnknownPolicyError, policy_class

        try:
            family = policy_class(self.policy)
        except UnknownPolicyError as exc:
            raise SettingError(str(exc)) from None
        for f in fields(self):
            owner = f.metadata.get("option_of")
            if owner is None:
                continue
            if owner == self.policy and f.name in self.policy_config:
                raise SettingError(f"policy_config: {f.name} is a training setting of its own, "
                                   f"not a policy_config option (set it with "
                                   f"{flag_of(type(self), f.name)}, or `{f.name}:` in a "
                                   "--config file)")
            if owner != self.policy and getattr(self, f.name) != default_of(type(self), f.name):
                raise SettingError(f"{f.name} is an option of policy {owner}, not of policy "
                                   f"{self.policy} (its options go in policy_config)")
        family.check_options(dict(self.policy_config), settings=[
            flag_of(type(self), f.name) for f in fields(self)
            if f.metadata.get("option_of") == self.policy])
        family.config_class.check_together(family.options(self))
        # the family's defaults, resolved here so the trainer and the checkpoint see the values
        if not self.chunk:
            self.chunk = family.config_class.default_chunk
        if not self.lr:
            self.lr = family.config_class.default_lr

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Settings from a mapping (a YAML file, node parameters); ``SettingError`` for an
        unknown name or a value outside its limits."""
        if not isinstance(data, dict):
            raise SettingError(f"training settings must be a mapping of names to values, "
                               f"got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise SettingError(f"unknown training settings {sorted(unknown)} "
                               f"(known: {sorted(cls.__dataclass_fields__)})")
        return cls(**data)
