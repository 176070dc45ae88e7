"""Scripted experts: privileged-state controllers that solve the built-in tasks.

An expert's plan (``Expert.plan``) is a pure function of the observation dictionary (the same
dictionary the gymnasium environment returns and the ROS nodes assemble from topics), so it can
label any visited state, which is what DAgger needs. Its commands (calling the expert) pass the
one action filter (``deploy.limits.ActionFilter``) with its robot's limits, as every command to
a robot does: the joint limits, the gripper's 0..1, and each joint's velocity limit per control
tick, counted from its last command (a step asking more is scaled down whole, its direction
kept). So a command depends on the episode so far: ``reset`` at each episode's start (the first
command's change then counts from the measured joints). Whoever runs it (the expert node, the
gymnasium worlds, a test) resets it there, and they command the same.
"""
from __future__ import annotations

import numpy as np

from .kinematics import DifferentialIK
from .tasks import TaskSim, route_clearance


class Expert:
    """Base: Cartesian targets for the end effector, turned into joint targets by IK."""

    def __init__(self, sim: TaskSim, max_step: float = 0.06, max_joint_step: float = 0.3):
        r = sim.robot
        self.sim = sim
        self.n_arm = r.n_arm
        self.ik = DifferentialIK(sim.model, r.ee_site, r.arm_qpos, r.arm_qvel, r.arm_limits)
        # Keep the tool orientation of the home pose (gripper pointing down).
        _, self.tool_quat = self.ik.site_pose(r.home)
        self.max_step = max_step              # m of end-effector motion asked per tick
        self.max_joint_step = max_joint_step  # rad: the largest joint change asked per tick
        from ..deploy.limits import ActionFilter, index_limits

        self.limits = index_limits(r, sim.cfg.control_rate, sim.robot_cfg.name)
        self.filter = ActionFilter.from_limits(self.limits, r.n_arm + 1)
        self._step = self.limits.max_delta[: r.n_arm]  # each joint's velocity limit per tick
        self.last: np.ndarray | None = None   # the last command (None: a new episode)

    def cartesian_target(self, obs: dict) -> tuple[np.ndarray, float]:
        """(end-effector position target, gripper opening) for this observation."""
        raise NotImplementedError

    def reset(self) -> None:
        """A new episode: the next command's change counts from the measured joints."""
        self.last = None

    def __call__(self, obs: dict) -> np.ndarray:
        """The command for this observation: ``plan`` through the action filter, counted from
        the last command (see the module)."""
        action = self.plan(obs)
        n = self.n_arm
        reference = self.last if self.last is not None else \
            np.append(np.asarray(obs["joint_pos"][:n], dtype=float), action[n])
        dq = action[:n] - reference[:n]
        over = float(np.max(np.abs(dq) / self._step))
        if over > 1.0:  # scaled down whole, its direction kept (a joint clipped alone bends it)
            action[:n] = reference[:n] + dq / over
        self.last = self.filter(action, reference)[0]
        return self.last.copy()

    def plan(self, obs: dict) -> np.ndarray:
        """What the expert asks for in this state: a pure function of the observation."""
        target, grip = self.cartesian_target(obs)
        q = np.asarray(obs["joint_pos"][: self.n_arm], dtype=float)
        q_cmd = self.ik.solve(q, target, self.tool_quat, max_step=self.max_step, iterations=2)
        # Far from the tool orientation or near a singularity, one IK step can ask for radians
        # in a tick; scaling the step down (its direction kept) keeps every label a command a
        # controller would follow, also in the states a learner drives the arm into (DAgger).
        dq = q_cmd - q
        largest = float(np.abs(dq).max())
        if largest > self.max_joint_step:
            q_cmd = q + dq * (self.max_joint_step / largest)
        return np.append(q_cmd, grip)


class ReachExpert(Expert):
    def cartesian_target(self, obs):
        return np.asarray(obs["target_pose"][:3], dtype=float), 1.0


def ramp(x: float, a: float, b: float) -> float:
    """0 below ``a``, 1 above ``b``, linear in between."""
    return float(np.clip((x - a) / (b - a), 0.0, 1.0))


