"""`<node> --help`: each executable's parameters, from their one declaration (the node class's
``PARAMETERS``), printed without starting anything; values outside a parameter's choices (or
range) are refused at start and at run time."""
import importlib
import subprocess
import sys

import pytest

from robot_imitation.ros.launcher import NODE_MODULES

from conftest import wait_for

# executable -> the class whose PARAMETERS table it declares
NODE_CLASSES = {"mujoco_bridge": "MujocoBridge", "scripted_expert": "ScriptedExpert",
                "episode_runner": "EpisodeRunnerMain", "episode_recorder": "EpisodeRecorder",
                "joy_teleop": "JoyTeleop", "keyboard_teleop": "KeyboardTeleop",
                "trainer": "TrainerNode", "dagger_node": "DaggerNode",
                "policy_node": "PolicyNode", "command_mux": "CommandMux",
                "scripted_supervisor": "ScriptedSupervisor"}
# A generous bound: --help only imports the module. A node that starts instead spins until
# it is stopped, so this only tells "printed and exited" from "started".
EXIT_WITHIN = 120.0


def node_class(executable: str):
    return getattr(importlib.import_module(NODE_MODULES[executable]), NODE_CLASSES[executable])


def test_every_executable_has_a_parameter_table():
    assert set(NODE_CLASSES) == set(NODE_MODULES)
    for executable in NODE_MODULES:
        names = [p.name for p in node_class(executable).PARAMETERS]
        assert names and len(names) == len(set(names)), (executable, names)


def test_an_array_value_is_refused_as_a_list():
    """rclpy hands an integer array parameter over as array('q', [...]): the refusal showed
    `hidden=array('q', [0])`."""
    import array

    hidden = next(p for p in node_class("trainer").PARAMETERS if p.name == "hidden")
    assert hidden.problem(array.array("q", [0])) == \
        "parameter hidden=[0]: must be a non-empty list of positive integers"
    assert hidden.problem(array.array("q", [64, 64])) is None


def test_an_open_ended_integer_range_is_the_types_own():
    """`--help` says `range 1..inf` for the trainer's steps, but rcl refused anything above
    2147483647: the descriptor closed an open end at int32's bound."""
    steps = next(p for p in node_class("trainer").PARAMETERS if p.name == "steps")
    assert "range 1..inf" in steps.help()
    (bounds,) = steps.descriptor().integer_range
    assert (bounds.from_value, bounds.to_value) == (1, 2**63 - 1)


