"""Cartesian teleoperation core, without ROS: twist in, joint position targets out.

An operator commands the end effector's velocity (a twist ``vx vy vz wx wy wz`` in the world /
robot base frame, m/s and rad/s). ``CartesianTeleop`` integrates an end-effector *target pose*
from that twist and turns it into arm joint position targets with ``DifferentialIK`` on the
robot model, the way the scripted experts do, so teleop commands are the same kind of action a
policy learns (7 joint position targets + a gripper opening).

- The target pose starts from the measured pose each time teleop (re)engages (deadman pressed),
  so engaging never makes the arm jump.
- While engaged with a zero twist the target is held: the arm stays put instead of drifting.
- The target never runs more than ``max_lead`` (m) / ``max_lead_angle`` (rad) ahead of the
  measured pose (no wind-up when the arm is blocked or at a joint limit), and never leaves the
  ``workspace`` box (it may stay outside if it started there, but not move further out).
- Joint targets pass the one action filter (``deploy.limits.ActionFilter``): the joint limits,
  and each joint's velocity limit per command period, counted from the measured joints.

``TeleopController`` holds what both teleop nodes share (engage/disengage, twist -> command,
the gripper target); the joystick and keyboard mappings are plain functions and classes here,
so they are tested without ROS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import mujoco
import numpy as np

from ..sim.kinematics import DifferentialIK, quat_error
from ..sim.tasks import TaskSim

TWIST_COMPONENTS = ("linear_x", "linear_y", "linear_z", "angular_x", "angular_y", "angular_z")


# --------------------------------------------------------------------------------- geometry
def rotate_world(quat_wxyz: np.ndarray, rotvec: np.ndarray) -> np.ndarray:
    """``quat`` rotated by the rotation vector ``rotvec`` given in the world frame."""
    angle = float(np.linalg.norm(rotvec))
    q = np.asarray(quat_wxyz, dtype=float)
    if angle < 1e-12:
        return q.copy()
    dq = np.empty(4)
    mujoco.mju_axisAngle2Quat(dq, np.asarray(rotvec, dtype=float) / angle, angle)
    out = np.empty(4)
    mujoco.mju_mulQuat(out, dq, q)
    return out / np.linalg.norm(out)


def _clip_norm(v: np.ndarray, limit: float) -> np.ndarray:
    """``v`` scaled down to norm ``limit`` where longer (a limit of 0 gives 0: no "unlimited")."""
    n = float(np.linalg.norm(v))
    return v * (limit / n) if n > limit else v


def _positive(name: str, value) -> float:
    v = float(value)
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0 (a limit), got {value}")
    return v


# --------------------------------------------------------------------------------- arm
class CartesianTeleop:
    """End-effector twist -> arm joint position targets (differential IK on ``sim``'s model).

    ``max_linear`` (m/s) and ``max_angular`` (rad/s) cap the commanded twist's norms (> 0: a
    cap of 0 is refused, it never meant "no cap"); ``rate`` (Hz, default the task's control
    rate) gives the default time step of ``command``. ``workspace``: two finite xyz corners,
    low < high on every axis.
    """

    def __init__(self, sim: TaskSim, max_linear: float = 0.15, max_angular: float = 0.5,
                 rate: float | None = None, max_lead: float = 0.05,
                 max_lead_angle: float = 0.3, workspace: tuple | None = None,
                 max_step: float = 0.06, iterations: int = 2):
        if not sim.has_ee:
            raise ValueError(f"robot '{sim.robot_cfg.name}' has no end-effector site: Cartesian "
                             "teleop needs one (ee_site or ee_body in the robot config)")
        r = sim.robot
        self.sim = sim
        self.n_arm = r.n_arm
        self.ik = DifferentialIK(sim.model, r.ee_site, r.arm_qpos, r.arm_qvel, r.arm_limits)
        self.max_linear = _positive("max_linear", max_linear)
        self.max_angular = _positive("max_angular", max_angular)
        self.rate = float(rate) if rate else float(sim.cfg.control_rate)
        self.max_lead = _positive("max_lead", max_lead)
        self.max_lead_angle = _positive("max_lead_angle", max_lead_angle)
        self.workspace = None
        if workspace is not None:
            lo, hi = (np.asarray(w, dtype=float) for w in workspace)
            # NaN compares false: a NaN corner passed "low < high" and left its axis unbounded
            if (lo.shape != (3,) or hi.shape != (3,) or not np.all(np.isfinite(lo))
                    or not np.all(np.isfinite(hi)) or not np.all(lo < hi)):
                raise ValueError("workspace must be two finite xyz corners low < high, got "
                                 f"{lo.tolist()} and {hi.tolist()}")
            self.workspace = (lo, hi)
        self.max_step = float(max_step)
        self.iterations = int(iterations)
        from ..deploy.limits import ActionFilter, index_limits

        limits = index_limits(r, self.rate, sim.robot_cfg.name)  # (arm joints, then gripper)
        n = self.n_arm
        self.filter = ActionFilter(n, limits.lower[:n], limits.upper[:n], limits.max_delta[:n])
        self._pos: np.ndarray | None = None
        self._quat: np.ndarray | None = None

    @property
    def period(self) -> float:
        return 1.0 / self.rate

    @property
    def engaged(self) -> bool:
        return self._pos is not None

    @property
    def target_pose(self) -> np.ndarray | None:
        """The end-effector target (x y z qw qx qy qz), None while disengaged."""
        return None if self._pos is None else np.concatenate([self._pos, self._quat])

    def measured_pose(self, q_arm) -> tuple[np.ndarray, np.ndarray]:
        return self.ik.site_pose(self._check_q(q_arm))

    def engage(self, q_arm) -> None:
        """Start (or restart) from the measured pose of the arm at ``q_arm``."""
        self._pos, self._quat = self.measured_pose(q_arm)

    def disengage(self) -> None:
        self._pos = self._quat = None

    def clip_twist(self, twist) -> np.ndarray:
        t = np.asarray(twist, dtype=float).reshape(6)
        if not np.all(np.isfinite(t)):
            raise ValueError(f"twist must be finite, got {t}")
        return np.concatenate([_clip_norm(t[:3], self.max_linear),
                               _clip_norm(t[3:], self.max_angular)])

    def command(self, q_arm, twist, dt: float | None = None) -> np.ndarray:
        """Arm joint position targets after moving the pose target by ``twist`` for ``dt`` s.

        Engages from the measured pose if not engaged yet.
        """
        q = self._check_q(q_arm)
        dt = self.period if dt is None else float(dt)
        if not dt >= 0:
            raise ValueError(f"dt must be >= 0, got {dt}")
        t = self.clip_twist(twist)
        pos, quat = self.ik.site_pose(q)
        if not self.engaged:
            self._pos, self._quat = pos, quat
        v, w = t[:3], t[3:]
        new_pos = self._pos + v * dt
        if self.workspace is not None:
            lo, hi = self.workspace
            # Stop at the box; a target that started outside may stay there but not go further.
            new_pos = np.where((new_pos < lo) & (v < 0), np.minimum(self._pos, lo), new_pos)
            new_pos = np.where((new_pos > hi) & (v > 0), np.maximum(self._pos, hi), new_pos)
        new_quat = rotate_world(self._quat, w * dt)
        # Anti wind-up: the target stays within reach of where the arm really is.
        new_pos = pos + _clip_norm(new_pos - pos, self.max_lead)
        err = quat_error(new_quat, quat)
        if np.linalg.norm(err) > self.max_lead_angle:
            new_quat = rotate_world(quat, _clip_norm(err, self.max_lead_angle))
        self._pos, self._quat = new_pos, new_quat
        q_cmd = self.ik.solve(q, self._pos, self._quat, max_step=self.max_step,
                              iterations=self.iterations)
        return self.filter(q_cmd, q)[0]

    def _check_q(self, q_arm) -> np.ndarray:
        q = np.asarray(q_arm, dtype=float)
        if q.shape != (self.n_arm,) or not np.all(np.isfinite(q)):
            raise ValueError(f"expected {self.n_arm} finite arm joint positions, got {q_arm!r}")
        return q


# --------------------------------------------------------------------------------- gripper
def gripper_opening(sim: TaskSim, finger_positions) -> float:
    """Measured finger joint positions -> opening fraction (0 closed .. 1 open)."""
    r = sim.robot
    if not len(r.gripper_act):
        return 0.0
    lo, hi = r.gripper_ctrl_range[:, 0], r.gripper_ctrl_range[:, 1]
    fingers = np.asarray(finger_positions, dtype=float).reshape(-1)
    if fingers.shape != lo.shape:
        fingers = np.full(lo.shape, float(np.mean(fingers)))
    span = np.where(hi > lo, hi - lo, 1.0)
    return float(np.clip(np.mean((fingers - lo) / span), 0.0, 1.0))


class GripperTarget:
    """The commanded gripper opening, 0 closed .. 1 open; ``None`` until first set."""

    def __init__(self, step: float = 0.25):
        self.value: float | None = None
        self.step = float(step)

    def set(self, value: float) -> float:
        self.value = float(np.clip(value, 0.0, 1.0))
        return self.value

    def open(self) -> float:
        return self.set(1.0)

    def close(self) -> float:
        return self.set(0.0)

    def toggle(self) -> float:
        """Open unless (more than half) open, then close."""
        return self.set(0.0 if (self.value or 0.0) >= 0.5 else 1.0)

    def nudge(self, delta: float | None = None) -> float:
        return self.set((self.value or 0.0) + (self.step if delta is None else delta))


# ----------------------------------------------------------------------- shared node logic
def positions_by_name(names: Sequence[str], positions: Sequence[float],
                      wanted: Sequence[str]) -> np.ndarray:
    """The positions of ``wanted`` joints from a joint state's ``names``/``positions``."""
    names = list(names)
    if len(positions) != len(names):
        raise ValueError(f"{len(names)} joint names but {len(positions)} positions")
    try:
        idx = [names.index(j) for j in wanted]
    except ValueError:
        missing = [j for j in wanted if j not in names]
        raise ValueError(f"joints {missing} missing from the joint state (it has {names})") \
            from None
    return np.asarray(positions, dtype=float)[idx]


