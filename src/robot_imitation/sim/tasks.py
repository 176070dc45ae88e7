"""Tasks: a robot, a scene and task logic (reset, observations, success), over one MuJoCo model.

``TaskSim`` is the single simulation core. The gymnasium environments and the ROS bridge node
both drive it; neither has a second copy of the task logic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np

from ..paths import available, config_file, names_a_path, read_yaml
from .robot import (EE_SITE, ModelError, RobotConfig, RobotIndex, beside, check_count,
                    check_keys, check_number, check_numbers, check_text, closest,
                    load_robot_spec, shown)

POSE_SIZE = 7  # x y z qw qx qy qz


def _look_at_xyaxes(pos, target):
    """MJCF ``xyaxes`` of a camera at ``pos`` looking at ``target`` with world z up."""
    fwd = np.asarray(target, float) - np.asarray(pos, float)
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-6:  # looking straight down
        right = np.array([0.0, -1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    return list(right) + list(up)


@dataclass
class TaskConfig:
    name: str
    robot: str = "panda"
    physics_timestep: float = 0.002
    control_rate: float = 20.0
    max_steps: int = 100
    init_joint_noise: float = 0.1
    gripper_init: float = 1.0
    cameras: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)  # task-specific keys

    @classmethod
    def load(cls, name_or_path) -> "TaskConfig":
        """A task by name (``config/tasks/<name>.yaml``) or by path (see ``from_dict``)."""
        try:
            path = config_file("tasks", name_or_path)
        except FileNotFoundError as exc:
            raise ModelError(str(exc)) from None
        data = read_yaml(path, ModelError)
        return cls.from_dict({} if data is None else data, path)

    @classmethod
    def from_dict(cls, data, path) -> "TaskConfig":
        """The task file ``path`` holding ``data``, every key checked, else a ModelError naming
        the file, the key and the value: the keys common to all tasks, and the task-specific
        ones its logic declares (``TaskLogic.params``, kept in ``params``); any other key is
        refused with the closest known one. A relative ``robot`` path is read from the task
        file's folder (a bare name, ``panda``, is a built-in robot)."""
        where = str(path)
        if not isinstance(data, dict):
            raise ModelError(f"{where}: a task file is a mapping of keys to values, not a "
                             f"{type(data).__name__}")
        if "name" not in data:
            raise ModelError(f"{where}: a task needs a name")
        name = check_text(data["name"], where, "name")
        logic = task_logic(name)
        if logic is None:
            raise ModelError(f"{where}: name '{name}' names no task logic (a task is named "
                             f"after its logic, or that, '_' and more: push_fast)"
                             f"{closest(name, TASK_LOGIC)}")
        common = [k for k in cls.__dataclass_fields__ if k != "params"]
        check_keys(data, common + list(logic.params), where, "the task file")
        out = {"name": name}
        if "robot" in data:
            robot = check_text(data["robot"], where, "robot")
            out["robot"] = beside(robot, Path(path).parent) if names_a_path(robot) else robot
            try:
                config_file("robots", out["robot"])
            except FileNotFoundError as exc:
                raise ModelError(f"{where}: robot: {exc}") from None
        for key, bounds in (("physics_timestep", {"low": 0.0, "above": True}),
                            ("control_rate", {"low": 0.0, "above": True}),
                            ("init_joint_noise", {"low": 0.0}),
                            ("gripper_init", {"low": 0.0, "high": 1.0})):
            if key in data:
                out[key] = check_number(data[key], where, key, **bounds)
        if "max_steps" in data:
            out["max_steps"] = check_count(data["max_steps"], where, "max_steps", low=1)
        out["cameras"] = _check_cameras(data.get("cameras"), where)
        out["params"] = logic.check_params(data, where, name)
        cfg = cls(**out)
        try:
            _ = cfg.substeps  # a whole number of physics steps per control tick
        except ModelError:
            raise ModelError(f"{where}: control_rate {cfg.control_rate:g} Hz: its period is "
                             f"not a whole number of physics_timestep {cfg.physics_timestep:g} "
                             "s steps") from None
        return cfg

    @classmethod
    def for_model(cls, robot: str, control_rate: float = 50.0) -> "TaskConfig":
        """No task logic: the bridge simply runs a robot model (any MJCF)."""
        timestep = 0.002
        if str(robot).lower().endswith(".xml"):
            try:
                timestep = float(mujoco.MjModel.from_xml_path(str(robot)).opt.timestep)
            except ValueError as exc:
                raise ModelError(f"cannot load MJCF {robot}: {exc}") from None
        rate = 1.0 / (timestep * max(1, round(1.0 / (control_rate * timestep))))
        return cls(name="none", robot=str(robot), physics_timestep=timestep, control_rate=rate,
                   max_steps=2**62, init_joint_noise=0.0, gripper_init=0.0)

    @property
    def substeps(self) -> int:
        n = round(1.0 / (self.control_rate * self.physics_timestep))
        if n < 1 or abs(n * self.physics_timestep * self.control_rate - 1.0) > 1e-6:
            raise ModelError(f"task '{self.name}': control period 1/{self.control_rate} s is not "
                             f"a whole number of physics steps of {self.physics_timestep} s")
        return n


