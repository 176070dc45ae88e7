"""Task and robot files: every key checked when the file is loaded, refused in one line naming
the file, the key and the value (a bad value crashed with a traceback later, at the first
step, or was taken silently); paths inside a file read from its folder; a path given as a
task never looked up among the built-in tasks."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import wait_for
from robot_imitation.paths import config_dir
from robot_imitation.sim.robot import ModelError, RobotConfig
from robot_imitation.sim.tasks import TaskConfig, TaskSim
from robot_imitation.spec import Spec

REACH = yaml.safe_load((config_dir() / "tasks" / "reach.yaml").read_text())
PANDA = yaml.safe_load((config_dir() / "robots" / "panda.yaml").read_text())
NAN, INF = math.nan, math.inf


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def task_file(tmp_path, change: dict = (), drop: tuple = (), name="task.yaml") -> Path:
    data = {k: v for k, v in REACH.items() if k not in drop}
    data.update(change)
    return write(tmp_path / name, data)


def robot_file(tmp_path, change: dict = (), name="robot.yaml") -> Path:
    return write(tmp_path / name, {**PANDA, **dict(change)})


def refused(path: Path, *words, start=None) -> str:
    """The one-line ModelError loading the task file ``path`` (its robot too) raises; it
    starts with ``start`` (by default the folder of the file: ``path`` or its robot file) and
    holds ``words``."""
    with pytest.raises(ModelError) as error:
        TaskSim(TaskConfig.load(path))
    text = str(error.value)
    assert "\n" not in text and text.startswith(start or str(path.parent)), text
    for word in words:
        assert word in text, (word, text)
    return text


# --------------------------------------------------------------------------- task files
BAD_TASKS = [  # (change, words the line holds); each crashed with a traceback or ran
    ({"control_rate": "fast"}, ("control_rate", "'fast'")),       # TypeError
    ({"control_rate": 0}, ("control_rate", "> 0", "got 0")),      # ZeroDivisionError
    ({"control_rate": NAN}, ("control_rate", "nan")),             # ValueError (round)
    ({"control_rate": True}, ("control_rate", "True")),           # ran at 1 Hz
    ({"control_rate": 33}, ("control_rate", "33", "physics_timestep")),
    ({"physics_timestep": 0}, ("physics_timestep", "got 0")),     # ZeroDivisionError
    ({"max_steps": "ten"}, ("max_steps", "'ten'")),               # TypeError at the end
    ({"max_steps": 0}, ("max_steps", ">= 1", "got 0")),           # 1-tick episodes
    ({"max_steps": -5}, ("max_steps", "got -5")),
    ({"max_steps": 10.7}, ("max_steps", "whole number", "10.7")),  # 11 ticks
    ({"max_steps": NAN}, ("max_steps", "nan")),                   # episodes never ended
    ({"max_steps": INF}, ("max_steps", "inf")),
    ({"name": 5}, ("name", "got 5")),                             # AttributeError
    ({"name": "pick"}, ("name", "'pick'", "reach")),
    ({"robot": 5}, ("robot", "got 5")),                           # TypeError
    ({"robot": "pandaa"}, ("robot", "'pandaa'", "panda")),
    ({"success_threshold": "0.02"}, ("success_threshold", "'0.02'")),  # TypeError at a step
    ({"success_threshold": -1}, ("success_threshold", "> 0", "-1")),  # never succeeded
    ({"success_threshold": NAN}, ("success_threshold", "nan")),
    ({"target_low": [0.9, -0.3, 0.1]}, ("target_low[0]", "0.9", "target_high[0]", "0.65")),
    ({"target_low": [0.3, -0.3]}, ("target_low", "3 numbers", "[0.3, -0.3]")),
    ({"target_high": "abc"}, ("target_high", "'abc'")),
    ({"gripper_init": 2.0}, ("gripper_init", "[0, 1]", "2.0")),   # clipped
    ({"gripper_init": NAN}, ("gripper_init", "nan")),
    ({"init_joint_noise": -1}, ("init_joint_noise", ">= 0", "-1")),
    ({"init_joint_noise": NAN}, ("init_joint_noise", "nan")),     # NaN actions at reset
    ({"cameras": ["front"]}, ("cameras", "mapping", "['front']")),  # AttributeError
    ({"cameras": {"front": {"pos": [1, 0, 1]}}}, ("cameras.front", "look_at")),  # KeyError
    ({"cameras": {"front": {"pos": [1, 0, 1], "look_at": [1, 0, 1]}}},  # black frames
     ("cameras.front.look_at", "[1.0, 0.0, 1.0]")),
    ({"cameras": {"front": {"pos": [1, 0, 1], "look_at": [0, 0, 0], "fov": 50}}},  # ignored
     ("'fov'", "cameras.front", "did you mean 'fovy'")),
    ({"cameras": {"front": {"pos": [1, 0, 1], "look_at": [0, 0, 0], "fovy": 0}}},
     ("cameras.front.fovy", "got 0")),
    ({"control_rat": 5}, ("'control_rat'", "did you mean 'control_rate'")),  # ignored
    ({"max_step": 40}, ("'max_step'", "did you mean 'max_steps'")),
    ({"puck_radius": 0.03}, ("'puck_radius'",)),                  # another task's key
]


@pytest.mark.parametrize("change,words", BAD_TASKS, ids=[str(c) for c, _ in BAD_TASKS])
def test_a_bad_task_value_is_refused_at_load_naming_file_key_and_value(tmp_path, change,
                                                                       words):
    refused(task_file(tmp_path, change), *words)


@pytest.mark.parametrize("drop,misspelled", [("success_threshold", None),
                                             ("success_threshold", "succes_threshold"),
                                             ("target_high", None)])
def test_a_parameter_the_task_logic_needs_is_refused_when_missing(tmp_path, drop, misspelled):
    """A missing or misspelled success_threshold loaded, then the first step died on
    KeyError: 'success_threshold' (through ROS, the bridge died naming neither file nor
    key)."""
    change = {misspelled: REACH[drop]} if misspelled else {}
    path = task_file(tmp_path, change, drop=(drop,))
    if misspelled:
        refused(path, f"'{misspelled}'", f"did you mean '{drop}'")
    else:
        refused(path, drop, "missing", "reach")


def test_push_tasks_check_their_own_parameters(tmp_path):
    push = yaml.safe_load((config_dir() / "tasks" / "push_obstacle.yaml").read_text())
    for key, value, words in (("goal_distance", [0.3, 0.1], ("goal_distance", "[0.3, 0.1]")),
                              ("puck_low", [0.9, 0.0], ("puck_low[0]", "puck_high[0]")),
                              ("turn_gap", -0.1, ("turn_gap", "-0.1")),
                              ("obstacle_half_length", 0, ("obstacle_half_length", "got 0"))):
        refused(write(tmp_path / "push.yaml", {**push, key: value}), *words)
    del push["side_threshold"]  # read by the scripted expert
    refused(write(tmp_path / "push.yaml", push), "side_threshold", "missing")
    del push["goal_direction"]  # optional
    assert TaskConfig.load(write(tmp_path / "push.yaml", {**push, "side_threshold": 0.03})
                           ).params["goal_direction"] == [-180.0, 180.0]
    for name in ("reach", "push", "push_obstacle"):  # the built-in tasks load as they are
        cfg = TaskConfig.load(name)
        data = yaml.safe_load((config_dir() / "tasks" / f"{name}.yaml").read_text())
        assert cfg.robot == "panda" and cfg.max_steps == data["max_steps"]
        assert cfg.params == {k: v for k, v in data.items() if k in cfg.params}
        assert set(cfg.cameras) == set(data["cameras"])


@pytest.mark.parametrize("change,key", [({"success_threshold": None}, "success_threshold"),
                                        ({"control_rat": 5}, "control_rat"),
                                        ({"max_steps": NAN}, "max_steps")])
def test_the_cli_refuses_a_bad_task_file_in_one_line(tmp_path, change, key):
    path = task_file(tmp_path, {k: v for k, v in change.items() if v is not None},
                     drop=tuple(k for k, v in change.items() if v is None))
    line = expert_refusal(path)
    assert line.startswith(f"robot-imitation expert: {path}: ") and key in line, line


def expert_refusal(task) -> str:
    """The one line `robot-imitation expert --task TASK` refuses ``task`` with (exit 1)."""
    proc = subprocess.run([sys.executable, "-m", "robot_imitation.cli", "expert", "--task",
                           str(task), "--episodes", "1"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, (proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.ros
@pytest.mark.parametrize("node", ["mujoco_bridge", "scripted_expert"])
def test_a_node_refuses_a_bad_task_file_at_start_in_one_line(tmp_path, procs, node):
    """The bridge started, then died at the first step on KeyError: 'success_threshold'."""
    path = task_file(tmp_path, drop=("success_threshold",))
    proc = procs.start_node(node, params={"task": str(path)})
    wait_for(lambda: proc.poll() is not None, 60, f"{node} to refuse its start")
    log = procs.log(node)
    assert proc.returncode == 1, log
    assert "Traceback" not in log, log
    fatal = [line for line in log.splitlines() if "fatal" in line.lower()]
    assert len(fatal) == 1 and f"{path}: success_threshold is missing" in fatal[0], log


# --------------------------------------------------------------------------- robot files
BAD_ROBOTS = [
    ({"velocity_limits": [0.0] + PANDA["velocity_limits"][1:]},  # no limit downstream
     ("velocity_limits[0]", "panda_joint1", "> 0", "got 0.0")),
    ({"velocity_limits": PANDA["velocity_limits"][:6] + [-1.0]},
     ("velocity_limits[6]", "panda_joint7", "-1.0")),
    ({"velocity_limits": PANDA["velocity_limits"][:6] + [NAN]}, ("velocity_limits[6]", "nan")),
    ({"home": [NAN] + PANDA["home"][1:]}, ("home[0]", "panda_joint1", "nan")),  # NaN actions
    ({"home": PANDA["home"][:6]}, ("home", "7 numbers")),
    ({"ee_offset": [0.0, 0.0]}, ("ee_offset", "3 numbers", "[0.0, 0.0]")),  # pybind TypeError
    ({"gravity_compensation": "no"}, ("gravity_compensation", "'no'")),  # taken as true
    ({"name": 5}, ("name", "got 5")),
    ({"source": "gymnasium_robotic_panda"}, ("source", "did you mean")),
    ({"arm_joints": "panda_joint1"}, ("arm_joints", "'panda_joint1'")),
    ({"ee_sit": "end_effector"}, ("'ee_sit'", "did you mean 'ee_site'")),
]


@pytest.mark.parametrize("change,words", BAD_ROBOTS, ids=[str(c)[:60] for c, _ in BAD_ROBOTS])
def test_a_bad_robot_value_is_refused_naming_file_key_and_value(tmp_path, change, words):
    robot = robot_file(tmp_path, change)
    text = refused(task_file(tmp_path, {"robot": str(robot)}), *words)
    assert text.startswith(f"{robot}: "), text


ARM = """<mujoco model="arm">
  <compiler angle="radian"/>
  <option timestep="0.002"/>
  <worldbody>
    <body name="base" pos="0 0 0.1">
      <joint name="j1" axis="0 0 1" range="-3 3" limited="true"/>
      <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.03"/>
      <body name="l2" pos="0.3 0 0">
        <joint name="j2" axis="0 1 0" range="-2 2" limited="true"/>
        <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.03"/>
        <site name="tip" pos="0.3 0 0"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <position name="a1" joint="j1" kp="50"/>
    <position name="a2" joint="j2" kp="50"/>
  </actuator>