class TeleopController:
    """Engage/disengage, twist -> arm command, gripper target: what every teleop front end does.

    Call ``update`` once per control tick with whether the operator enables motion (deadman
    held), the measured joint positions (arm joints then finger joints, robot order) and the
    twist. It returns ``(arm joint targets, gripper opening)`` to publish, or ``None`` (publish
    nothing) while disengaged.
    """

    def __init__(self, sim: TaskSim, arm: CartesianTeleop | None = None, **arm_kwargs):
        self.sim = sim
        self.arm = arm or CartesianTeleop(sim, **arm_kwargs)
        self.gripper = GripperTarget()
        self.has_gripper = bool(len(sim.robot.gripper_act))
        self.n_arm = sim.robot.n_arm

    @property
    def joint_names(self) -> list:
        return self.sim.robot.joint_names

    @property
    def engaged(self) -> bool:
        return self.arm.engaged

    def update(self, enabled: bool, joint_positions, twist, dt: float | None = None):
        if not enabled:
            if self.arm.engaged:
                self.arm.disengage()
            return None
        q = np.asarray(joint_positions, dtype=float)
        if not self.arm.engaged:
            self.arm.engage(q[: self.n_arm])
            if self.gripper.value is None:  # first engagement: keep the fingers where they are
                self.gripper.set(gripper_opening(self.sim, q[self.n_arm:]))
        arm = self.arm.command(q[: self.n_arm], twist, dt)
        return arm, (self.gripper.value if self.has_gripper else None)

    def gripper_action(self, action: str) -> float | None:
        """Apply a gripper action while engaged; ignored (None) while disengaged."""
        if not self.engaged or not self.has_gripper:
            return None
        g = self.gripper
        return {"open": g.open, "close": g.close, "toggle": g.toggle,
                "nudge_open": lambda: g.nudge(g.step),
                "nudge_close": lambda: g.nudge(-g.step)}[action]()


