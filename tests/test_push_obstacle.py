"""push_obstacle, the multimodal contact task: a fixed wall across the line between puck and goal,
an expert that goes round it on a side drawn at random, demonstrations that hold both routes from
states that look alike (real MuJoCo physics; a ROS graph only in the test marked ros)."""
import gymnasium as gym
import mujoco
import numpy as np
import pytest
import yaml
from gymnasium.utils.env_checker import check_env

import robot_imitation  # registers the environments
from robot_imitation.bridge.core import BridgeCore
from robot_imitation.learning.evaluation import task_mismatch
from robot_imitation.rollouts.gym import GymWorld
from robot_imitation.sim.experts import PushExpert, PushObstacleExpert, make_expert
from robot_imitation.sim.tasks import PushLogic, PushObstacleLogic, TaskSim
from robot_imitation.spec import Spec, derive

TASK = "push_obstacle"
SEEDS = range(700, 724)


def frame(obs, start="obstacle_pose"):
    """Unit vectors along the line from ``start`` to the goal and across it."""
    a, goal = obs[start][:2], obs["goal_pose"][:2]
    u = (goal - a) / np.linalg.norm(goal - a)
    return u, np.array([-u[1], u[0]])


def side_of(obs) -> float:
    """The episode's hidden side: where ``route_pose`` lies across the wall-goal line."""
    _, n = frame(obs)
    return float(np.sign((obs["route_pose"][:2] - obs["obstacle_pose"][:2]) @ n))


def test_the_wall_stands_across_the_line_between_puck_and_goal_and_is_observed():
    sim = TaskSim(TASK)
    assert isinstance(sim.logic, PushObstacleLogic) and type(make_expert(sim)) is PushObstacleExpert
    p = sim.cfg.params
    geom = sim.model.geom("obstacle")
    assert sim.model.body_mocapid[geom.bodyid[0]] >= 0  # fixed: moved only by reset
    assert geom.contype[0] and geom.conaffinity[0]      # and solid
    # a box with a flat face, gripping: no priority, and at least the puck's friction (MuJoCo
    # takes the larger), so a puck pushed at it is pinned rather than slid round it
    assert geom.type[0] == mujoco.mjtGeom.mjGEOM_BOX and geom.priority[0] == 0
    assert geom.friction[0] >= sim.model.geom("puck").friction[0]
    np.testing.assert_allclose(geom.size, [p["obstacle_half_thickness"],
                                           p["obstacle_half_length"], p["obstacle_half_height"]])
    # wider than the puck; taller than it, lower than the expert's travel height (fingertips at
    # 0.12 m)
    assert p["obstacle_half_length"] > p["puck_radius"]
    assert 2 * p["puck_half_height"] < 2 * p["obstacle_half_height"] < 0.12 - 0.03
    for seed in range(20):
        sim.reset(seed)
        obs = sim.observe()
        assert obs["obstacle_pose"].shape == (7,)
        puck, goal, post = (obs[k][:2] for k in ("object_pose", "goal_pose", "obstacle_pose"))
        u, n = frame(obs, "object_pose")
        span = (goal - puck) @ u
        # on the line, near the midpoint; the goal past the wall by more than the puck can
        # reach when stopped at it, so going straight never succeeds
        assert abs((post - puck) @ n) < 1e-9
        # pushed in a direction inside the task's window (degrees, from the x axis)
        low, high = p["goal_direction"]
        assert low <= np.degrees(np.arctan2(u[1], u[0])) <= high
        assert abs((post - puck) @ u - span / 2) <= p["obstacle_jitter"] + 1e-9
        assert (goal - post) @ u > (p["obstacle_half_thickness"] + p["puck_radius"]
                                    + p["success_threshold"])
        # across the line: the box's x axis (its thickness) along it, its long faces facing
        # puck and goal
        axes = np.empty(9)
        mujoco.mju_quat2Mat(axes, obs["obstacle_pose"][3:])
        assert abs(axes.reshape(3, 3)[:2, 0] @ u) > 1 - 1e-9
        assert abs(obs["route_pose"][2] - p["puck_half_height"]) < 1e-12
    env = gym.make(robot_imitation.ENV_IDS[TASK])
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_the_spec_has_the_wall_and_not_the_side():
    spec = Spec.load(TASK)
    keys = [f.key for f in spec.observations]
    assert "obstacle_pose" in keys and "route_pose" not in keys
    assert spec.topics()["/obstacle_pose"] == "geometry_msgs/msg/PoseStamped"
    assert task_mismatch(spec, TASK) is None and task_mismatch(spec, TASK, "ros") is None
    world = GymWorld(TASK, spec)
    try:
        sim_obs, _ = world.env.reset(seed=3)
        obs = world.observation(sim_obs)
        assert sorted(obs) == sorted(keys)
        np.testing.assert_array_equal(obs["obstacle_pose"], sim_obs["obstacle_pose"])
    finally:
        world.close()