CAMERA_KEYS = ("pos", "look_at", "fovy")


def _check_cameras(cameras, where: str) -> dict:
    """``cameras``: a mapping of names to ``{pos, look_at, fovy}`` (``fovy`` optional)."""
    if cameras is None:
        return {}
    check_keys(cameras, list(cameras), where, "cameras")
    out = {}
    for name, cam in cameras.items():
        place = f"cameras.{name}"
        check_text(name, where, "a camera's name")
        check_keys(cam, CAMERA_KEYS, where, place)
        for key in ("pos", "look_at"):
            if key not in cam:
                raise ModelError(f"{where}: {place} needs {key} (x y z)")
        pos = check_numbers(cam["pos"], 3, where, f"{place}.pos")
        look_at = check_numbers(cam["look_at"], 3, where, f"{place}.look_at")
        if np.linalg.norm(np.subtract(look_at, pos)) < 1e-6:
            raise ModelError(f"{where}: {place}.look_at {look_at} is the camera's pos: it "
                             "looks nowhere")
        out[name] = {"pos": pos, "look_at": look_at}
        if "fovy" in cam:
            out[name]["fovy"] = check_number(cam["fovy"], where, f"{place}.fovy", low=0.0,
                                             high=180.0, above=True)
            if out[name]["fovy"] >= 180.0:
                raise ModelError(f"{where}: {place}.fovy must be < 180 (degrees), got "
                                 f"{cam['fovy']!r}")
    return out


@dataclass(frozen=True)
class Param:
    """A task-specific key a task's logic reads: one number (``size`` 0) or a list of
    ``size``, each finite and within ``low``/``high`` (``above``: more than ``low``);
    ``ordered``: a ``[min, max]`` pair; ``default`` None: the task file must give it."""

    size: int = 0
    low: float = -math.inf
    high: float = math.inf
    above: bool = False
    ordered: bool = False
    default: object = None

    def check(self, value, where: str, key: str):
        bounds = {"low": self.low, "high": self.high, "above": self.above}
        if not self.size:
            return check_number(value, where, key, **bounds)
        values = check_numbers(value, self.size, where, key, **bounds)
        if self.ordered and values[0] > values[1]:
            raise ModelError(f"{where}: {key} is a [min, max] pair: min above max, got "
                             f"{shown(value)}")
        return values


POSITIVE = Param(low=0.0, above=True)
NOT_NEGATIVE = Param(low=0.0)


def available_tasks() -> list:
    return available("tasks")


class TaskLogic:
    """What a task adds to the robot: scene objects, randomization, observations, success."""

    #: observation keys besides the robot's own, each a pose (x y z qw qx qy qz)
    pose_keys: tuple = ()
    #: those of ``pose_keys`` only the scripted expert reads (no policy's spec has them): the
    #: expert node takes them from the bridge's topic of that name
    privileged_keys: tuple = ()
    #: the task-specific keys of a task file this logic reads (``Param``); no other key is
    #: taken
    params: dict = {}
    #: pairs of ``params`` that bound a box (``low``, ``high``): each low value <= its high one
    boxes: tuple = ()

    @classmethod
    def check_params(cls, data: dict, where: str, task: str) -> dict:
        """The values of ``params`` in the task file's ``data``, checked (defaults filled)."""
        out = {}
        for key, param in cls.params.items():
            if key in data:
                out[key] = param.check(data[key], where, key)
            elif param.default is not None:
                out[key] = list(param.default) if param.size else param.default
            else:
                raise ModelError(f"{where}: {key} is missing (a '{task}' task needs "
                                 f"{', '.join(cls.params)})")
        for low, high in cls.boxes:
            for i, (a, b) in enumerate(zip(out[low], out[high])):
                if a > b:
                    raise ModelError(f"{where}: {low}[{i}] {a:g} is above {high}[{i}] {b:g}")
        return out

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self.p = cfg.params

    def build(self, spec: mujoco.MjSpec) -> None:
        """Add the task's bodies and sites to the scene."""

    def bind(self, model: mujoco.MjModel) -> None:
        """Look up ids in the compiled model."""

    def reset(self, model, data, rng: np.random.Generator) -> None:
        """Randomize the task state (the robot is already reset)."""

    def poses(self, model, data) -> dict:
        return {}

    def success(self, model, data) -> bool:
        return False

    def reward(self, model, data) -> float:
        return 0.0


