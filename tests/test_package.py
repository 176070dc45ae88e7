"""The ROS 2 package itself: manifest, entry points, launch files and parameter files agree."""
import ast
import importlib
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "robot_imitation"


def console_scripts() -> dict:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    entries = [ast.literal_eval(e) for e in value.elts]
                    return dict(e.split(" = ") for e in entries)
    raise AssertionError("setup.py declares no console_scripts")


def manifest_dependencies() -> set:
    root = ET.parse(ROOT / "package.xml").getroot()
    return {e.text for tag in ("depend", "exec_depend") for e in root.iter(tag)}


def test_package_xml_format_3_declares_every_ros_import():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "robot_imitation"
    assert root.find("export/build_type").text == "ament_python"
    declared = {e.text for tag in ("depend", "exec_depend") for e in root.iter(tag)}
    imported = set()
    for path in SRC.rglob("*.py"):
        for mod in re.findall(r"^\s*(?:from|import) (\w+)", path.read_text(), re.M):
            if mod.endswith(("_msgs", "_srvs", "_interfaces")) or mod in (
                    "rclpy", "ament_index_python"):
                imported.add(mod)
    assert imported, "no ROS imports found"
    assert imported <= declared, f"imported but not in package.xml: {imported - declared}"
    for key in ("python3-numpy", "python3-yaml", "python3-mujoco-pip"):
        assert key in declared
    rules = yaml.safe_load((ROOT / "rosdep" / "robot_imitation.yaml").read_text())
    assert {k for k in declared if k.endswith("-pip")} <= set(rules)


def test_ament_resource_marker_and_data_files():
    assert (ROOT / "resource" / "robot_imitation").is_file()
    text = (ROOT / "setup.py").read_text()
    for needle in ("share/ament_index/resource_index/packages", '_tree("launch")',
                   '_tree("config")', "package.xml"):
        assert needle in text


def test_console_scripts_resolve_to_callables():
    scripts = console_scripts()
    assert {"mujoco_bridge", "scripted_expert", "robot-imitation"} <= set(scripts)
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
    # each runs its module's main() through robot_imitation_entry (one line on an early Ctrl-C)
    from robot_imitation_entry import EXECUTABLES

    assert {name: f"robot_imitation_entry:{name.replace('-', '_')}" for name in EXECUTABLES} \
        == scripts
    for module in EXECUTABLES.values():
        assert callable(importlib.import_module(module).main), module


# config section (node name) -> the node class whose PARAMETERS declare its parameters
NODE_CLASSES = {"mujoco_bridge": "bridge_node.MujocoBridge",
                "scripted_expert": "expert_node.ScriptedExpert",
                "episode_recorder": "recorder_node.EpisodeRecorder",
                "joy_teleop": "joy_teleop_node.JoyTeleop",
                # the keyboard teleop's table adds its own to TeleopNode's shared parameters
                "keyboard_teleop": "keyboard_teleop_node.KeyboardTeleop",
                "trainer": "trainer_node.TrainerNode",
                "dagger": "dagger_node.DaggerNode",
                "policy_node": "policy_node.PolicyNode",
                "command_mux": "command_mux_node.CommandMux",
                "scripted_supervisor": "supervisor_node.ScriptedSupervisor"}


def declared_parameters(node: str) -> dict:
    """{name: Param} of a node's table, with rclpy's own ``use_sim_time``."""
    from robot_imitation.nodes.common import Param

    module, cls = NODE_CLASSES[node].split(".")
    table = getattr(importlib.import_module(f"robot_imitation.nodes.{module}"), cls).PARAMETERS
    return {"use_sim_time": Param("use_sim_time", False, ""), **{p.name: p for p in table}}


