"""The process graphs, declared once (``robot_imitation.ros.graphs``): what the Python code starts
and what the launch files start are the same declarations, and they are what the rigs started
when each wrote its own."""
import time

import pytest
import yaml

from conftest import wait_for
from robot_imitation.ros import graphs
from robot_imitation.ros.graphs import dagger_graph, evaluation_graph, expert_graph, record_graph
from test_package import ROOT, declared_parameters, launch_graphs, launched_nodes, value_problem


def started(nodes) -> list:
    """(executable, node name, parameters, remappings) of each node, in start order."""
    return [(d.executable, d.name, d.parameters, [tuple(r) for r in d.remappings])
            for d in nodes]


# What the Python code started before the graphs were declared once (its start_node calls,
# copied as they were): record_demonstrations, RosRig (evaluation and DAgger) and `demo`.
def old_record(mode):
    realtime = mode == "realtime"
    return [("mujoco_bridge", "mujoco_bridge",
             {"task": "push", "mode": mode, "seed": 40, "cameras": [""]}, []),
            ("scripted_expert", "scripted_expert",
             {"task": "push", "trigger": "timer" if realtime else "state",
              "use_sim_time": realtime}, []),
            ("episode_recorder", "episode_recorder",
             {"dataset": "ds", "spec": "push", "storage": "mcap", "task": "push",
              "use_sim_time": True, "auto_stop_on_done": True}, [])]


def old_rig(with_expert, supervisor=None, dataset=None):
    supervised = with_expert and supervisor is not None
    nodes = [("mujoco_bridge", "mujoco_bridge",
              {"task": "push", "mode": "lockstep", "seed": 7, "cameras": [""]}, [])]
    remap = []
    if with_expert:
        nodes.append(("scripted_expert", "scripted_expert",
                      {"task": "push", "spec": "push", "trigger": "state",
                       "publish": "plans",  # (its labels: the mux filters what it forwards)
                       "arm_controller": "expert/arm_controller",
                       "gripper_controller": "expert/gripper_controller"}, []))
        nodes.append(("command_mux", "command_mux",
                      {"task": "push", "spec": "push",  # (its action filter's)
                       "sources": ["expert", "policy"], "sync_sources": ["expert", "policy"],
                       "sync": True, "mode": "policy", "mixture_per": "episode", "seed": 7,
                       "intervention_source": "expert", "joy_sync": supervised,
                       "intervention_button": 5}, []))
        if supervised:
            nodes.append(("scripted_supervisor", "scripted_supervisor",
                          {"spec": "push", "button": 5, **supervisor}, []))
        remap = [("/arm_controller/commands", "/policy/arm_controller/commands"),
                 ("/gripper_controller/commands", "/policy/gripper_controller/commands")]
    # RosRig left the policy node's trigger to its default, "state"; the graph names it
    nodes.append(("policy_node", "policy_node",
                  {"checkpoint": "ckpt", "spec": "push", "use_sim_time": True,
                   "backend": "eager", "threads": 1, "max_age_periods": 0.0,
                   "trigger": "state"}, remap))
    if dataset is not None:
        nodes.append(("episode_recorder", "episode_recorder",
                      {"dataset": dataset, "spec": "push", "task": "push", "use_sim_time": True,
                       "auto_stop_on_done": True,
                       "topics": ["/expert/arm_controller/commands",
                                  "/expert/gripper_controller/commands", "/command_mux/source"]
                       + (["/joy"] if supervised else [])}, []))
    return nodes


@pytest.mark.parametrize("mode", ["lockstep", "realtime"])
def test_record_graph_is_what_record_demonstrations_started(mode):
    assert started(record_graph("push", "ds", spec="push", mode=mode, seed=40, storage="mcap",
                                cameras=[""])) == old_record(mode)


def test_evaluation_graph_is_the_evaluation_rig():
    assert started(evaluation_graph("push", "ckpt", spec="push", seed=7, backend="eager")) == \
        old_rig(False)
    assert started(evaluation_graph("push", "ckpt", spec="push", seed=7, backend="eager",
                                    dataset="ds")) == old_rig(False, dataset="ds")