def _mocap_marker(spec, name, rgba, size):
    body = spec.worldbody.add_body(name=name, mocap=True)
    body.add_geom(type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[size, 0, 0], rgba=rgba,
                  contype=0, conaffinity=0, group=2)
    return body


def _pose_of_body(data, body_id) -> np.ndarray:
    return np.concatenate([data.xpos[body_id], data.xquat[body_id]])


class ReachLogic(TaskLogic):
    pose_keys = ("target_pose",)
    params = {"target_low": Param(size=3), "target_high": Param(size=3),
              "success_threshold": POSITIVE}
    boxes = (("target_low", "target_high"),)

    def build(self, spec):
        _mocap_marker(spec, "target", [0.1, 0.8, 0.1, 0.6], 0.02)

    def bind(self, model):
        self.target = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "target")
        self.mocap = model.body_mocapid[self.target]
        self.ee = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, EE_SITE)

    def reset(self, model, data, rng):
        data.mocap_pos[self.mocap] = rng.uniform(self.p["target_low"], self.p["target_high"])
        data.mocap_quat[self.mocap] = [1, 0, 0, 0]

    def distance(self, data) -> float:
        return float(np.linalg.norm(data.site_xpos[self.ee] - data.mocap_pos[self.mocap]))

    def poses(self, model, data):
        return {"target_pose": np.concatenate([data.mocap_pos[self.mocap], data.mocap_quat[self.mocap]])}

    def success(self, model, data):
        return self.distance(data) < self.p["success_threshold"]

    def reward(self, model, data):
        return -self.distance(data)


class PushLogic(TaskLogic):
    pose_keys = ("object_pose", "goal_pose")
    params = {"puck_radius": POSITIVE, "puck_half_height": POSITIVE, "puck_mass": POSITIVE,
              "puck_low": Param(size=2), "puck_high": Param(size=2),
              "goal_distance": Param(size=2, low=0.0, ordered=True),
              "goal_low": Param(size=2), "goal_high": Param(size=2),
              "success_threshold": POSITIVE}
    boxes = (("puck_low", "puck_high"), ("goal_low", "goal_high"))

    def build(self, spec):
        r, h = self.p["puck_radius"], self.p["puck_half_height"]
        puck = spec.worldbody.add_body(name="puck", pos=[0.5, 0.0, h])
        puck.add_freejoint(name="puck_free")
        puck.add_geom(name="puck", type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[r, h, 0],
                      mass=self.p["puck_mass"], rgba=[0.85, 0.2, 0.15, 1],
                      friction=[0.6, 0.005, 0.0001], condim=4)
        goal = spec.worldbody.add_body(name="goal", mocap=True)
        goal.add_geom(type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                      size=[self.p["success_threshold"], 0.001, 0],
                      rgba=[0.1, 0.8, 0.1, 0.5], contype=0, conaffinity=0, group=2)

    def bind(self, model):
        self.puck = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "puck")
        jnt = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, "puck_free")
        self.puck_qpos = model.jnt_qposadr[jnt]
        self.puck_qvel = model.jnt_dofadr[jnt]
        self.goal = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "goal")
        self.mocap = model.body_mocapid[self.goal]

    def reset(self, model, data, rng):
        puck_xy = rng.uniform(self.p["puck_low"], self.p["puck_high"])
        lo, hi = np.asarray(self.p["goal_low"]), np.asarray(self.p["goal_high"])
        for _ in range(1000):
            angle = rng.uniform(-np.pi, np.pi)
            dist = rng.uniform(*self.p["goal_distance"])
            goal_xy = puck_xy + dist * np.array([np.cos(angle), np.sin(angle)])
            if np.all(goal_xy >= lo) and np.all(goal_xy <= hi):
                break
        data.qpos[self.puck_qpos:self.puck_qpos + 7] = [*puck_xy, self.p["puck_half_height"],
                                                        1, 0, 0, 0]
        data.qvel[self.puck_qvel:self.puck_qvel + 6] = 0
        data.mocap_pos[self.mocap] = [*goal_xy, 0.001]
        data.mocap_quat[self.mocap] = [1, 0, 0, 0]

    def distance(self, data) -> float:
        return float(np.linalg.norm(data.xpos[self.puck][:2] - data.mocap_pos[self.mocap][:2]))

    def poses(self, model, data):
        return {"object_pose": _pose_of_body(data, self.puck),
                "goal_pose": np.concatenate([data.mocap_pos[self.mocap], data.mocap_quat[self.mocap]])}

    def success(self, model, data):
        return self.distance(data) < self.p["success_threshold"]

    def reward(self, model, data):
        return -self.distance(data)