class PushExpert(Expert):
    """Go above the pre-push point behind the puck (on the puck-goal line), descend, push along
    the line.

    The phases blend into each other by ramps over a centimetre or two of the current geometry,
    so the expert is a continuous function of the observation: a learner can fit it, and its
    labels in states between phases (where a learner's mistakes lead) are in between too. It
    keeps no memory: the phase is read off the observation.
    """

    def __init__(self, sim: TaskSim, max_step: float = 0.06, max_joint_step: float = 0.3):
        super().__init__(sim, max_step, max_joint_step)
        p = sim.cfg.params
        self.r = p["puck_radius"]
        self.push_z = p["puck_half_height"]          # fingertips at the puck's mid-height
        self.safe_z = 0.12
        self.standoff = self.r + 0.045               # pre-push distance behind the puck centre
        self.push_speed = 0.03                       # m per control tick while pushing

    def push_target(self, obs) -> np.ndarray:
        """Where the puck is pushed towards from this state (xy): the goal."""
        return np.asarray(obs["goal_pose"][:2], dtype=float)

    def cartesian_target(self, obs):
        ee = np.asarray(obs["ee_pose"][:3], dtype=float)
        puck = np.asarray(obs["object_pose"][:2], dtype=float)
        goal = self.push_target(obs)
        to_goal = goal - puck
        dist = np.linalg.norm(to_goal)
        u = to_goal / dist if dist > 1e-6 else np.array([1.0, 0.0])
        rel = ee[:2] - puck
        along = float(rel @ u)                       # < 0: behind the puck
        lateral = float(rel @ np.array([-u[1], u[0]]))
        pre = puck - u * self.standoff

        # Travel: towards the pre-push point, high when far from it, descending as it nears.
        # Low beside the puck, the end effector rises before it moves sideways.
        near = 1.0 - ramp(np.linalg.norm(ee[:2] - pre), 0.02, 0.05)
        height = self.push_z + (self.safe_z - self.push_z) * (1.0 - near)
        lifted = ramp(ee[2], self.push_z + 0.02, self.safe_z - 0.02)
        clear = ramp(np.linalg.norm(rel), self.standoff + 0.02, self.standoff + 0.08)
        free = max(near, lifted, clear)
        travel = np.array([*(ee[:2] + free * (pre - ee[:2])), height])
        # Push: advance along the line through the puck centre; re-aiming every tick pulls the
        # pusher back onto the line when the puck drifts sideways.
        advance = min(self.push_speed, dist)
        push = np.array([*(puck - u * (self.r + 0.01) + u * advance), self.push_z])
        # Pushing takes over when the pusher is behind the puck, on the line and low.
        w = ((1.0 - ramp(abs(lateral), 0.015, 0.035)) * ramp(-along, self.r - 0.015, self.r)
             * (1.0 - ramp(ee[2], self.push_z + 0.015, self.push_z + 0.035)))
        return (1.0 - w) * travel + w * push, 0.0