# --------------------------------------------------------------------------------- joystick
def apply_deadzone(value: float, deadzone: float) -> float:
    """0 inside ``deadzone``; outside it, rescaled so the output still spans 0..1."""
    v = float(value)
    if not np.isfinite(v):
        return 0.0
    v = float(np.clip(v, -1.0, 1.0))
    if abs(v) <= deadzone:
        return 0.0
    return float(np.sign(v) * (abs(v) - deadzone) / (1.0 - deadzone))


@dataclass(frozen=True)
class AxisMap:
    """One twist component from a joystick axis: ``axis`` index (-1: unused), full-scale
    value ``scale`` (m/s or rad/s), ``invert`` flips the sign."""

    axis: int = -1
    scale: float = 0.0
    invert: bool = False


def joy_twist(axes: Sequence[float], mapping: dict, deadzone: float = 0.1) -> np.ndarray:
    """A twist from joystick ``axes`` with ``mapping`` {component: AxisMap} (TWIST_COMPONENTS).

    Axes the message does not have count as centred.
    """
    out = np.zeros(6)
    for i, comp in enumerate(TWIST_COMPONENTS):
        m = mapping.get(comp)
        if m is None or m.axis < 0 or m.axis >= len(axes):
            continue
        v = apply_deadzone(axes[m.axis], deadzone) * m.scale
        out[i] = -v if m.invert else v
    return out


