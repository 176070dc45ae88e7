"""Robot models: load an arm as an ``mujoco.MjSpec`` that tasks add their scene to."""
from __future__ import annotations

import importlib.util
import os
import string
from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np

from ..paths import config_file, read_yaml

EE_SITE = "ee_site"


class ModelError(ValueError):
    """A robot or task description that cannot be loaded."""


@dataclass
class RobotConfig:
    name: str
    source: str = "mjcf"
    mjcf: str = ""
    rename_joints: dict = field(default_factory=dict)
    arm_joints: list = field(default_factory=list)
    arm_actuators: list = field(default_factory=list)
    gripper_joints: list = field(default_factory=list)
    gripper_actuators: list = field(default_factory=list)
    ee_site: str = ""
    ee_body: str = ""
    ee_offset: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
    home: list = field(default_factory=list)
    velocity_limits: list = field(default_factory=list)
    gravity_compensation: bool = True

    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> "RobotConfig":
        """A robot by name (``config/robots/<name>.yaml``), a robot YAML path, or an MJCF path."""
        path = Path(name_or_path)
        if path.suffix.lower() == ".xml":
            return cls.from_mjcf(path)
        try:
            path = config_file("robots", name_or_path)
        except FileNotFoundError as exc:
            raise ModelError(str(exc)) from None
        data = read_yaml(path, ModelError) or {}
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelError(f"{path}: unknown keys {sorted(unknown)}")
        return cls(**data)


def _from_mjcf(cls, path) -> RobotConfig:
    """Any MJCF: every joint driven by a position actuator is an arm joint; no gripper."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"MJCF file not found: {path}")
    try:
        model = mujoco.MjModel.from_xml_path(str(path))
    except ValueError as exc:
        raise ModelError(f"cannot load MJCF {path}: {exc}") from None
    joints, actuators = [], []
    for a in range(model.nu):
        is_position = (model.actuator_trntype[a] == mujoco.mjtTrn.mjTRN_JOINT
                       and model.actuator_biastype[a] == mujoco.mjtBias.mjBIAS_AFFINE
                       and model.actuator_biasprm[a, 1] != 0)
        if is_position:
            j = model.actuator_trnid[a, 0]
            joints.append(model.joint(j).name or f"joint{j}")
            actuators.append(model.actuator(a).name)
    if not joints:
        raise ModelError(f"{path}: no joint is driven by a position actuator; the bridge "
                         "commands joints through position servos")
    if any(not name for name in actuators):
        raise ModelError(f"{path}: position actuators need names")
    home = [float(np.clip(0.0, *model.jnt_range[model.joint(n).id])) if
            model.jnt_limited[model.joint(n).id] else 0.0 for n in joints]
    return cls(name=path.stem, source="mjcf", mjcf=str(path.resolve()), arm_joints=joints,
               arm_actuators=actuators, home=home, gravity_compensation=False)


RobotConfig.from_mjcf = classmethod(_from_mjcf)


def _gymnasium_robotics_panda_xml() -> tuple[str, Path]:
    spec = importlib.util.find_spec("gymnasium_robotics")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the default Panda model comes from the gymnasium-robotics wheel, which "
                         "is not installed (pip install gymnasium-robotics)")
    root = Path(spec.submodule_search_locations[0]) / "envs/assets/kitchen_franka/franka_assets"
    xml = f"""<mujoco model="panda">
  <include file="{root}/assets.xml"/>
  <include file="{root}/actuator.xml"/>
  <worldbody><include file="{root}/chain.xml"/></worldbody>