@pytest.mark.parametrize("supervisor", [None, {}, {"hold": 4, "patience": 9}])
@pytest.mark.parametrize("dataset", [None, "ds"])
def test_dagger_graph_is_the_dagger_rig(supervisor, dataset):
    nodes = dagger_graph("push", "ckpt", spec="push", dataset=dataset, mixture_per="episode",
                         seed=7, supervisor=supervisor, backend="eager")
    assert started(nodes) == old_rig(True, supervisor, dataset)


def test_expert_graph_is_the_demo():
    for mode in ("lockstep", "realtime"):
        assert started(expert_graph("push", mode, seed=3, cameras=["all"])) == [
            ("mujoco_bridge", "mujoco_bridge",
             {"task": "push", "mode": mode, "seed": 3, "cameras": ["all"]}, []),
            ("scripted_expert", "scripted_expert",
             {"task": "push", "trigger": "state" if mode == "lockstep" else "timer",
              "use_sim_time": mode == "realtime"}, [])]
    assert started(expert_graph("push", "lockstep", expert=False)) == [
        ("mujoco_bridge", "mujoco_bridge", {"task": "push", "mode": "lockstep"}, [])]


def python_graphs() -> list:
    """Every graph the Python code starts, in each of its shapes."""
    return [*(record_graph("push", "ds", spec="push", mode=m, seed=0, storage="sqlite3",
                           cameras=[""]) for m in graphs.MODES),
            *(expert_graph("reach", m, seed=1, cameras=["all"]) for m in graphs.MODES),
            evaluation_graph("push", "ckpt", spec="push", seed=500_000, backend="eager",
                             dataset="ds"),
            *(dagger_graph("push", "ckpt", spec="push", dataset="ds", mixture_per="step",
                           seed=0, supervisor=s, backend="eager")
              for s in (None, {"stall_steps": 10, "stall_distance": 0.01, "regress": 0.02,
                               "hold": 15, "patience": 30, "progress": 0.01}))]


@pytest.mark.parametrize("nodes", python_graphs(), ids=lambda n: "+".join(d.name for d in n))
def test_every_declared_parameter_is_one_the_node_declares(nodes):
    """Each parameter a graph sets is in its node's table, of the declared type, in range and
    among the choices (as test_package checks the parameter files); each node can be started
    here, and its parameter file exists."""
    from robot_imitation.ros.launcher import NODE_MODULES

    for decl in nodes:
        assert decl.executable in NODE_MODULES, decl.executable
        assert (ROOT / "config" / decl.params_file).is_file(), decl.params_file
        table = declared_parameters(decl.name)
        for name, value in decl.parameters.items():
            assert name in table, f"{decl.name} does not declare {name}"
            problem = value_problem(table[name], value)
            assert problem is None, f"{decl.name}: {problem}"


def test_a_bad_knob_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"^teleop 'keyboard' is not one of none, joy$"):
        record_graph("push", "ds", teleop="keyboard")
    with pytest.raises(ValueError, match=r"^mode 'fast' is not one of lockstep, realtime$"):
        expert_graph("push", "fast")
    with pytest.raises(ValueError, match=r"^mode 'fast' is not one of lockstep, realtime$"):
        evaluation_graph("push", "ckpt", mode="fast")
    with pytest.raises(ValueError, match=r"^expert 'yes' is not true or false$"):
        graphs.flag("expert", "yes")
    assert graphs.flag("expert", "True") and not graphs.flag("expert", "0")


def test_a_substitution_stays_a_parameter_value():
    """A parameter value the graphs do not read is kept as it is (a launch file's
    LaunchConfiguration: the launch system resolves it and types it, a beta of "0.5" becomes a
    double), never turned into a string here; so is a task that is neither text nor a launch
    substitution as a node's spec (a launch substitution's spec: test_launch_task_file.py)."""
    class Substitution:  # any object: the graphs look at no parameter value
        pass

    beta, task = Substitution(), Substitution()
    mux = {d.name: d for d in dagger_graph(task, "ckpt", beta=beta)}["command_mux"]
    assert mux.parameters["beta"] is beta
    recorder = {d.name: d for d in record_graph(task, "ds")}["episode_recorder"]
    assert recorder.parameters["task"] is task and recorder.parameters["spec"] is task