def route_clearance(p: dict) -> float:
    """Distance from the wall's centre to the puck centre's route past its end (``push_obstacle``),
    across the puck-goal line."""
    return p["obstacle_half_length"] + p["puck_radius"] + p["route_margin"]


def wall_yaw(u) -> float:
    """Yaw of the wall across direction ``u`` (its x axis, the thickness, along ``u``), folded
    into (-pi/2, pi/2]: the box is the same turned half round, and the folded angle keeps its
    observed quaternion to one hemisphere (qw > 0.7)."""
    yaw = float(np.arctan2(u[1], u[0]))
    if yaw > np.pi / 2:
        yaw -= np.pi
    elif yaw <= -np.pi / 2:
        yaw += np.pi
    return yaw


#: layouts ``draw_layout`` draws before it gives up
LAYOUT_DRAWS = 1000


def draw_layout(p: dict, rng: np.random.Generator, where: str, when: str) -> tuple:
    """A ``push_obstacle`` layout, ``(puck_xy, goal_xy, post_xy, u, beside)`` (``u``: the unit
    vector puck to goal; ``beside``: the wall's centre to the route past one end), drawn
    from ``rng`` until the goal and both lanes beside the line fit the goal box, at most
    ``LAYOUT_DRAWS`` times: reset draws with it, and loading a task file tries it from a
    fixed seed. None fits: a one-line ModelError starting with ``where``, ``when`` said."""
    lo, hi = np.asarray(p["goal_low"]), np.asarray(p["goal_high"])
    clear = route_clearance(p)
    missed = np.zeros(3, int)  # draws where the goal, the lanes at the wall, at the puck left
    for _ in range(LAYOUT_DRAWS):
        puck_xy = rng.uniform(p["puck_low"], p["puck_high"])
        angle = np.deg2rad(rng.uniform(*p.get("goal_direction", (-180.0, 180.0))))
        u = np.array([np.cos(angle), np.sin(angle)])
        goal_xy = puck_xy + rng.uniform(*p["goal_distance"]) * u
        post_xy = (puck_xy + goal_xy) / 2 + rng.uniform(-1, 1) * p["obstacle_jitter"] * u
        beside = clear * np.array([-u[1], u[0]])
        # the goal and both lanes beside the line (from beside the puck's start to past
        # the wall's ends) inside the box: the layout does not tell the side, and the arm
        # reaches either route
        points = np.array([goal_xy, post_xy + beside, post_xy - beside,
                           puck_xy + beside, puck_xy - beside])
        inside = np.all((points >= lo) & (points <= hi), axis=1)
        if np.all(inside):
            return puck_xy, goal_xy, post_xy, u, beside
        missed += ~np.array([inside[0], inside[1] and inside[2], inside[3] and inside[4]])
    raise ModelError(
        f"{where}: no layout of push_obstacle fits: with puck_low {_pair(p['puck_low'])}, "
        f"puck_high {_pair(p['puck_high'])}, goal_distance {_pair(p['goal_distance'])}, "
        f"goal_direction {_pair(p.get('goal_direction', (-180.0, 180.0)))} degrees, "
        f"obstacle_jitter {p['obstacle_jitter']:g} and route clearance {clear:g} "
        "(obstacle_half_length + puck_radius + route_margin), the goal and the lanes beside "
        f"the wall and the puck leave the goal box goal_low {_pair(p['goal_low'])} goal_high "
        f"{_pair(p['goal_high'])} in all of {LAYOUT_DRAWS} draws ({when}; out of it: the "
        f"goal in {missed[0]}, a lane past the wall in {missed[1]}, a lane beside the puck in "
        f"{missed[2]})")