</mujoco>"""
    return xml, root


def load_robot_spec(cfg: RobotConfig) -> mujoco.MjSpec:
    """The robot alone, as a spec whose names follow ``cfg`` and with an ``ee_site`` site."""
    if cfg.source == "gymnasium_robotics_panda":
        xml, root = _gymnasium_robotics_panda_xml()
        spec = mujoco.MjSpec.from_string(xml)
        # Mesh paths resolve against the including file's folder; the meshes live one level down.
        for mesh in spec.meshes:
            rel = Path(mesh.file).relative_to(root) if Path(mesh.file).is_absolute() else Path(mesh.file)
            mesh.file = str(root / "meshes" / rel)
        spec.meshdir = ""
    elif cfg.source == "mjcf":
        try:
            path = string.Template(cfg.mjcf).substitute(os.environ)
        except KeyError as exc:
            raise ModelError(f"robot '{cfg.name}': MJCF path {cfg.mjcf} needs the environment "
                             f"variable {exc.args[0]}") from None
        if not Path(path).is_file():
            raise ModelError(f"robot '{cfg.name}': MJCF file not found: {path}")
        spec = mujoco.MjSpec.from_file(path)
    else:
        raise ModelError(f"robot '{cfg.name}': unknown source '{cfg.source}'")

    if cfg.rename_joints:
        for joint in spec.joints:
            if joint.name in cfg.rename_joints:
                new = cfg.rename_joints[joint.name]
                for act in spec.actuators:
                    if act.target == joint.name:
                        act.target = new
                joint.name = new
    if cfg.gravity_compensation:
        for body in spec.bodies:
            if body.name and body.name != "world":
                body.gravcomp = 1.0
    if cfg.ee_site:
        site = spec.site(cfg.ee_site)
        if site is None:
            raise ModelError(f"robot '{cfg.name}': no site '{cfg.ee_site}' in the model")
        site.name = EE_SITE
        site.pos = [a + b for a, b in zip(site.pos, cfg.ee_offset)]
    elif cfg.ee_body:
        body = spec.body(cfg.ee_body)
        if body is None:
            raise ModelError(f"robot '{cfg.name}': no body '{cfg.ee_body}' in the model")
        body.add_site(name=EE_SITE, pos=list(cfg.ee_offset), size=[0.01, 0.01, 0.01])
    return spec


@dataclass
class RobotIndex:
    """Indices of a robot's joints and actuators in a compiled model."""

    arm_joint_names: list
    gripper_joint_names: list
    arm_qpos: np.ndarray
    arm_qvel: np.ndarray
    gripper_qpos: np.ndarray
    gripper_qvel: np.ndarray
    arm_act: np.ndarray
    gripper_act: np.ndarray
    arm_limits: np.ndarray  # (n, 2) joint position limits
    gripper_ctrl_range: np.ndarray  # (m, 2)
    velocity_limits: np.ndarray
    ee_site: int
    home: np.ndarray

    @property
    def joint_names(self) -> list:
        return list(self.arm_joint_names) + list(self.gripper_joint_names)

    @property
    def n_arm(self) -> int:
        return len(self.arm_joint_names)

    @classmethod
    def build(cls, model: mujoco.MjModel, cfg: RobotConfig) -> "RobotIndex":
        def jid(name):
            i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
            if i < 0:
                raise ModelError(f"robot '{cfg.name}': no joint '{name}' in the model")
            return i

        def aid(name):
            i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, name)
            if i < 0:
                raise ModelError(f"robot '{cfg.name}': no actuator '{name}' in the model")
            return i

        arm = [jid(n) for n in cfg.arm_joints]
        grip = [jid(n) for n in cfg.gripper_joints]
        arm_act = np.array([aid(n) for n in cfg.arm_actuators], dtype=int)
        grip_act = np.array([aid(n) for n in cfg.gripper_actuators], dtype=int)
        if len(arm_act) != len(arm):
            raise ModelError(f"robot '{cfg.name}': {len(arm)} arm joints but {len(arm_act)} actuators")
        limits = np.array([model.jnt_range[j] if model.jnt_limited[j] else (-np.inf, np.inf)
                           for j in arm], dtype=float)
        vel = np.asarray(cfg.velocity_limits or [np.inf] * len(arm), dtype=float)
        home = np.asarray(cfg.home or np.clip(np.zeros(len(arm)), limits[:, 0], limits[:, 1]),
                          dtype=float)
        if vel.shape != (len(arm),) or home.shape != (len(arm),):
            raise ModelError(f"robot '{cfg.name}': velocity_limits and home need {len(arm)} values")
        ee = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, EE_SITE)  # -1: none
        return cls(
            arm_joint_names=list(cfg.arm_joints),
            gripper_joint_names=list(cfg.gripper_joints),
            arm_qpos=np.array([model.jnt_qposadr[j] for j in arm], dtype=int),
            arm_qvel=np.array([model.jnt_dofadr[j] for j in arm], dtype=int),
            gripper_qpos=np.array([model.jnt_qposadr[j] for j in grip], dtype=int),
            gripper_qvel=np.array([model.jnt_dofadr[j] for j in grip], dtype=int),
            arm_act=arm_act,
            gripper_act=grip_act,
            arm_limits=limits,
            gripper_ctrl_range=np.array([model.actuator_ctrlrange[a] for a in grip_act],
                                        dtype=float).reshape(-1, 2),
            velocity_limits=vel,
            ee_site=ee,
            home=home,
        )
