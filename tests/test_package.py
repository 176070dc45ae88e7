"""The ROS 2 package itself: manifest, entry points, launch files and parameter files agree."""
import ast
import importlib
import re
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


def declared_parameters(module_file: Path) -> set:
    return set(re.findall(r'declare\(\s*(?:self|node), "(\w+)"', module_file.read_text()))


NODE_SOURCES = {"mujoco_bridge": [SRC / "nodes" / "bridge_node.py"],
                "scripted_expert": [SRC / "nodes" / "expert_node.py"],
                "episode_recorder": [SRC / "nodes" / "recorder_node.py"],
                "joy_teleop": [SRC / "nodes" / "joy_teleop_node.py"],
                "trainer": [SRC / "nodes" / "trainer_node.py"],
                "dagger": [SRC / "nodes" / "dagger_node.py"],
                "policy_node": [SRC / "nodes" / "policy_node.py"],
                "command_mux": [SRC / "nodes" / "command_mux_node.py"],
                "scripted_supervisor": [SRC / "nodes" / "supervisor_node.py"],
                # the keyboard teleop inherits the shared parameters of TeleopNode
                "keyboard_teleop": [SRC / "nodes" / "keyboard_teleop_node.py",
                                    SRC / "nodes" / "joy_teleop_node.py"]}


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_parameter_files_name_declared_parameters(path):
    data = yaml.safe_load(path.read_text())
    for node, body in data.items():
        assert set(body) == {"ros__parameters"}, f"{path.name}: {node} needs ros__parameters"
        declared = set().union(*(declared_parameters(p) for p in NODE_SOURCES[node]))
        unknown = set(body["ros__parameters"]) - declared - {"use_sim_time"}
        assert not unknown, f"{path.name}: {node} does not declare {sorted(unknown)}"


LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_references_exist(path):
    tree = ast.parse(path.read_text())
    scripts = console_scripts()
    declared_args, used_args, executables, files = set(), set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            first = node.args[0] if node.args else None
            name = first.value if isinstance(first, ast.Constant) else None
            if node.func.id == "DeclareLaunchArgument":
                declared_args.add(name)
            elif node.func.id == "LaunchConfiguration":
                used_args.add(name)
            elif node.func.id == "Node":
                kw = {k.arg: k.value for k in node.keywords}
                package = ast.literal_eval(kw["package"])
                if package == "robot_imitation":
                    executables.add(ast.literal_eval(kw["executable"]))
                else:
                    assert package in manifest_dependencies(), \
                        f"{path.name} starts a node of {package}, not declared in package.xml"
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.endswith(".yaml"):
            files.add(node.value)
    assert executables and executables <= set(scripts), executables - set(scripts)
    assert used_args <= declared_args, f"undeclared launch arguments {used_args - declared_args}"
    for f in files:
        assert (ROOT / "config" / f).is_file(), f"{path.name} refers to missing config/{f}"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_description_builds(path):
    pytest.importorskip("launch_ros", reason="the ROS 2 launch system is not installed here "
                        "(it is not on PyPI); the static check above still ran")
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert description.entities