class PushObstacleExpert(PushExpert):
    """Push round the wall: straight at it first, then, ``turn_gap`` short of its face,
    sideways out to a lane ``route_clearance`` off the line through wall and goal (clear of the
    wall's end), along the lane past the wall, and in to the goal; the push is aimed
    ``lookahead`` ahead along that route (a carrot), so the puck bends round the corners.

    Straight first, so that the two routes part only near the wall: the approach and the first
    push are the same on either side, and a policy that averages the routes pushes the puck
    into the wall's face where they part (a route that left the line from the start would
    tell its side by where the arm comes down, long before the wall).

    Which side: the one the puck is already on, once it is ``side_threshold`` off the line
    through wall and goal (so in a state a learner drove, the label keeps to the side the
    puck went); on that line, the episode's side, read off ``route_pose`` (drawn at reset, seen
    by no policy). Both are read off the observation: the expert stays a pure function of it.
    """

    def __init__(self, sim: TaskSim, max_step: float = 0.06, max_joint_step: float = 0.3):
        super().__init__(sim, max_step, max_joint_step)
        p = sim.cfg.params
        self.clear = route_clearance(p)
        self.on_line = p["side_threshold"]
        self.lookahead = 0.05
        self.half_length = p["obstacle_half_length"]
        self.half_thickness = p["obstacle_half_thickness"]
        # puck centre positions along the line, from the wall's centre: where the turn starts,
        # and the nearest the carrot comes to the face while the puck is in the wall's shadow
        self.turn = -(self.half_thickness + self.r + p["turn_gap"])
        self.stop = -(self.half_thickness + self.r + 0.025)
        # the lane keeps its full offset until the carrot is this far past the wall's centre:
        # aimed ahead, the puck cuts the route's corner, and would catch the wall's end otherwise
        self.past = self.half_thickness + self.r + 0.5 * self.lookahead
        # the pre-push point (where the fingers come down) keeps this far off the wall
        self.keep_out = 0.06

    def push_target(self, obs):
        puck, goal, post, route = (np.asarray(obs[k][:2], dtype=float) for k in
                                   ("object_pose", "goal_pose", "obstacle_pose", "route_pose"))
        u = goal - post
        span = max(np.linalg.norm(u), 1e-9)
        u /= span
        n = np.array([-u[1], u[0]])
        rel = puck - post
        along, lateral = float(rel @ u), float(rel @ n)
        ahead = along + self.lookahead
        if ahead >= span:
            target = goal
        else:
            side = np.sign(lateral) if abs(lateral) > self.on_line else np.sign((route - post) @ n)
            beside = (side or 1.0) * self.clear * min(1.0, (span - ahead) / (span - self.past))
            # straight on until the turn, then out to the lane: back onto the line while the
            # puck is near it (so a push that drifts does not pick the side), a puck further
            # off (where a learner drove it) keeps its offset
            straight = lateral * ramp(abs(lateral), self.on_line, self.on_line + 0.01)
            turn = ramp(along, self.turn, self.turn + 0.01)
            # in front of the wall and in its shadow, the carrot stops short of the face (no
            # nearer than the puck itself): there the puck goes sideways, not at the wall
            shadow = ((1.0 - ramp(abs(lateral), self.half_length + self.r,
                                  self.half_length + self.r + 0.02))
                      * (1.0 - ramp(along, -self.half_thickness, 0.0)))
            ahead = (1.0 - shadow) * ahead + shadow * min(ahead, max(self.stop, along))
            target = post + ahead * u + ((1.0 - turn) * straight + turn * beside) * n
        return self.keep_off(puck, post, u, target)

    def wall_distance(self, points, post, u) -> np.ndarray:
        """Distance (xy) from each of ``points`` to the wall: a rectangle at ``post``, its
        thickness along ``u`` (the wall stands across the line from it to the goal)."""
        rel = np.atleast_2d(points) - post
        along = np.maximum(np.abs(rel @ u) - self.half_thickness, 0.0)
        across = np.maximum(np.abs(rel @ np.array([-u[1], u[0]])) - self.half_length, 0.0)
        return np.hypot(along, across)

    def keep_off(self, puck, post, u, target):
        """``target``, or, when the pre-push point behind the puck for it is over the wall (the
        fingers would land on it), the nearest direction whose pre-push point is clear: the
        turn found on a 2-degree grid, then refined by bisection, so it changes continuously
        with the state."""
        d = target - puck
        dist = np.linalg.norm(d)
        if dist < 1e-9:
            return target
        d /= dist

        def clear(turn):
            turn = np.atleast_1d(turn)
            c, s = np.cos(turn), np.sin(turn)
            dirs = np.stack([c * d[0] - s * d[1], s * d[0] + c * d[1]], axis=1)
            return self.wall_distance(puck - self.standoff * dirs, post, u) >= self.keep_out, dirs

        if clear(0.0)[0][0]:
            return target
        grid = np.deg2rad(np.arange(2.0, 181.0, 2.0))
        turns = np.stack([grid, -grid], axis=1).ravel()  # nearest first, left before right
        ok, _ = clear(turns)
        if not ok.any():
            return target
        lo, hi = 0.0, float(turns[np.argmax(ok)])  # blocked at lo, clear at hi
        for _ in range(20):
            mid = 0.5 * (lo + hi)
            if clear(mid)[0][0]:
                hi = mid
            else:
                lo = mid
        return puck + clear(hi)[1][0] * dist


EXPERTS = {"reach": ReachExpert, "push": PushExpert, "push_obstacle": PushObstacleExpert}


def make_expert(sim: TaskSim) -> Expert:
    """The expert of ``sim``'s task: by the task's full name, else by the longest part of it
    before an ``_`` that names one (``push_fast`` is pushed as ``push``, ``push_obstacle_x`` as
    ``push_obstacle``)."""
    from ..settings import name_prefixes

    name = sim.cfg.name
    cls = next((EXPERTS[n] for n in name_prefixes(name) if n in EXPERTS), None)
    if cls is None:
        raise ValueError(f"no scripted expert for task '{name}' (have: {sorted(EXPERTS)})")
    return cls(sim)
