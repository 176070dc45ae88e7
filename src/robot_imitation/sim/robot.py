"""Robot models: load an arm as an ``mujoco.MjSpec`` that tasks add their scene to."""
from __future__ import annotations

import importlib.util
import math
import os
import string
from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np

from ..paths import config_file, read_yaml
from ..settings import check_keys as _check_keys, closest, shown  # noqa: F401 (tasks use them)

EE_SITE = "ee_site"


class ModelError(ValueError):
    """A robot or task description that cannot be loaded."""


# ----------------------------------------------------------------- checks of a robot or task file
# Each refuses a value in one line naming the file (``where``), the key (its place) and the
# value: a value of the wrong kind failed later with a traceback naming neither, or was taken
# silently (a string for a flag is true, a misspelled key was ignored).

def check_keys(value, known, where: str, place: str) -> dict:
    """``value`` as a mapping holding only ``known`` keys (``settings.check_keys``)."""
    return _check_keys(value, known, where, place, ModelError)


def check_text(value, where: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ModelError(f"{where}: {key} must be a non-empty string, got {shown(value)}")
    return value


def check_texts(value, where: str, key: str) -> list:
    if not isinstance(value, (list, tuple)) or \
            not all(isinstance(v, str) and v.strip() for v in value):
        raise ModelError(f"{where}: {key} must be a list of names, got {shown(value)}")
    return list(value)


def _bounds(low: float, high: float, above: bool) -> str:
    first = f"> {low:g}" if above else f">= {low:g}"
    if math.isinf(high):
        return first
    if math.isinf(low):
        return f"<= {high:g}"
    return f"in {'(' if above else '['}{low:g}, {high:g}]"


def check_number(value, where: str, key: str, low: float = -math.inf, high: float = math.inf,
                 above: bool = False) -> float:
    """A finite number (not a flag) in [low, high] (``above``: in (low, high])."""
    number = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
    if not math.isfinite(number):
        raise ModelError(f"{where}: {key} must be a finite number, got {shown(value)}")
    if number < low or (above and number == low) or number > high:
        raise ModelError(f"{where}: {key} must be {_bounds(low, high, above)}, got {value!r}")
    return number


def check_numbers(value, size: int, where: str, key: str, **bounds) -> list:
    """A list of ``size`` finite numbers, each as ``check_number`` takes them."""
    if not isinstance(value, (list, tuple)) or len(value) != size:
        raise ModelError(f"{where}: {key} must be a list of {size} numbers, got {shown(value)}")
    return [check_number(v, where, f"{key}[{i}]", **bounds) for i, v in enumerate(value)]


def check_count(value, where: str, key: str, low: int = 1) -> int:
    """A whole number >= ``low`` (``100`` or ``1e3``; not ``10.7``, ``.nan`` or ``.inf``)."""
    number = check_number(value, where, key)
    if number != int(number):
        raise ModelError(f"{where}: {key} must be a whole number, got {value!r}")
    if number < low:
        raise ModelError(f"{where}: {key} must be >= {low}, got {value!r}")
    return int(value)


def beside(path: str, folder: Path) -> str:
    """``path`` (a relative path written in a file in ``folder``) as a path from here: a path
    inside a file is read from that file's folder, not from the current one."""
    if Path(path).is_absolute() or path.startswith(("$", "~")):
        return path
    return str((folder / path).resolve())


ROBOT_SOURCES = ("gymnasium_robotics_panda", "mjcf")


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
        """A robot by name (``config/robots/<name>.yaml``), a robot YAML path, or an MJCF path.

        A relative ``mjcf`` path in a robot file is read from that file's folder."""
        path = Path(name_or_path)
        if path.suffix.lower() == ".xml":
            return cls.from_mjcf(path)
        try:
            path = config_file("robots", name_or_path)
        except FileNotFoundError as exc:
            raise ModelError(str(exc)) from None
        data = read_yaml(path, ModelError)
        return cls.from_dict({} if data is None else data, path)

    @classmethod
    def from_dict(cls, data, path) -> "RobotConfig":
        """The robot file ``path`` holding ``data``: every key checked, else a ModelError
        naming the file, the key and the value."""
        where = str(path)
        if not isinstance(data, dict):
            raise ModelError(f"{where}: a robot file is a mapping of keys to values, not a "
                             f"{type(data).__name__}")
        check_keys(data, list(cls.__dataclass_fields__), where, "the robot file")
        if "name" not in data:
            raise ModelError(f"{where}: a robot needs a name")
        out = {"name": check_text(data["name"], where, "name")}
        source = out["source"] = data.get("source", "mjcf")
        if source not in ROBOT_SOURCES:
            raise ModelError(f"{where}: source must be one of {', '.join(ROBOT_SOURCES)}, got "
                             f"{shown(source)}{closest(source, ROBOT_SOURCES)}")
        if source == "mjcf":
            if "mjcf" not in data:
                raise ModelError(f"{where}: mjcf (the robot's MJCF file) is needed with "
                                 "source: mjcf")
            out["mjcf"] = beside(check_text(data["mjcf"], where, "mjcf"), Path(path).parent)
        elif "mjcf" in data:
            raise ModelError(f"{where}: mjcf is read only with source: mjcf (source is "
                             f"{source})")
        renames = data.get("rename_joints") or {}
        check_keys(renames, list(renames), where, "rename_joints")
        for old, new in renames.items():
            check_text(old, where, "a name renamed in rename_joints")
            check_text(new, where, f"rename_joints.{old}")
        out["rename_joints"] = dict(renames)
        for key in ("arm_joints", "arm_actuators", "gripper_joints", "gripper_actuators"):
            if key in data:
                out[key] = check_texts(data[key], where, key)
        joints = out.get("arm_joints", [])  # (none: refused where the model is built)
        if len(out.get("arm_actuators", [])) != len(joints):
            raise ModelError(f"{where}: arm_actuators must name {len(joints)} actuators, one "
                             f"per arm joint, got {shown(data.get('arm_actuators'))}")
        for key in ("ee_site", "ee_body"):
            if data.get(key) is not None and data[key] != "":
                out[key] = check_text(data[key], where, key)
        if "ee_site" in out and "ee_body" in out:
            raise ModelError(f"{where}: ee_site and ee_body both given ('{out['ee_site']}', "
                             f"'{out['ee_body']}'): give one")
        if "ee_offset" in data:
            out["ee_offset"] = check_numbers(data["ee_offset"], 3, where, "ee_offset")
        for key, bounds in (("home", {}), ("velocity_limits", {"low": 0.0, "above": True})):
            values = data.get(key)
            if values is None or values == []:
                continue
            if not isinstance(values, (list, tuple)) or len(values) != len(joints):
                raise ModelError(f"{where}: {key} must be a list of {len(joints)} numbers, one "
                                 f"per arm joint ({', '.join(joints)}), got {shown(values)}")
            out[key] = [check_number(v, where, f"{key}[{i}] (joint {joint})", **bounds)
                        for i, (v, joint) in enumerate(zip(values, joints))]
        if "gravity_compensation" in data:
            flag = data["gravity_compensation"]
            if not isinstance(flag, bool):
                raise ModelError(f"{where}: gravity_compensation must be true or false, got "
                                 f"{shown(flag)}")
            out["gravity_compensation"] = flag
        return cls(**out)


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
        try:
            spec = mujoco.MjSpec.from_file(path)
        except ValueError as exc:
            raise ModelError(f"robot '{cfg.name}': cannot load MJCF {path}: "
                             f"{' '.join(str(exc).split())}") from None
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

        if not cfg.arm_joints:
            raise ModelError(f"robot '{cfg.name}': arm_joints names no joint (the joints "
                             "commanded)")
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
        for name, q, (lo, hi) in zip(cfg.arm_joints, home, limits):
            if not lo - 1e-9 <= q <= hi + 1e-9:
                raise ModelError(f"robot '{cfg.name}': home {q:g} of joint '{name}' is outside "
                                 f"its range [{lo:g}, {hi:g}]")
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