def test_start_graph_refuses_a_node_it_cannot_start_before_starting_any(tmp_path):
    from robot_imitation.ros.launcher import ProcessGroup

    with ProcessGroup(tmp_path / "logs") as group:
        with pytest.raises(ValueError, match=r"^node joy: joy game_controller_node cannot be "):
            group.start_graph(record_graph("push", "ds", mode="realtime", teleop="joy"))
        assert not group.procs


@pytest.mark.ros  # (plain processes, but ProcessGroup.start is what the tiers' guard watches)
def test_a_group_stopped_from_two_threads_at_once_stops_once_and_closes(tmp_path):
    """A node's shutdown stops its run's group (``stop_all_groups``) while the run's own thread
    stops it too, or checks it: no error in either, every process ended, and then the group is
    closed: ``check`` raises, so a run waiting on those processes ends, and ``start`` refuses."""
    import threading

    from robot_imitation.ros.launcher import ProcessDied, ProcessGroup

    group = ProcessGroup(tmp_path / "logs")
    # processes that ignore SIGINT: both stops are still waiting when SIGTERM is due
    procs = [group.start(f"p{i}", ["bash", "-c", "trap '' INT; sleep 30"]) for i in range(3)]
    time.sleep(0.3)  # (the trap set)
    errors, codes = [], []

    def stop():
        try:
            codes.append(group.stop(timeout=0.5))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    def check():
        try:
            while not group.closed:
                group.check()
        except ProcessDied:
            pass
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (stop, stop, check)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors, errors
    assert all(p.poll() is not None for p in procs)
    assert sorted(k for c in codes for k in c) == ["p0", "p1", "p2"]  # each stopped once
    with pytest.raises(ProcessDied, match="the processes were stopped"):
        group.check()
    with pytest.raises(ProcessDied, match="^not starting late: its process group was stopped"):
        group.start("late", ["sleep", "30"])
    assert "late" not in group.procs


@pytest.mark.ros
def test_a_wait_on_the_bridge_ends_when_a_process_of_the_run_dies(ros, tmp_path):
    """The episode runner's waits check the run's processes (``alive``): one that died ends the
    wait at once with its own error, not after the episode timeout."""
    from robot_imitation.nodes.episode_runner import EpisodeRunner, Spinner
    from robot_imitation.ros.launcher import ProcessDied, ProcessGroup

    runner = EpisodeRunner(name="waiting_runner")  # no bridge: no status ever comes
    spinner = Spinner(runner)
    try:
        with ProcessGroup(tmp_path / "logs") as group:
            group.start("scripted_expert", ["bash", "-c", "echo '[x] fatal: gone' >&2; exit 3"])
            t0 = time.monotonic()
            with pytest.raises(ProcessDied, match="scripted_expert exited with code 3"):
                runner.wait_settled(60.0, alive=group.check)
            assert time.monotonic() - t0 < 10.0
    finally:
        spinner.stop()
        runner.destroy_node()


@pytest.mark.ros
def test_start_graph_starts_each_node_with_its_name_parameters_and_remappings(procs, probe):
    """Real processes over DDS: a bridge, an expert under another name, remapped, and the
    DAgger graph's mux (whose two source lists must reach it as two lists: rcl refuses a
    parameter file with YAML aliases)."""
    bridge, expert = expert_graph("reach", "lockstep", seed=3, cameras=[""])
    expert.name = "labeller"
    expert.remappings = [("/arm_controller/commands", "/labels/arm")]
    mux = {d.name: d for d in dagger_graph("reach", "ckpt", seed=3)}["command_mux"]
    procs.start_graph([bridge, expert, mux])
    node = probe.node

    def up():
        procs.check()
        names = {n for n, _ in node.get_node_names_and_namespaces()}
        # (a node's name is discovered before its publishers: wait for the mux's too)
        return {"mujoco_bridge", "labeller", "command_mux"} <= names and \
            node.count_publishers("/labels/arm") == 1 and \
            node.count_publishers("/arm_controller/commands") >= 1

    wait_for(up, 60, "the bridge, the remapped expert and the mux", procs=procs)
    assert node.count_publishers("/arm_controller/commands") == 1  # the mux's, not the expert's
    for decl in (expert, mux):
        params = yaml.safe_load((procs.log_dir / f"{decl.name}.params.yaml").read_text())
        assert params == {decl.name: {"ros__parameters": decl.parameters}}


