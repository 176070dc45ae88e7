"""A task given to a launch file as a task file (``task:=my_push.yaml``) gives its nodes the
spec named after its task, as ``--task my_push.yaml`` does on the command line
(``graphs._task_spec``). Before, the launch file's task substitution was handed on unchanged as
the nodes' ``spec``: the recorder of ``sim_record.launch.py`` read the task file as a spec and
died at start ("my_push.yaml: unknown key 'robot' in the spec"), and the mux and the supervisor
of ``dagger.launch.py`` were handed the file as their spec too; neither launch file has a
``spec`` argument to get round it (both have one now: a spec given is the nodes' spec). The
launch system is not on PyPI: these tests run where ROS
2's launch is installed."""
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import wait_for
from robot_imitation.paths import config_file
from test_package import ROOT, launch_arguments, launched_nodes

SPEC_FROM_TASK = {  # launch file: the nodes whose spec defaults to the task's
    "sim_record.launch.py": {"episode_recorder"},
    "dagger.launch.py": {"episode_recorder", "command_mux", "scripted_supervisor"},
}


def push_variant(folder: Path) -> Path:
    """A task file: the built-in push task, renamed as a variant of it (``push_slow``, longer
    episodes), whose spec is push's."""
    data = yaml.safe_load(config_file("tasks", "push").read_text())
    data.update(name="push_slow", max_steps=300)
    path = folder / "my_push.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def parameter_files(node) -> list:
    """The ``--params-file`` arguments of a performed node's command line, in order (they are
    text by then; the executable and the ROS arguments, substitutions performed when the node
    is executed, are left alone: ``joy`` need not be installed)."""
    from launch.substitutions import TextSubstitution

    cmd = ["".join(s.text for s in part) if all(isinstance(s, TextSubstitution) for s in part)
           else None for part in node.cmd]
    return [Path(cmd[i + 1]) for i, arg in enumerate(cmd[:-1]) if arg == "--params-file"]


class ParameterFileLoader(yaml.SafeLoader):
    """YAML as launch_ros writes a node's parameters: a list of texts as ``!!python/tuple``."""


ParameterFileLoader.add_constructor("tag:yaml.org,2002:python/tuple",
                                    lambda loader, node: loader.construct_sequence(node))


def started_parameter(files: list, node_name: str, name: str):
    """The value ``name`` takes in a node started with ``files`` (the last file setting it)."""
    value = None
    for path in files:
        data = yaml.load(path.read_text(), Loader=ParameterFileLoader) or {}
        for key in (f"/{node_name}", node_name, "/**"):
            params = (data.get(key) or {}).get("ros__parameters", {})
            if name in params:
                value = params[name]
    return value


@pytest.mark.parametrize("name", sorted(SPEC_FROM_TASK))
def test_a_launched_task_file_gives_its_nodes_its_tasks_spec(name, tmp_path, monkeypatch):
    pytest.importorskip("launch_ros", reason="the ROS 2 launch system is not installed here "
                        "(it is not on PyPI)")
    from launch import LaunchContext

    monkeypatch.chdir(tmp_path)  # a relative task file is read from the launch's folder
    push_variant(tmp_path)
    path = ROOT / "launch" / name
    choices = {n: c for n, (_, c) in launch_arguments(path).items() if c}
    variants = [{}] + [{n: c} for n, cs in choices.items() for c in cs]
    for task in (str(tmp_path / "my_push.yaml"), "my_push.yaml", "push"):
        for variant in variants:
            given = {"task": task, "dataset": str(tmp_path / "ds"), "checkpoint": "ckpt",
                     **variant}
            context = LaunchContext()
            nodes = launched_nodes(path, given, context)
            files = {node: parameter_files(node) for node in nodes}
            try:
                started = {node.node_name.rsplit("/", 1)[-1]: files[node] for node in nodes}
                for node_name in SPEC_FROM_TASK[name] & set(started):
                    assert started_parameter(started[node_name], node_name, "spec") == \
                        "push", (given, node_name)
                    if node_name != "scripted_supervisor":  # (it is given no task)
                        assert started_parameter(started[node_name], node_name, "task") == task
            finally:  # launch_ros writes each node's parameters to a temporary file
                for f in (f for node_files in files.values() for f in node_files):
                    if f.parent == Path(tempfile.gettempdir()) \
                            and f.name.startswith("launch_params_"):
                        f.unlink(missing_ok=True)
            wanted = SPEC_FROM_TASK[name] - ({"scripted_supervisor"}
                                             if variant.get("variant") == "mixture" else set())
            assert SPEC_FROM_TASK[name] & set(started) == wanted, given
    # a spec given as the launch argument `spec` is the nodes' spec, whatever the task
    given = {"task": "my_push.yaml", "dataset": str(tmp_path / "ds"), "checkpoint": "ckpt",
             "spec": "push_obstacle"}
    nodes = launched_nodes(path, given, LaunchContext())
    files = {node: parameter_files(node) for node in nodes}
    try:
        for node in nodes:
            node_name = node.node_name.rsplit("/", 1)[-1]
            if node_name in SPEC_FROM_TASK[name]:
                assert started_parameter(files[node], node_name, "spec") == "push_obstacle"
    finally:
        for f in (f for node_files in files.values() for f in node_files):
            if f.parent == Path(tempfile.gettempdir()) and f.name.startswith("launch_params_"):
                f.unlink(missing_ok=True)