@pytest.mark.parametrize("executable", sorted(NODE_MODULES))
def test_help_prints_the_parameters_and_starts_nothing(executable, tmp_path):
    """Exit 0 at once with every parameter of the table (name, type, default, flags,
    description), in order; nothing created in the working directory (the recorder, started,
    makes its dataset folder there)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    try:
        res = subprocess.run([sys.executable, "-m", NODE_MODULES[executable], "--help"],
                             cwd=cwd, capture_output=True, text=True, timeout=EXIT_WITHIN)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{executable} --help did not exit: it started the node\n"
                    f"{exc.stdout or ''}{exc.stderr or ''}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert not list(cwd.iterdir()), f"{executable} --help created {list(cwd.iterdir())}"
    assert "Traceback" not in res.stderr, res.stderr
    cls = node_class(executable)
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"{cls.NODE_NAME}: "), lines[0]
    listed = [line.split()[0] for line in lines[lines.index("parameters:") + 1:]
              if line.startswith("  ") and not line.startswith("   ")]
    assert listed == [p.name for p in cls.PARAMETERS], res.stdout
    for p in cls.PARAMETERS:
        assert p.help() in res.stdout, p.help()


def test_help_short_flag_and_ros_args_after_it(tmp_path):
    """-h works too, and so does --help with ROS arguments after it (the defaults listed are
    the table's, not the command line's)."""
    cmd = [sys.executable, "-m", NODE_MODULES["episode_recorder"]]
    for args in (["-h"], ["--help", "--ros-args", "-p", "dataset:=somewhere"]):
        res = subprocess.run(cmd + args, cwd=tmp_path, capture_output=True, text=True,
                             timeout=EXIT_WITHIN)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "  dataset (string; default 'datasets/demos'; read-only)" in res.stdout
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("executable,value,says", [
    ("trainer", "head:=mlp",
     "parameter head='mlp': must be one of mse, gaussian, gmm, categorical"),
    ("episode_runner", "episodes:=0", "Parameter episodes out of range"),
    # a NaN scale was taken, and the first motion crashed the node in its timer callback
    ("joy_teleop", "scale_linear_x:=.nan", "Parameter scale_linear_x out of range"),
    ("joy_teleop", "axis_linear_x:=1000", "Parameter axis_linear_x out of range"),
    # taken before, at start or run time; the run it started failed a second later
    ("dagger_node", "policy:=bogus", "parameter policy='bogus': must be one of act, diffusion, "
     "mlp")])
@pytest.mark.ros
def test_a_start_value_outside_the_choices_or_range_is_one_line(executable, value, says,
                                                                 tmp_path):
    """A parameter file or -p value outside a parameter's choices or range stops the
    executable at start (exit 1) with one line naming the parameter and the value; no
    traceback."""
    res = subprocess.run([sys.executable, "-m", NODE_MODULES[executable], "--ros-args",
                          "-p", value], cwd=tmp_path, capture_output=True, text=True,
                         timeout=EXIT_WITHIN)
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "Traceback" not in out, out
    assert [line for line in out.splitlines() if says in line and "fatal" in line], out


@pytest.mark.parametrize("executable", ["scripted_expert", "episode_runner", "dagger_node"])
@pytest.mark.ros
def test_ros_arguments_rcl_refuses_are_one_line(executable, tmp_path):
    """A parameter file that is missing or not YAML, a -p rule rcl cannot parse, a trailing -p:
    rcl refuses them in rclpy.init (or, for the DAgger node, when its node is made), which
    printed a 20-line traceback. Now: exit 1, one fatal line naming what was refused."""
    not_yaml = tmp_path / "params.yaml"
    not_yaml.write_text("x: [\n", encoding="utf-8")
    cases = [(["--params-file", str(tmp_path / "missing.yaml")], "missing.yaml"),
             (["--params-file", str(not_yaml)], "params.yaml"),
             (["-p", "task:="], "'-p task:='"), (["-p"], "trailing -p")]
    for args, says in cases:
        res = subprocess.run([sys.executable, "-m", NODE_MODULES[executable], "--ros-args",
                              *args], cwd=tmp_path, capture_output=True, text=True,
                             timeout=EXIT_WITHIN)
        out = res.stdout + res.stderr
        assert res.returncode == 1, (args, out)
        assert "Traceback" not in out, (args, out)
        fatal = [line for line in out.splitlines() if "fatal" in line]
        assert len(fatal) == 1 and says in fatal[0] and ".c:" not in fatal[0], (args, out)


@pytest.mark.ros
def test_a_parameter_the_node_does_not_have_is_logged(procs):
    """ROS ignores a parameter a node does not declare, without a word: `-p state_rte:=5.0` (or
    the same typo in a parameter file) ran the bridge at the default state rate. Now each is
    logged with the nearest name the node has, and the node runs on (one file may serve
    several nodes)."""
    procs.start_node("mujoco_bridge", params={"task": "reach", "cameras": [""],
                                              "state_rte": 5.0, "zzz": 1})
    wait_for(lambda: "parameter 'zzz' given" in procs.log("mujoco_bridge"), 60,
             "the unknown parameters' warnings", procs=procs)
    log = procs.log("mujoco_bridge")
    assert "parameter 'state_rte' given, but this node has no such parameter: ignored (did you " \
           "mean 'state_rate'?)" in log, log
    assert "parameter 'zzz' given, but this node has no such parameter: ignored (see --help)" \
        in log, log
    assert "parameter 'task' given" not in log and "parameter 'use_sim_time'" not in log, log


@pytest.mark.ros
def test_run_time_values_outside_the_choices_are_refused(procs, probe, tmp_path):
    """`ros2 param set /trainer head mlp`: refused through the parameter service with the
    choices, and the value stays; a value among the choices is taken."""
    from rcl_interfaces.srv import GetParameters, SetParameters, SetParametersAtomically
    from rclpy.parameter import Parameter

    procs.start_node("trainer", params={"out": str(tmp_path / "runs")})
    # Every client made and matched first: a request sent right after its client is made may
    # find the server not yet matched to the client's response reader, and its answer is lost
    # (a CI run under load: set_parameters_atomically, made at its call, never answered).
    for srv, name in ((SetParameters, "set_parameters"), (GetParameters, "get_parameters"),
                      (SetParametersAtomically, "set_parameters_atomically")):
        wait_for(lambda: probe.caller.ready(srv, f"/trainer/{name}", 0.2), 60,
                 f"the trainer's {name} service", procs=procs)

    def get(name: str):
        req = GetParameters.Request(names=[name])
        return probe.call(GetParameters, "/trainer/get_parameters", req).values[0]

    req = SetParameters.Request(parameters=[Parameter("head", value="mlp").to_parameter_msg()])
    result = probe.call(SetParameters, "/trainer/set_parameters", req).results[0]
    assert not result.successful
    assert result.reason == "parameter head='mlp': must be one of mse, gaussian, gmm, categorical"
    assert get("head").string_value == "mse"

    # atomically with a good change: neither is taken
    steps = get("steps").integer_value
    req = SetParametersAtomically.Request(parameters=[
        Parameter("steps", value=steps + 1).to_parameter_msg(),
        Parameter("head", value="mlp").to_parameter_msg()])
    result = probe.call(SetParametersAtomically, "/trainer/set_parameters_atomically", req).result
    assert not result.successful and "must be one of" in result.reason
    assert get("head").string_value == "mse" and get("steps").integer_value == steps

    probe.set_params("trainer", head="gmm")
    assert get("head").string_value == "gmm"


@pytest.mark.ros
def test_a_whole_number_for_a_float_parameter_is_that_float(procs, probe, tmp_path):
    """`lr: 1` in the trainer's parameter file, `-p beta:=1` to the mux (as `dagger.launch.py
    variant:=mixture beta:=1` passes it), `-p max_delta:=[1]`: before, rcl refused each start
    ("InvalidParameterTypeException: Trying to set parameter 'lr' to '1' of type 'INTEGER',
    expecting type 'DOUBLE'", exit 1) while `train --lr 1` and `lr: 1` in `--config` took 1.0;
    now the node takes the float, as the command line does."""
    from rcl_interfaces.srv import GetParameters

    procs.start_node("trainer", params={"out": str(tmp_path / "runs"), "lr": 1})
    procs.start_node("command_mux", extra_args=["-p", "beta:=1", "-p", "mode:=mixture",
                                                "-p", "max_delta:=[1]"])

    def value(node, name):
        req = GetParameters.Request(names=[name])
        got = probe.call(GetParameters, f"/{node}/get_parameters", req, timeout=60).values[0]
        return got.double_value if got.type == 3 else list(got.double_array_value)

    for node in ("trainer", "command_mux"):
        wait_for(lambda: probe.caller.ready(GetParameters, f"/{node}/get_parameters", 0.2), 60,
                 f"the {node}'s parameter service", procs=procs)
    assert value("trainer", "lr") == 1.0
    assert value("command_mux", "beta") == 1.0
    assert value("command_mux", "max_delta") == [1.0]
    for node in ("trainer", "command_mux"):
        assert procs.procs[node].poll() is None, procs.log(node)