def button(buttons: Sequence[int], index: int) -> bool:
    """Whether button ``index`` is pressed (-1 or beyond the message: never)."""
    return 0 <= index < len(buttons) and bool(buttons[index])


class RisingEdges:
    """Which named inputs went from released to pressed since the last update."""

    def __init__(self):
        self._prev: dict = {}

    def update(self, pressed: dict) -> list:
        rising = [k for k, v in pressed.items() if v and not self._prev.get(k, False)]
        self._prev = dict(pressed)
        return rising

    def reset(self) -> None:
        self._prev = {}


# --------------------------------------------------------------------------------- keyboard
# key: (twist component index, sign); world frame: +x away from the base, +y to its left, +z up.
KEY_TWIST = {
    "w": (0, +1.0), "s": (0, -1.0),
    "a": (1, +1.0), "d": (1, -1.0),
    "r": (2, +1.0), "f": (2, -1.0),
    "q": (5, +1.0), "e": (5, -1.0),
}
KEY_ACTIONS = {
    " ": "gripper_toggle",
    "n": "episode_start",
    "k": "episode_keep",
    "x": "episode_discard",
    "p": "release",
    "h": "help",
    "?": "help",
}
KEY_HELP = """keyboard teleop: move the end effector (world frame)
  w/s: +x/-x   a/d: +y/-y   r/f: up/down   q/e: yaw left/right
  space: gripper open/close
  n: start an episode   k: stop and keep it   x: discard it
  p: release the arm (stop commanding; any move key engages again)   h: this help
  Ctrl-C: quit"""


def key_action(key: str) -> str | None:
    """``move`` for a motion key, the action name of another bound key, else None."""
    k = key.lower() if len(key) == 1 else key
    if k in KEY_TWIST:
        return "move"
    return KEY_ACTIONS.get(k)


def key_twist(keys, linear_speed: float, angular_speed: float) -> np.ndarray:
    """The twist of motion keys held together (later keys win on the same component)."""
    out = np.zeros(6)
    for key in keys:
        binding = KEY_TWIST.get(key.lower() if len(key) == 1 else key)
        if binding is not None:
            comp, sign = binding
            out[comp] = sign * (linear_speed if comp < 3 else angular_speed)
    return out


class KeyboardTwist:
    """Key presses -> twist: each motion key moves along its component for ``hold`` seconds
    after its last press (terminal auto-repeat keeps a held key going); pressing the opposite
    key replaces the motion on that component."""

    def __init__(self, linear_speed: float = 0.1, angular_speed: float = 0.4,
                 hold: float = 0.5):
        self.linear_speed = float(linear_speed)
        self.angular_speed = float(angular_speed)
        self.hold = float(hold)
        self._until = np.zeros(6)
        self._value = np.zeros(6)

    def press(self, key: str, now: float) -> bool:
        """Register a key press at time ``now`` (s); True if it is a motion key."""
        t = key_twist([key], self.linear_speed, self.angular_speed)
        comps = np.flatnonzero(t)
        if not len(comps):
            return False
        self._value[comps] = t[comps]
        self._until[comps] = now + self.hold
        return True

    def twist(self, now: float) -> np.ndarray:
        return np.where(self._until > now, self._value, 0.0)

    def active(self, now: float) -> bool:
        return bool(np.any(self._until > now))

    def clear(self) -> None:
        self._until[:] = 0.0
        self._value[:] = 0.0