def test_a_launched_task_spec_without_the_package_is_the_tasks_text():
    """A launch file that loads graphs.py by its path (a ``ros2 launch`` whose Python cannot
    import the package) still starts: a built-in task's spec is its name."""
    pytest.importorskip("launch_ros", reason="the ROS 2 launch system is not installed here")
    from launch import LaunchContext
    from launch.substitutions import LaunchConfiguration

    name = "robot_imitation_graphs_by_file"
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "src" / "robot_imitation" / "ros" / "graphs.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        context = LaunchContext()
        context.launch_configurations["task"] = "reach"
        recorder = [d for d in module.record_graph(LaunchConfiguration("task"), "ds")
                    if d.name == "episode_recorder"][0]
        assert recorder.parameters["spec"].perform(context) == "reach"
    finally:
        del sys.modules[name]


def test_the_graphs_import_no_launch_system(tmp_path):
    """Building the graphs, from names or from objects that are no launch substitution, neither
    imports the launch system nor needs it."""
    code = ("import sys\n"
            "from robot_imitation.ros import graphs\n"
            "task = object()\n"
            "assert graphs._task_spec(task) is task\n"
            "assert graphs.record_graph('push_obstacle', 'ds')[-1].parameters['spec'] == "
            "'push_obstacle'\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('launch', 'launch_ros')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


# `ros2` run by this Python, which imports the package (as a colcon install's or the venv's
# `ros2` does): a launch file loaded by a Python without it gets a task's text as its spec.
ROS2 = [sys.executable, "-c", "import sys; from ros2cli.cli import main; sys.exit(main())"]


@pytest.mark.ros
def test_ros2_launch_records_with_a_task_file(tmp_path, probe):
    """``ros2 launch .../sim_record.launch.py task:=my_push.yaml``: the recorder starts with the
    spec push and keeps running (before: it died at start on the task file read as a spec)."""
    pytest.importorskip("ros2launch", reason="`ros2 launch` is not installed here")
    from rcl_interfaces.srv import GetParameters

    task = push_variant(tmp_path)
    log = tmp_path / "launch.log"
    # conftest's domain; the nodes' parameter files that launch_ros writes (and leaves) here
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", TMPDIR=str(tmp_path))
    with open(log, "w") as out:
        proc = subprocess.Popen([*ROS2, "launch", str(ROOT / "launch" / "sim_record.launch.py"),
                                 f"task:={task}", f"dataset:={tmp_path / 'ds'}"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=tmp_path, env=env, start_new_session=True)
    try:
        def recorder_started_or_died():
            text = log.read_text(errors="replace")
            return "[episode_recorder]: recording" in text or "process has died" in text \
                or proc.poll() is not None

        wait_for(recorder_started_or_died, 180, "the launched recorder to start or die",
                 interval=0.2, log_dir=tmp_path)

        def alive():
            text = log.read_text(errors="replace")
            assert proc.poll() is None and "process has died" not in text, text[-4000:]

        alive()
        wait_for(lambda: alive() or probe.caller.ready(
            GetParameters, "/episode_recorder/get_parameters", 0.2),
            120, "the recorder's parameter service", log_dir=tmp_path)
        got = probe.call(GetParameters, "/episode_recorder/get_parameters",
                         GetParameters.Request(names=["spec", "task"]), timeout=60).values
        assert [v.string_value for v in got] == ["push", str(task)]
        text = log.read_text(errors="replace")
        assert "process has died" not in text and "unknown key" not in text, text[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of the group left behind
        except ProcessLookupError:
            pass
        proc.wait()