def _pair(values) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


class PushObstacleLogic(PushLogic):
    """Push with a fixed wall halfway between the puck and the goal, across the line between
    them: the puck has to go round one end of it, left or right, and both are as good.

    The wall is a box whose long faces are perpendicular to the puck-goal line, with ordinary
    friction, so a puck pushed straight at it (the average of the two routes) is pinned against
    a flat face; a round or slippery obstacle would let it slide round, and a policy that
    averages the routes would still succeed.

    The side the expert takes is drawn at reset after everything visible (arm, puck, goal, wall)
    and is published as ``route_pose``, the point beside the wall's end the route passes: the
    expert reads it, no policy's spec carries it, so the demonstrations hold both modes from
    states that look alike. It is a mocap body without geoms, so no camera shows it.
    """

    pose_keys = ("object_pose", "goal_pose", "obstacle_pose", "route_pose")
    #: poses for the scripted expert only: published and observed, never in a policy's spec
    privileged_keys = ("route_pose",)
    # turn_gap and side_threshold: the scripted expert's (PushObstacleExpert)
    params = {**PushLogic.params,
              "goal_direction": Param(size=2, low=-360.0, high=360.0, ordered=True,
                                      default=(-180.0, 180.0)),
              "obstacle_half_length": POSITIVE, "obstacle_half_thickness": POSITIVE,
              "obstacle_half_height": POSITIVE, "obstacle_friction": NOT_NEGATIVE,
              "obstacle_jitter": NOT_NEGATIVE, "route_margin": NOT_NEGATIVE,
              "turn_gap": NOT_NEGATIVE, "side_threshold": NOT_NEGATIVE}

    def build(self, spec):
        super().build(spec)
        p = self.p
        wall = spec.worldbody.add_body(name="obstacle", mocap=True)
        # no priority: MuJoCo takes the larger friction of the two geoms, so a puck pushed
        # against a face grips it rather than sliding along it to the end
        wall.add_geom(name="obstacle", type=mujoco.mjtGeom.mjGEOM_BOX,
                      size=[p["obstacle_half_thickness"], p["obstacle_half_length"],
                            p["obstacle_half_height"]],
                      rgba=[0.25, 0.3, 0.75, 1], friction=[p["obstacle_friction"], 0.005, 0.0001])
        spec.worldbody.add_body(name="route", mocap=True)

    def bind(self, model):
        super().bind(model)
        self.post = model.body_mocapid[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY,
                                                         "obstacle")]
        self.route = model.body_mocapid[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY,
                                                          "route")]

    @classmethod
    def check_params(cls, data, where, task):
        """As ``TaskLogic.check_params``, and some layout must fit the goal box: the task's
        own drawing (``draw_layout``) from a fixed seed, else a ModelError naming the file and
        the parameters (a task no layout fits died at its first reset)."""
        out = super().check_params(data, where, task)
        draw_layout(out, np.random.default_rng(0), where, "seeded, when the file is loaded")
        return out

    def reset(self, model, data, rng):
        p = self.p
        puck_xy, goal_xy, post_xy, u, beside = draw_layout(
            p, rng, f"task '{self.cfg.name}'", "at this reset")
        side = 1.0 if rng.random() < 0.5 else -1.0  # the last draw: after all that is seen
        yaw = wall_yaw(u)
        data.qpos[self.puck_qpos:self.puck_qpos + 7] = [*puck_xy, p["puck_half_height"],
                                                        1, 0, 0, 0]
        data.qvel[self.puck_qvel:self.puck_qvel + 6] = 0
        data.mocap_pos[self.mocap] = [*goal_xy, 0.001]
        data.mocap_quat[self.mocap] = [1, 0, 0, 0]
        data.mocap_pos[self.post] = [*post_xy, p["obstacle_half_height"]]
        data.mocap_quat[self.post] = [np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
        data.mocap_pos[self.route] = [*(post_xy + side * beside), p["puck_half_height"]]
        data.mocap_quat[self.route] = [1, 0, 0, 0]

    def poses(self, model, data):
        out = super().poses(model, data)
        for key, i in (("obstacle_pose", self.post), ("route_pose", self.route)):
            out[key] = np.concatenate([data.mocap_pos[i], data.mocap_quat[i]])
        return out


TASK_LOGIC = {"reach": ReachLogic, "push": PushLogic, "push_obstacle": PushObstacleLogic,
              "none": TaskLogic}


def task_logic(name: str):
    """The logic of task ``name``: by its full name, else by the longest part of it before an
    ``_`` that names one (``push_fast`` is a ``push``, ``push_obstacle_x`` a ``push_obstacle``),
    else None."""
    from ..settings import name_prefixes

    return next((TASK_LOGIC[n] for n in name_prefixes(name) if n in TASK_LOGIC), None)


#: the timestep of an MJCF that sets none (MuJoCo's default)
MUJOCO_DEFAULT_TIMESTEP = mujoco.MjSpec().option.timestep


def _replaced_timestep(spec: mujoco.MjSpec, cfg: TaskConfig) -> tuple | None:
    """(the robot spec's own timestep, the task's) where the task's ``physics_timestep``
    replaces a timestep the robot's MJCF sets, else None. MjSpec does not tell whether the
    MJCF set ``<option timestep>``: a timestep other than MuJoCo's default is taken as set,
    so an MJCF that sets the default (0.002) explicitly is not told apart from one that sets
    none."""
    own = float(spec.option.timestep)
    if own == MUJOCO_DEFAULT_TIMESTEP or own == cfg.physics_timestep:
        return None
    return own, float(cfg.physics_timestep)


def _add_scene(spec: mujoco.MjSpec, cfg: TaskConfig) -> None:
    spec.option.timestep = cfg.physics_timestep
    tex = spec.add_texture(name="grid", type=mujoco.mjtTexture.mjTEXTURE_2D,
                           builtin=mujoco.mjtBuiltin.mjBUILTIN_CHECKER,
                           rgb1=[0.35, 0.38, 0.42], rgb2=[0.3, 0.33, 0.37], width=256, height=256)
    mat = spec.add_material(name="table", texrepeat=[8, 8], texuniform=True)
    mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = tex.name
    spec.worldbody.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[2, 2, 0.05],
                            material="table", friction=[0.5, 0.005, 0.0001])
    spec.worldbody.add_light(name="key", pos=[0.5, -0.5, 2.0], dir=[0, 0.3, -1],
                             diffuse=[0.7, 0.7, 0.7], castshadow=False)
    spec.worldbody.add_light(name="fill", pos=[1.5, 0.8, 1.5], dir=[-1, -0.5, -1],
                             diffuse=[0.4, 0.4, 0.4], castshadow=False)
    for name, cam in (cfg.cameras or {}).items():
        spec.worldbody.add_camera(name=name, pos=cam["pos"], fovy=cam.get("fovy", 45),
                                  xyaxes=_look_at_xyaxes(cam["pos"], cam["look_at"]))


