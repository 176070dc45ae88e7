"""Tasks, experts and the gymnasium environments: real MuJoCo physics, no ROS."""
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import robot_imitation  # registers the environments
from robot_imitation.sim.experts import make_expert
from robot_imitation.sim.robot import ModelError, RobotConfig
from robot_imitation.sim.tasks import TaskConfig, TaskSim

PANDA_JOINTS = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1",
                                                           "panda_finger_joint2"]


@pytest.mark.parametrize("env_id", sorted(robot_imitation.ENV_IDS.values()))
def test_gymnasium_api(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert env.action_space.shape == (8,)
    env.close()


def test_panda_model():
    sim = TaskSim("reach")
    assert sim.robot.joint_names == PANDA_JOINTS
    assert sim.model.opt.timestep == pytest.approx(0.002)
    assert sim.substeps == 25
    # Gripper pointing down at the home pose, fingertips above the table.
    sim.reset(0)
    ee = sim.ee_pose()
    assert 0.05 < ee[2] < 0.6
    assert sim.data.site_xmat[sim.robot.ee_site].reshape(3, 3)[2, 2] < -0.9


@pytest.mark.parametrize("task", ["reach", "push", "push_obstacle"])
def test_seeded_reset_reproduces_state(task):
    a, b = TaskSim(task), TaskSim(task)
    a.reset(42)
    b.reset(42)
    for key, value in a.observe().items():
        np.testing.assert_array_equal(value, b.observe()[key], err_msg=key)
    b.reset(43)
    assert not np.array_equal(a.observe()["joint_pos"], b.observe()["joint_pos"])


@pytest.mark.parametrize("task", ["reach", "push", "push_obstacle"])
def test_gym_rollouts_deterministic(task):
    def rollout():
        env = gym.make(robot_imitation.ENV_IDS[task])
        expert = make_expert(env.unwrapped.sim)
        obs, _ = env.reset(seed=11)
        traj = [obs["joint_pos"]]
        for _ in range(30):
            obs, *_ = env.step(expert(obs))
            traj.append(obs["joint_pos"])
        return np.array(traj)

    first = rollout()
    np.testing.assert_array_equal(first, rollout())
    assert np.ptp(first[:, :7], axis=0).max() > 0.05  # the arm really moved


@pytest.mark.parametrize("task", ["reach", "push", "push_obstacle"])
def test_every_expert_command_is_within_the_robot_s_limits(task):
    """The scripted expert's commands reached the robot unfiltered: up to 0.3 rad a tick (its
    own step cap) where the panda's velocity limits allow 0.109-0.131 rad at 20 Hz; push's
    expert asked for more on 45 of 939 ticks, each episode's first among them. Each command now
    passes the action filter: within the joint limits, and within a velocity limit's tick of
    the last command (an episode's first: of the measured joints)."""
    env = gym.make(robot_imitation.ENV_IDS[task])
    sim = env.unwrapped.sim
    expert = make_expert(sim)
    lower, upper = sim.robot.arm_limits[:, 0], sim.robot.arm_limits[:, 1]
    step = sim.robot.velocity_limits / sim.cfg.control_rate
    asked, ticks = 0, 0
    for seed in range(3):
        obs, _ = env.reset(seed=20_000 + seed)
        expert.reset()
        before = obs["joint_pos"][:7]
        for _ in range(60):
            plan = expert.plan(obs)
            asked += bool(np.any(np.abs(plan[:7] - before) > step))
            action = expert(obs)
            assert np.all(np.abs(action[:7] - before) <= step * (1 + 1e-9)), action - before
            assert np.all((action[:7] >= lower) & (action[:7] <= upper))
            assert 0.0 <= action[7] <= 1.0
            before = action[:7]
            obs, _, term, trunc, _ = env.step(action)
            ticks += 1
            if term or trunc:
                break
    assert ticks > 30 and asked >= 3, "the expert's plan asks for more at least at each start"


@pytest.mark.parametrize("task", ["reach", "push",
                                  pytest.param("push_obstacle", marks=pytest.mark.slow)])  # 10 s
def test_expert_success_rate(task):
    """Each scripted expert solves >= 95% of randomized episodes (100 episodes, fixed seeds)."""
    env = gym.make(robot_imitation.ENV_IDS[task])
    expert = make_expert(env.unwrapped.sim)
    successes = 0
    for seed in range(100):
        obs, _ = env.reset(seed=10_000 + seed)
        expert.reset()
        while True:
            obs, _, term, trunc, info = env.step(expert(obs))
            if term or trunc:
                break
        successes += info["is_success"]
    assert successes >= 95, f"{task} expert: {successes}/100"


def test_push_needs_contact():
    """The puck only reaches the goal when pushed: holding still never succeeds."""
    env = gym.make("robot_imitation/Push-v0")
    obs, _ = env.reset(seed=5)
    hold = np.append(obs["joint_pos"][:7], 0.0)
    for _ in range(50):
        obs, _, term, trunc, info = env.step(hold)
    assert not info["is_success"]
    assert np.allclose(obs["object_pose"][:2], env.unwrapped.sim.observe()["object_pose"][:2])


def test_render_rgb_array():
    env = gym.make("robot_imitation/Reach-v0", render_mode="rgb_array", width=96, height=64)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (64, 96, 3) and frame.dtype == np.uint8
    assert frame.std() > 5  # not a blank image
    env.close()


def test_invalid_action_is_refused():
    env = gym.make("robot_imitation/Reach-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.full(8, np.nan))
    with pytest.raises(ValueError, match="8 finite"):
        env.step(np.zeros(3))


def test_unknown_task_and_robot_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown task 'nope'.*reach"):
        TaskConfig.load("nope")
    with pytest.raises(ModelError, match="unknown robot"):
        RobotConfig.load("nope")
    bad = tmp_path / "robot.yaml"
    bad.write_text("name: x\nsource: mjcf\nmjcf: ${NO_SUCH_VARIABLE_X}/panda.xml\n")
    with pytest.raises(ModelError, match="NO_SUCH_VARIABLE_X"):
        TaskSim("reach", str(bad))


def test_menagerie_robot_needs_root(monkeypatch):
    monkeypatch.delenv("MENAGERIE_ROOT", raising=False)
    with pytest.raises(ModelError, match="MENAGERIE_ROOT"):
        TaskSim("reach", "panda_menagerie")


SIMPLE_ARM = """
<mujoco model="two_link">
  <compiler angle="radian"/>
  <option timestep="0.001"/>
  <worldbody>
    <body name="l1" pos="0 0 0.1">
      <joint name="shoulder" type="hinge" axis="0 0 1" range="-2 2" damping="1"/>
      <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.02"/>
      <body name="l2" pos="0.3 0 0">
        <joint name="elbow" type="hinge" axis="0 0 1" range="-2 2" damping="1"/>
        <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.02"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <position name="shoulder_servo" joint="shoulder" kp="50"/>
    <position name="elbow_servo" joint="elbow" kp="50"/>
  </actuator>
</mujoco>
"""


def test_any_mjcf_by_path(tmp_path):
    path = tmp_path / "arm.xml"
    path.write_text(SIMPLE_ARM)
    sim = TaskSim(TaskConfig.for_model(str(path)), str(path))
    assert sim.robot.joint_names == ["shoulder", "elbow"]
    assert not sim.has_ee
    sim.reset(0)
    sim.step(np.array([0.5, -0.5, 0.0]))
    for _ in range(50):
        sim.step(np.array([0.5, -0.5, 0.0]))
    np.testing.assert_allclose(sim.observe()["joint_pos"], [0.5, -0.5], atol=0.02)


NO_EGL = '''
import ctypes

_CDLL = ctypes.CDLL


class _NoEgl(_CDLL):
    """ctypes without EGL: a machine with no GL libraries (a bare training server)."""

    def __init__(self, name, *args, **kwargs):
        if name and "EGL" in str(name):
            raise OSError(f"{name}: cannot open shared object file: No such file or directory")
        super().__init__(name, *args, **kwargs)


ctypes.CDLL = _NoEgl
ctypes.cdll = ctypes.LibraryLoader(_NoEgl)
'''


def test_the_simulation_imports_where_no_egl_library_is_installed(tmp_path):
    """Where no EGL library loads, ``MUJOCO_GL=egl`` makes ``import mujoco`` itself fail, also
    for simulation that renders nothing; the suite sets that default only where EGL loads
    (``paths.default_mujoco_gl``), and MuJoCo then imports and steps. A user's own setting is
    kept."""
    import os
    import subprocess
    import sys

    from robot_imitation.paths import default_mujoco_gl

    (tmp_path / "sitecustomize.py").write_text(NO_EGL)
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    code = ("import os\nfrom robot_imitation.sim.env import ImitationEnv\n"
            "env = ImitationEnv('reach')\nobs, _ = env.reset(seed=0)\n"
            "env.step(env.action_space.sample())\n"
            "print('MUJOCO_GL', os.environ.get('MUJOCO_GL'))\n")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and "MUJOCO_GL None" in run.stdout, run.stderr[-3000:]
    forced = subprocess.run([sys.executable, "-c", code], env=dict(env, MUJOCO_GL="egl"),
                            capture_output=True, text=True, timeout=120)
    assert forced.returncode != 0  # the failure the default avoids
    assert "MUJOCO_GL egl" in subprocess.run(
        [sys.executable, "-c", "import os, robot_imitation.sim\n"
         "print('MUJOCO_GL', os.environ.get('MUJOCO_GL'))"],
        env={k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}, capture_output=True,
        text=True, timeout=120).stdout  # EGL here: the default is egl

    def refuse(name):
        raise OSError(name)

    assert default_mujoco_gl(load=refuse) is None
    assert default_mujoco_gl(load=lambda name: None) == "egl"