def value_problem(param, value) -> str | None:
    """Why a parameter file's ``value`` cannot set ``param``, or None: its type must be the
    declared one (rcl takes 1 for an integer, not for a double; an empty list has no type, so
    the files write [""]), then its range and choices."""
    from rclpy.parameter import Parameter

    if value == []:
        return f"{param.name}: an empty list has no type in a parameter file"
    declared = param.default if isinstance(param.default, Parameter.Type) else \
        Parameter.Type.from_parameter_value(param.default)
    try:
        given = Parameter.Type.from_parameter_value(value)
    except TypeError:  # e.g. a list of mixed types
        given = None
    if given != declared:
        return (f"{param.name}: {value!r} is not of the declared type {declared.name.lower()} "
                f"(default {param.default!r})")
    low, high = param.min_value, param.max_value
    if (low is not None and value < low) or (high is not None and value > high):
        return f"{param.name}: {value!r} is outside {low}..{high}"
    return param.problem(value)


def test_value_problem_checks_type_range_and_choices():
    from robot_imitation.nodes.common import Param

    rate = Param("rate", 1.0, "", min_value=0.5, max_value=2.0)
    assert value_problem(rate, 1.5) is None
    assert "not of the declared type double" in value_problem(rate, 1)
    assert "outside 0.5..2.0" in value_problem(rate, 3.0)
    mode = Param("mode", "a", "", choices=("a", "b"))
    assert value_problem(mode, "b") is None
    assert "must be one of a, b" in value_problem(mode, "c")
    hidden = Param("hidden", [256, 256], "")
    assert value_problem(hidden, [64]) is None
    assert "empty list" in value_problem(hidden, [])
    assert "not of the declared type integer_array" in value_problem(hidden, [64.0])
    assert "type integer_array" in value_problem(hidden, [64, 1.0])
    assert "type bool" in value_problem(Param("flag", False, ""), "false")


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_parameter_files_name_declared_parameters(path):
    """Every parameter a config file sets is in its node's table, with a value of the declared
    type, in its range and among its choices."""
    data = yaml.safe_load(path.read_text())
    for node, body in data.items():
        assert set(body) == {"ros__parameters"}, f"{path.name}: {node} needs ros__parameters"
        assert node in NODE_CLASSES, f"{path.name}: no node is named {node}"
        declared = declared_parameters(node)
        unknown = set(body["ros__parameters"]) - set(declared)
        assert not unknown, f"{path.name}: {node} does not declare {sorted(unknown)}"
        for name, value in body["ros__parameters"].items():
            problem = value_problem(declared[name], value)
            assert problem is None, f"{path.name}: {node}: {problem}"


# The values a config file sets otherwise than its node's default, each on purpose: a node
# started with the file (a launch file) must behave as the node started without it (`evaluate
# --ros`, `ros2 run`) but for these.
FILE_OVER_DEFAULT = {
    ("recorder.yaml", "episode_recorder", "spec"): "push",   # the default task's
    ("recorder.yaml", "episode_recorder", "task"): "push",
}


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_parameter_files_keep_the_nodes_defaults_but_where_listed(path):
    """A config file that sets a parameter to another value than the node's declared default
    changes what a launched node does without a word (`policy.yaml` kept `chunk_mode: first`
    after the node's default became the family's own: launched act and diffusion policies ran
    otherwise than `evaluate` ran them). The deliberate ones are listed above."""
    from rclpy.parameter import Parameter

    data = yaml.safe_load(path.read_text())
    for node, body in data.items():
        declared = declared_parameters(node)
        for name, value in body["ros__parameters"].items():
            default = declared[name].default
            if isinstance(default, Parameter.Type):
                continue   # declared by type only (no default to keep)
            wanted = FILE_OVER_DEFAULT.get((path.name, node, name), default)
            assert value == wanted, (f"{path.name}: {node}.{name} is {value!r}, the node's "
                                     f"default {default!r}")


LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))