# ------------------------------------------------------------------ launch files and the code
# Each launch file that starts a graph, and the graph the Python code starts for the same job
# (the same task, dataset and checkpoint): the same nodes, names and remappings; every value
# both set is the same, and every parameter only the Python code sets is set by the launch
# file's parameter file. Differences on purpose: (launch file, node, parameter).
LAUNCH_TWINS = {
    "sim_expert.launch.py": lambda a: expert_graph("push", a["mode"], seed=0, cameras=["all"],
                                                   expert=a["expert"] == "true"),
    "sim_record.launch.py": lambda a: record_graph("push", "ds", spec="push", mode="realtime",
                                                   seed=0, storage="mcap", cameras=[""],
                                                   teleop=a["teleop"]),
    "sim_policy.launch.py": lambda a: evaluation_graph("push", "ckpt", spec="push", seed=0,
                                                       backend="eager", mode=a["mode"]),
    "dagger.launch.py": lambda a: dagger_graph(
        "push", "ckpt", spec="push", dataset="ds", mixture_per="step", seed=0,
        supervisor={} if a["variant"] == "gated" else None, backend="eager"),
}
ON_PURPOSE = {
    # recording by hand (the recorder's services, the teleop's buttons)
    ("sim_record.launch.py", "episode_recorder", "auto_stop_on_done"),
    # the rig starts the mux on the policy and sets each phase's mode at run time
    ("dagger.launch.py", "command_mux", "mode"),
}
GIVEN = {"task": "push", "dataset": "ds", "checkpoint": "ckpt"}


@pytest.mark.parametrize("name", sorted(LAUNCH_TWINS))
def test_launch_file_starts_the_graph_the_code_starts(name):
    path = ROOT / "launch" / name
    runs = launch_graphs(path, **GIVEN)
    assert runs, f"{name} does not build its nodes from robot_imitation.ros.graphs"
    for values, launched, _ in runs:
        code = LAUNCH_TWINS[name](values)
        assert [(d.package, d.executable, d.name, d.namespace, [tuple(r) for r in d.remappings])
                for d in launched] == \
            [(d.package, d.executable, d.name, d.namespace, [tuple(r) for r in d.remappings])
             for d in code], values
        for ours, theirs in zip(launched, code):
            assert ours.params_file == theirs.params_file
            files = yaml.safe_load((ROOT / "config" / ours.params_file).read_text()) \
                if ours.params_file else {}
            from_file = files.get(ours.name, {}).get("ros__parameters", {})
            for key, value in theirs.parameters.items():
                if (name, ours.name, key) in ON_PURPOSE:
                    continue
                if key in ours.parameters:
                    assert ours.parameters[key] == value, (values, ours.name, key)
                else:
                    assert key in from_file, \
                        f"{name} ({values}): {ours.name} {key} is set by neither the launch " \
                        f"file nor config/{ours.params_file}"


@pytest.mark.parametrize("name", sorted(LAUNCH_TWINS))
def test_launch_description_runs_the_declared_nodes(name):
    """With the ROS 2 launch system: the description's nodes, once its arguments are known,
    are the declarations' (package, executable, name, remappings), in order."""
    pytest.importorskip("launch_ros", reason="the ROS 2 launch system is not installed here "
                        "(it is not on PyPI); the declarations were compared above")
    from launch import LaunchContext

    path = ROOT / "launch" / name
    for values, declared, _ in launch_graphs(path, **GIVEN):
        context = LaunchContext()
        nodes = launched_nodes(path, values, context)
        assert len(nodes) == len(declared), values
        for node, decl in zip(nodes, declared):
            assert (node.node_package, node.node_executable) == (decl.package, decl.executable)
            assert node.node_name.endswith("/" + decl.name)
            assert list(node.expanded_remapping_rules or []) == [tuple(r) for r in
                                                                 decl.remappings]