class TaskSim:
    """A task's MuJoCo model and data, with robot-level actions and observations.

    Actions are joint position targets for the arm plus a gripper opening fraction in [0, 1].
    """

    def __init__(self, task: str | TaskConfig = "reach", robot: str | RobotConfig | None = None):
        self.cfg = task if isinstance(task, TaskConfig) else TaskConfig.load(task)
        self.robot_cfg = (robot if isinstance(robot, RobotConfig)
                          else RobotConfig.load(robot or self.cfg.robot))
        logic_cls = task_logic(self.cfg.name)
        if logic_cls is None:
            raise ModelError(f"task '{self.cfg.name}': no task logic of that name "
                             f"(known: {sorted(TASK_LOGIC)})")
        self.logic = logic_cls(self.cfg)
        spec = load_robot_spec(self.robot_cfg)
        #: one-line facts the user should see when the simulation starts (the bridge logs
        #: them): what of the robot's own model the task changed
        self.notes: list[str] = []
        #: (the robot MJCF's timestep, the task's physics_timestep used instead), or None
        self.replaced_timestep = _replaced_timestep(spec, self.cfg)
        if self.replaced_timestep:
            own, used = self.replaced_timestep
            mjcf = f" (MJCF {self.robot_cfg.mjcf})" if self.robot_cfg.source == "mjcf" else ""
            self.notes.append(
                f"robot '{self.robot_cfg.name}'{mjcf} sets timestep {own:g} s: task "
                f"'{self.cfg.name}' replaces it with its physics_timestep {used:g} s "
                f"({1 / used:g} Hz physics, {self.cfg.substeps} steps per control tick)")
        if self.cfg.name != "none" or self.robot_cfg.source != "mjcf":
            _add_scene(spec, self.cfg)
        else:
            spec.option.timestep = self.cfg.physics_timestep
        self.logic.build(spec)
        try:
            self.model = spec.compile()
        except ValueError as exc:
            raise ModelError(f"task '{self.cfg.name}' with robot '{self.robot_cfg.name}': the "
                             f"model does not compile: {' '.join(str(exc).split())}") from None
        self.data = mujoco.MjData(self.model)
        self.robot = RobotIndex.build(self.model, self.robot_cfg)
        self.logic.bind(self.model)
        self.has_ee = self.robot.ee_site >= 0
        self.substeps = self.cfg.substeps
        self.control_period = 1.0 / self.cfg.control_rate
        self.seed = None
        self._quat = np.zeros(4)

    # ----------------------------------------------------------------- dimensions
    @property
    def action_dim(self) -> int:
        return self.robot.n_arm + 1

    @property
    def action_low(self) -> np.ndarray:
        return np.append(self.robot.arm_limits[:, 0], 0.0)

    @property
    def action_high(self) -> np.ndarray:
        return np.append(self.robot.arm_limits[:, 1], 1.0)

    # ----------------------------------------------------------------- episode
    def reset(self, seed: int | None = None) -> None:
        """Reset to a randomized initial state; the same seed gives the same state."""
        self.seed = seed
        rng = np.random.default_rng(seed)
        m, d, r = self.model, self.data, self.robot
        mujoco.mj_resetData(m, d)
        noise = rng.uniform(-1, 1, r.n_arm) * self.cfg.init_joint_noise
        q0 = np.clip(r.home + noise, r.arm_limits[:, 0], r.arm_limits[:, 1])
        d.qpos[r.arm_qpos] = q0
        self.logic.reset(m, d, rng)
        self.set_action(np.append(q0, self.cfg.gripper_init))
        if len(r.gripper_act) == len(r.gripper_qpos):
            # One servo per finger (position = opening): start the fingers at their command.
            d.qpos[r.gripper_qpos] = d.ctrl[r.gripper_act]
        mujoco.mj_forward(m, d)

    def set_action(self, action: np.ndarray) -> None:
        """Arm position targets and gripper opening (already validated)."""
        r = self.robot
        self.data.ctrl[r.arm_act] = action[: r.n_arm]
        if len(r.gripper_act):
            frac = float(np.clip(action[r.n_arm], 0.0, 1.0))
            lo, hi = r.gripper_ctrl_range[:, 0], r.gripper_ctrl_range[:, 1]
            self.data.ctrl[r.gripper_act] = lo + frac * (hi - lo)

    def step_physics(self, n: int = 1) -> None:
        mujoco.mj_step(self.model, self.data, nstep=n)

    def step(self, action: np.ndarray) -> None:
        """One control tick: apply the action and run the physics for one control period."""
        self.set_action(action)
        self.step_physics(self.substeps)

    # ----------------------------------------------------------------- observations
    def ee_pose(self) -> np.ndarray:
        d = self.data
        mujoco.mju_mat2Quat(self._quat, d.site_xmat[self.robot.ee_site])
        return np.concatenate([d.site_xpos[self.robot.ee_site], self._quat])

    def joint_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions, velocities and efforts of the arm then gripper joints."""
        r, d = self.robot, self.data
        qpos_idx = np.concatenate([r.arm_qpos, r.gripper_qpos])
        qvel_idx = np.concatenate([r.arm_qvel, r.gripper_qvel])
        return d.qpos[qpos_idx].copy(), d.qvel[qvel_idx].copy(), d.qfrc_actuator[qvel_idx].copy()

    def observe(self) -> dict:
        pos, vel, _ = self.joint_state()
        obs = {"joint_pos": pos, "joint_vel": vel}
        if self.has_ee:
            obs["ee_pose"] = self.ee_pose()
        obs.update(self.logic.poses(self.model, self.data))
        return obs

    @property
    def time(self) -> float:
        return float(self.data.time)

    def success(self) -> bool:
        return bool(self.logic.success(self.model, self.data))

    def reward(self) -> float:
        return float(self.logic.reward(self.model, self.data))