</mujoco>
"""
ARM_ROBOT = {"name": "arm", "source": "mjcf", "mjcf": "arm.xml", "arm_joints": ["j1", "j2"],
             "arm_actuators": ["a1", "a2"], "ee_site": "tip", "home": [0.0, 0.5],
             "velocity_limits": [1.0, 1.0], "gravity_compensation": False}


def test_a_broken_mjcf_is_refused_naming_it(tmp_path):
    (tmp_path / "arm.xml").write_text("<mujoco><worldbody>")
    robot = write(tmp_path / "robot.yaml", {**ARM_ROBOT, "mjcf": str(tmp_path / "arm.xml")})
    refused(task_file(tmp_path, {"robot": str(robot)}), f"{tmp_path / 'arm.xml'}",
            "cannot load MJCF", "XML", start="robot 'arm': ")


def test_a_home_outside_its_joints_range_is_refused(tmp_path):
    """A home out of a joint's range was clipped without a word."""
    (tmp_path / "arm.xml").write_text(ARM)
    robot = write(tmp_path / "robot.yaml", {**ARM_ROBOT, "mjcf": str(tmp_path / "arm.xml"),
                                            "home": [0.0, 2.5]})
    refused(task_file(tmp_path, {"robot": str(robot)}), "home 2.5", "'j2'", "[-2, 2]",
            start="robot 'arm': ")