def test_the_bridge_core_runs_the_task_and_has_the_wall_to_publish():
    """The bridge node publishes the core's ``ee_pose`` and each of the logic's pose keys (the
    wall, and the route only the expert node subscribes to); an expert episode through the
    plain core succeeds and the wall does not move."""
    core = BridgeCore(TaskSim(TASK), command_timeout=0.5)
    assert {"obstacle_pose", "route_pose"} <= set(core.sim.logic.pose_keys)
    assert core.sim.logic.privileged_keys == ("route_pose",)
    expert = make_expert(TaskSim(TASK))
    core.reset(5)
    post = core.sim.observe()["obstacle_pose"].copy()
    status = core.status()
    while not status.done:
        action = expert(core.sim.observe())
        assert core.command_arm(action[:7]).ok and core.command_gripper(action[7:]).ok
        status = core.step_tick()
    assert status.success, status
    np.testing.assert_array_equal(core.sim.observe()["obstacle_pose"], post)


def test_expert_demonstrations_are_bimodal_and_the_side_is_hidden():
    """The expert solves the task and goes round either side, about as often: the puck's signed
    offset from the initial puck-goal line as it passes the wall takes both signs, beyond the
    wall's ends (no episode goes through the middle)."""
    env = gym.make(robot_imitation.ENV_IDS[TASK])
    sim = env.unwrapped.sim
    expert = make_expert(sim)
    wall_geom = sim.model.geom("obstacle").id
    wall_body = sim.model.geom_bodyid[wall_geom]
    offsets, sides, successes, lengths, arm_on_wall = [], [], 0, [], 0
    for seed in SEEDS:
        obs, _ = env.reset(seed=seed)
        expert.reset()
        u, n = frame(obs, "object_pose")  # the initial puck-goal line
        puck0, post = obs["object_pose"][:2].copy(), obs["obstacle_pose"].copy()
        side, passed, ticks = side_of(obs), None, 0
        while True:
            obs, _, term, trunc, info = env.step(expert(obs))
            ticks += 1
            arm_on_wall += any(
                wall_geom in (c.geom1, c.geom2) and sim.model.geom_bodyid[
                    c.geom2 if c.geom1 == wall_geom else c.geom1] not in (sim.logic.puck, wall_body)
                for c in sim.data.contact[:sim.data.ncon])
            if passed is None and (obs["object_pose"][:2] - post[:2]) @ u >= 0:
                passed = float((obs["object_pose"][:2] - puck0) @ n)
            if term or trunc:
                break
        np.testing.assert_array_equal(obs["obstacle_pose"], post)
        successes += info["is_success"]
        lengths.append(ticks)
        assert passed is not None, f"seed {seed}: the puck never got past the wall"
        assert np.sign(passed) == side, f"seed {seed}: went round the other side"
        offsets.append(passed)
        sides.append(side)
    env.close()
    offsets = np.array(offsets)
    assert successes >= 0.9 * len(SEEDS), f"{successes}/{len(SEEDS)}"
    assert np.median(lengths) < sim.cfg.max_steps / 2, lengths
    # the fingers keep off the wall (over 600 episodes they touched it in one tick)
    assert arm_on_wall <= 2, f"the arm touched the wall in {arm_on_wall} ticks"
    for sign in (1, -1):
        assert np.mean(np.sign(offsets) == sign) >= 0.25, offsets
    # both modes well apart: the puck passes beyond the wall's ends, never near the line
    p = sim.cfg.params
    assert np.abs(offsets).min() > p["obstacle_half_length"] + p["puck_radius"] - 0.005, offsets


def test_the_side_is_drawn_after_and_apart_from_everything_seen():
    """The side is the reset's last draw, after the arm, puck, goal and wall: nothing a
    policy observes at the start tells it. Over many resets, no observed value of the initial
    state (nor a relative position the spec computes) correlates with it."""
    spec = Spec.load(TASK)
    world = GymWorld(TASK, spec)
    rows, sides = [], []
    for seed in range(400):
        sim_obs, _ = world.env.reset(seed=seed)
        seen = derive(spec.features, world.observation(sim_obs))
        rows.append(np.concatenate([np.ravel(v) for v in seen.values()]))
        sides.append(side_of(sim_obs))
    world.close()
    rows, sides = np.array(rows), np.array(sides)
    assert 0.4 < np.mean(sides > 0) < 0.6
    varying = rows[:, rows.std(axis=0) > 1e-9]
    corr = np.abs([np.corrcoef(col, sides)[0, 1] for col in varying.T])
    assert corr.max() < 0.2, corr.max()  # 400 resets: chance alone stays below about 0.15