def launch_arguments(path) -> dict:
    """{name: (default or None, choices or None)} of a launch file's DeclareLaunchArgument calls."""
    args = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "DeclareLaunchArgument":
            kw = {k.arg: k.value for k in node.keywords}
            default = kw.get("default_value")
            args[ast.literal_eval(node.args[0])] = (
                ast.literal_eval(default) if isinstance(default, ast.Constant) else None,
                ast.literal_eval(kw["choices"]) if "choices" in kw else None)
    return args


def load_launch_file(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launched_nodes(path: Path, given: dict, context):
    """The ``launch_ros`` Node actions of a launch file's description once its arguments are
    ``given`` (the others at their defaults), each with its substitutions performed."""
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    context.launch_configurations.update(given)
    nodes = []
    for entity in load_launch_file(path).generate_launch_description().entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.execute(context)
        elif isinstance(entity, OpaqueFunction):
            nodes += entity.execute(context)
    for node in nodes:
        node._perform_substitutions(context)
    return nodes


def launch_graphs(path, **given) -> list:
    """A launch file that builds its nodes from ``robot_imitation.ros.graphs`` (a ``nodes(arg,
    value)`` function; importable without the launch system): [(argument values, the
    declarations it starts, the arguments it reads)] for each combination of the choices of its
    arguments. An argument is its ``given`` value, else its default, else ``<name>``; asking
    for an argument the file does not declare fails. [] for a file with Node actions only."""
    if not any(isinstance(n, ast.FunctionDef) and n.name == "nodes"
               for n in ast.parse(path.read_text()).body):
        return []
    module = load_launch_file(path)
    declared = launch_arguments(path)
    import itertools

    names = [n for n, (_, choices) in declared.items() if choices and n not in given]
    runs = []
    for combo in itertools.product(*(declared[n][1] for n in names)):
        values = {n: given.get(n, d if d is not None else f"<{n}>")
                  for n, (d, _) in declared.items()}
        values.update(zip(names, combo))
        read = set()

        def value(name):
            assert name in declared, f"{path.name} reads the undeclared launch argument {name}"
            read.add(name)
            return values[name]

        runs.append((values, module.nodes(value, value), read))
    return runs


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_references_exist(path):
    """Node actions written in the file, or the declarations of ``robot_imitation.ros.graphs`` it
    starts (under each choice of its arguments): existing executables, parameter files and
    declared arguments."""
    tree = ast.parse(path.read_text())
    scripts = console_scripts()
    declared_args, used_args, executables, files = set(launch_arguments(path)), set(), set(), set()
    packages = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            first = node.args[0] if node.args else None
            name = first.value if isinstance(first, ast.Constant) else None
            if node.func.id == "LaunchConfiguration":
                used_args.add(name)
            elif node.func.id == "Node":
                kw = {k.arg: k.value for k in node.keywords}
                package = ast.literal_eval(kw["package"])
                if package == "robot_imitation":
                    executables.add(ast.literal_eval(kw["executable"]))
                else:
                    packages.add(package)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.endswith(".yaml"):
            files.add(node.value)
    for _, nodes, read in launch_graphs(path):
        used_args |= read
        for decl in nodes:
            if decl.package == "robot_imitation":
                executables.add(decl.executable)
            else:
                packages.add(decl.package)
            if decl.params_file:
                files.add(decl.params_file)
    for package in packages:
        assert package in manifest_dependencies(), \
            f"{path.name} starts a node of {package}, not declared in package.xml"
    assert executables and executables <= set(scripts), executables - set(scripts)
    assert used_args <= declared_args, f"undeclared launch arguments {used_args - declared_args}"
    for f in files:
        assert (ROOT / "config" / f).is_file(), f"{path.name} refers to missing config/{f}"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_description_builds(path):
    pytest.importorskip("launch_ros", reason="the ROS 2 launch system is not installed here "
                        "(it is not on PyPI); the static check above still ran")
    description = load_launch_file(path).generate_launch_description()
    assert description.entities


# ----------------------------------------------------------------- the venv as an ament prefix
# scripts/bootstrap.sh (make setup / test / demo) installs the package editable into the venv
# and registers it in the venv's ament index (scripts/ament_register.py): with the venv in
# AMENT_PREFIX_PATH, `ros2 run` and `ros2 launch` of a ROS 2 install find it.
PREFIX = Path(sys.prefix)
NOT_SET_UP = "the venv is not an ament prefix for robot_imitation: run scripts/bootstrap.sh"


def test_the_venv_is_an_ament_prefix_for_the_package(monkeypatch):
    from ament_index_python.packages import get_package_prefix, get_package_share_directory

    monkeypatch.setenv("AMENT_PREFIX_PATH", str(PREFIX))
    assert get_package_prefix("robot_imitation") == str(PREFIX), NOT_SET_UP
    share = Path(get_package_share_directory("robot_imitation"))
    assert share == PREFIX / "share" / "robot_imitation"
    assert ET.parse(share / "package.xml").getroot().findtext("name") == "robot_imitation"
    assert sorted(p.name for p in (share / "launch").glob("*.launch.py")) == \
        sorted(p.name for p in LAUNCH_FILES)
    assert (share / "config" / "bridge.yaml").is_file()
    assert (share / "config" / "tasks" / "push.yaml").is_file()
    # Editable: the share files are the checkout's own, so edits to launch/ and config/ show.
    for name in ("package.xml", "config"):
        assert (share / name).resolve() == (ROOT / name).resolve(), name
    for path in LAUNCH_FILES:
        assert (share / "launch" / path.name).resolve() == path.resolve(), path.name
    # `ros2 launch robot_imitation <file>` finds a launch file by walking the share folder
    # without following linked folders (ros2launch's get_share_file_path_from_package): with
    # the launch folder linked whole, none was found ("file ... was not found in the share
    # directory"). That walk, where ros2launch is not installed:
    found = {name for _, _, files in os.walk(share) for name in files}
    assert {p.name for p in LAUNCH_FILES} <= found, sorted(found)
    try:
        from ros2launch.api import get_share_file_path_from_package
    except ImportError:
        return
    for path in LAUNCH_FILES:
        assert Path(get_share_file_path_from_package(
            package_name="robot_imitation", file_name=path.name)).resolve() == path.resolve()


@pytest.mark.parametrize("name", sorted(console_scripts()))
def test_each_console_script_is_an_executable_in_lib(name):
    """`ros2 run robot_imitation <name>` and launch files look in <prefix>/lib/robot_imitation."""
    path = PREFIX / "lib" / "robot_imitation" / name
    assert path.is_file(), NOT_SET_UP
    assert os.access(path, os.X_OK)
    shebang, *body = path.read_text().splitlines()
    python = Path(shebang[2:])  # the venv's interpreter (bin/python links to the base one)
    assert shebang.startswith("#!") and python.name == "python"
    assert python.parent.resolve() == (PREFIX / "bin").resolve()
    module, func = console_scripts()[name].split(":")
    assert f"from {module} import {func}" in body and f"    sys.exit({func}())" in body


def test_an_executable_in_lib_runs_outside_the_checkout(tmp_path):
    env = dict(os.environ, AMENT_PREFIX_PATH=str(PREFIX))
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(PREFIX / "lib" / "robot_imitation" / "robot-imitation"), "tasks"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "push" in proc.stdout and "reach" in proc.stdout


def test_ros_environment_uses_the_running_interpreters_prefix(tmp_path):
    """The venv of the running interpreter, not the shell's VIRTUAL_ENV (another venv when a
    launch file starts lib/robot_imitation/<exe> from a shell with some venv activated)."""
    env = dict(os.environ, VIRTUAL_ENV=str(tmp_path))
    env.pop("AMENT_PREFIX_PATH", None)
    code = ("import os; from robot_imitation.paths import ensure_ros_environment; "
            "ensure_ros_environment(); print(os.environ.get('AMENT_PREFIX_PATH'))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(PREFIX)]


def test_the_dds_profile_is_the_suites_unless_the_user_chose_one(monkeypatch, tmp_path):
    from robot_imitation.paths import DDS_PROFILES, dds_profile, suite_dds_profile

    def service_wait(path):  # the response writers' max_blocking_time, in s
        root = ET.parse(path).getroot()  # a well-formed Fast DDS profile
        writers = [e for e in root.iter() if e.tag.endswith("data_writer")
                   and e.get("profile_name") == "service"]
        assert len(writers) == 1, path
        sec = [e for e in writers[0].iter() if e.tag.endswith("max_blocking_time")][0]
        return sum(float(e.text) * (1e-9 if e.tag.endswith("nanosec") else 1)
                   for e in sec if e.tag.endswith("sec"))

    services, large = (suite_dds_profile(n) for n in DDS_PROFILES)
    root = ET.parse(large).getroot()  # the larger shared-memory segment
    sizes = [int(e.text) for e in root.iter() if e.tag.endswith("segment_size")]
    assert sizes and min(sizes) >= 4 << 20
    assert service_wait(services) == service_wait(large) == 5.0  # not Fast DDS's 0.1 s
    # the default profile changes nothing but the service answers' wait
    assert [e.tag.split("}")[-1] for e in ET.parse(services).getroot().iter()
            if e.tag.split("}")[-1] in ("participant", "transport_descriptor", "topic")] == []
    for name in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE",
                 "ROBOT_IMITATION_DDS_PROFILE", "RMW_IMPLEMENTATION"):
        monkeypatch.delenv(name, raising=False)
    assert dds_profile() == services  # the default
    monkeypatch.setenv("ROBOT_IMITATION_DDS_PROFILE", "large_data")
    assert dds_profile() == large
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp")
    assert dds_profile() is None  # another middleware: nothing to set
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", str(tmp_path / "mine.xml"))
    assert dds_profile() is None  # the user's own profile wins
    monkeypatch.delenv("FASTDDS_DEFAULT_PROFILES_FILE")
    monkeypatch.setenv("ROBOT_IMITATION_DDS_PROFILE", "off")
    assert dds_profile() is None
    monkeypatch.setenv("ROBOT_IMITATION_DDS_PROFILE", str(tmp_path / "other.xml"))
    with pytest.raises(ValueError, match="other.xml: no such profile or file"):
        dds_profile()
    (tmp_path / "other.xml").write_text(services.read_text())
    assert dds_profile() == tmp_path / "other.xml"


def test_a_dds_profile_that_is_not_there_ends_a_node_or_command_in_one_line(tmp_path):
    env = {**os.environ, "ROBOT_IMITATION_DDS_PROFILE": "large"}
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    proc = subprocess.run([sys.executable, "-m", "robot_imitation.nodes.recorder_node"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: ROBOT_IMITATION_DDS_PROFILE=large: no such profile or file (choose services, "
        "large_data, off or a Fast DDS profile file)"]
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written
    proc = subprocess.run([sys.executable, "-m", "robot_imitation.cli", "record", "--task",
                           "reach", "--episodes", "1", str(tmp_path / "ds")],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "robot-imitation record: ROBOT_IMITATION_DDS_PROFILE=large: no such profile or file "
        "(choose services, large_data, off or a Fast DDS profile file)"]
    assert list(tmp_path.iterdir()) == []


def test_the_entry_module_names_an_unknown_executable():
    """``python -m robot_imitation_entry <executable>`` (how the launcher starts a node): an
    unknown name is one line naming it, exit 1."""
    proc = subprocess.run([sys.executable, "-m", "robot_imitation_entry", "scripted_expurt"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("robot_imitation_entry: no executable 'scripted_expurt' (one "
                                  "of mujoco_bridge, scripted_expert, "), proc.stderr
    assert proc.stderr.count("\n") == 1