# --------------------------------------------------------------------------- paths
def test_relative_paths_in_a_file_are_read_from_its_folder(tmp_path, monkeypatch):
    """`robot: robot.yaml` in a task file and `mjcf: arm.xml` in a robot file were read from
    the current folder."""
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "arm.xml").write_text(ARM)
    write(folder / "robot.yaml", ARM_ROBOT)
    path = task_file(folder, {"robot": "robot.yaml", "target_low": [0.1, -0.3, 0.05],
                              "target_high": [0.5, 0.3, 0.2]})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    sim = TaskSim(f"../files/{path.name}")
    assert sim.robot_cfg.name == "arm"
    assert Path(sim.robot_cfg.mjcf) == folder / "arm.xml"
    assert sim.robot.n_arm == 2 and list(sim.robot.home) == [0.0, 0.5]
    assert TaskConfig.load("reach").robot == "panda"  # a bare name: a built-in robot


def test_a_task_given_by_path_is_never_a_built_in(tmp_path, monkeypatch):
    """`--task ../specs/reach` loaded config/specs/reach.yaml as a task, and `--task ./reach`
    ran the built-in reach, though a path was given."""
    monkeypatch.chdir(config_dir() / "tasks")
    with pytest.raises(ModelError, match=r"unknown task '\.\./specs/reach' \(no file "):
        TaskConfig.load("../specs/reach")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match=rf"no file {tmp_path / 'reach'}\)"):
        TaskConfig.load("./reach")
    task_file(tmp_path, name="reach.yaml")
    assert TaskConfig.load("./reach.yaml").name == "reach"
    assert TaskConfig.load("reach").max_steps == REACH["max_steps"]
    # specs and robots follow the same rule
    assert Spec.load("reach").name == "reach"
    with pytest.raises(Exception, match="unknown spec './reach'"):
        Spec.load("./reach")
    assert RobotConfig.load("panda").name == "panda"