def test_the_expert_is_a_pure_function_of_the_observation():
    """The same observation gets the same plan, whatever was asked before and by which copy of
    the expert; the hidden side decides only while the puck is on the wall-goal line, and only
    from the turn near the wall on (before it, both routes push straight at the wall). (Its
    commands are the plan through the action filter, counted from the last command.)"""
    env = gym.make(robot_imitation.ENV_IDS[TASK])
    expert = make_expert(env.unwrapped.sim)
    other = make_expert(TaskSim(TASK))
    obs, _ = env.reset(seed=11)
    states = [obs]
    for t in range(60):
        obs, *_ = env.step(expert(obs))
        if t % 10 == 9:
            states.append(obs)
    labels = [expert.plan(s) for s in states]
    for s, label in zip(reversed(states), reversed(labels)):
        np.testing.assert_array_equal(expert.plan(s), label)
        np.testing.assert_array_equal(other.plan(s), label)

    def mirrored(s):
        """``s`` with the route on the other side of the wall."""
        m = dict(s)
        post = s["obstacle_pose"][:2]
        _, n = frame(s)
        m["route_pose"] = s["route_pose"].copy()
        m["route_pose"][:2] -= 2 * ((s["route_pose"][:2] - post) @ n) * n
        return m

    start, later = states[0], states[-1]
    np.testing.assert_array_equal(expert.push_target(mirrored(start)), expert.push_target(start))
    # the puck moved (on the line) to just past the turn: there the side decides
    u, _ = frame(start)
    turning = dict(start)
    turning["object_pose"] = start["object_pose"].copy()
    turning["object_pose"][:2] = start["obstacle_pose"][:2] + (expert.turn + 0.02) * u
    assert not np.allclose(expert.push_target(mirrored(turning)), expert.push_target(turning))
    _, n = frame(later)
    assert abs((later["object_pose"][:2] - later["obstacle_pose"][:2]) @ n) > 0.03
    np.testing.assert_array_equal(expert.plan(mirrored(later)), expert.plan(later))
    # push's expert is unchanged: it pushes towards the goal
    push = TaskSim("push")
    push.reset(0)
    np.testing.assert_array_equal(PushExpert(push).push_target(push.observe()),
                                  push.observe()["goal_pose"][:2])


@pytest.mark.ros
def test_through_ros_the_expert_node_takes_the_route_from_the_bridge(tmp_path):
    """Recorded through bridge, expert node and recorder (lockstep), the demonstrations are the
    gymnasium ones, command for command: the expert node reads ``route_pose`` off the bridge's
    topic, and the recording (the spec's topics) holds the wall but not the route."""
    from robot_imitation.data.dataset import build_dataset
    from robot_imitation.rollouts.gym import expert_demonstrations
    from robot_imitation.ros.pipelines import record_demonstrations

    entries = record_demonstrations(tmp_path / "ds", task=TASK, episodes=2, seed=700,
                                    log_dir=tmp_path / "logs")
    assert [e["status"] for e in entries] == ["ok", "ok"] and all(e["success"] for e in entries)
    assert "/obstacle_pose" in entries[0]["counts"] and "/route_pose" not in entries[0]["counts"]
    ros = build_dataset(tmp_path / "ds", cache=False, val_fraction=0.0).episodes
    gym_demos = expert_demonstrations(TASK, [e["seed"] for e in entries])
    for a, b in zip(ros, gym_demos):
        # the same steps (the expert's answer to the final state labelled in both worlds)
        assert len(a.actions) == len(b.actions)
        # the same numbers (the gymnasium episodes are kept as float32)
        np.testing.assert_array_equal(a.actions.astype(np.float32), b.actions)
        for key in b.obs:
            np.testing.assert_array_equal(a.obs[key].astype(np.float32), b.obs[key],
                                          err_msg=key)


def test_task_names_pick_logic_and_expert_by_full_name_then_prefix(tmp_path):
    """push_obstacle is its own task; a variant such as push_fast is still a push."""
    path = tmp_path / "push_fast.yaml"
    path.write_text(yaml.safe_dump({**TaskSim("push").cfg.params, "name": "push_fast"}))
    fast = TaskSim(str(path))
    assert type(fast.logic) is PushLogic and type(make_expert(fast)) is PushExpert
    assert type(TaskSim(TASK).logic) is PushObstacleLogic
