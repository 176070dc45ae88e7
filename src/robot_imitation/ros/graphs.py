"""The process graphs of the suite, each declared once as data.

A graph is a list of ``NodeDecl``: which executable to start (a console script of the package,
as ``launcher.NODE_MODULES`` names them), under which node name, with which parameters,
remappings and namespace. The functions below build each graph from the knobs it has; the same
declarations are started by the Python code (``launcher.ProcessGroup.start_graph``: the command
line, the pipelines, the DAgger and evaluation rigs, the tests) and by the launch files
(``launch_description``: ``ros2 launch``), so the two cannot drift apart.

- ``expert_graph``: the bridge and the scripted expert (``demo``, ``sim_expert.launch.py``).
- ``record_graph``: the bridge, the scripted expert (or a joystick teleop) and the recorder
  (``pipelines.record_demonstrations``, ``sim_record.launch.py``).
- ``evaluation_graph``: the bridge and the policy node (``evaluate --ros``,
  ``sim_policy.launch.py``).
- ``dagger_graph``: the bridge in lockstep, the scripted expert on ``/expert/...``, the policy
  node on ``/policy/...``, the command mux forwarding one of them in sync, optionally the
  scripted supervisor and the recorder (``robot-imitation dagger``, ``dagger.launch.py``).

A knob left at ``None`` sets no parameter: the node's parameter file (the one a launch file
loads first, ``NodeDecl.params_file``) or its default applies. A parameter value may be a
launch substitution (a launch file's ``LaunchConfiguration``): it is kept as it is, for the
launch system to resolve and type; the spec a node takes from a task given as a substitution is
a substitution too (``_task_spec``), mapped as the Python code maps it once the task's text is
known. Knobs that shape a graph (which nodes, which trigger) are plain values. Nothing here
imports ROS; ``launch_description`` imports the launch system when a launch file calls it, and
``_task_spec`` only when a launch file hands it a substitution (the launch system is loaded).
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass, field

PACKAGE = "robot_imitation"
MODES = ("lockstep", "realtime")   # the bridge's timing
TELEOPS = ("none", "joy")          # who drives a recording: the scripted expert, a joystick
INTERVENTION_BUTTON = 5  # the mux's intervention button, held by the scripted supervisor
LABEL_PREFIX = "/expert"  # where the expert of a DAgger graph publishes (its labels)
ACTION_TOPICS = ("/arm_controller/commands", "/gripper_controller/commands")


@dataclass
class NodeDecl:
    """One node of a graph. ``parameters``: set on top of ``params_file`` (a file of the
    package's ``config/`` that a launch file loads first; the Python launcher starts the node on
    its defaults instead). ``remappings``: (from, to) topic pairs. ``package``: a node of
    another package (``joy``) can be launched, not started by the Python launcher."""

    executable: str
    name: str
    parameters: dict = field(default_factory=dict)
    remappings: list = field(default_factory=list)
    namespace: str | None = None
    params_file: str | None = None
    package: str = PACKAGE


def _params(**values) -> dict:
    """The parameters whose value is set (not None)."""
    return {k: v for k, v in values.items() if v is not None}


def _choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} {value!r} is not one of {', '.join(choices)}")
    return value


def flag(name: str, text) -> bool:
    """A launch argument's true/false text as a bool (as launch's conditions read it)."""
    if isinstance(text, bool):
        return text
    word = str(text).strip().lower()
    if word in ("true", "1"):
        return True
    if word in ("false", "0"):
        return False
    raise ValueError(f"{name} {text!r} is not true or false")


def bridge(task, mode, seed=None, cameras=None) -> NodeDecl:
    """The MuJoCo bridge of ``task``, in ``mode`` (lockstep or realtime)."""
    return NodeDecl("mujoco_bridge", "mujoco_bridge", params_file="bridge.yaml",
                    parameters=_params(task=task, mode=mode, seed=seed, cameras=cameras))


def _task_spec(task):
    """The spec a node of ``task`` records or serves by default: the task's own
    (``spec.task_spec_name``: a task file's is the spec named after its task, a variant
    ``reach_fast``'s is ``reach``'s; a task file is never read as a spec). A launch file's
    substitution (``LaunchConfiguration("task")``, or a list of substitutions and text) gives a
    substitution that maps the task's text the same way when the launch system resolves it, so
    ``task:=my_push.yaml`` gives the nodes the spec ``push``, as ``--task my_push.yaml`` does.
    Any other value is kept as it is."""
    if isinstance(task, (str, os.PathLike)):
        return _spec_of(task)
    if _is_substitution(task):
        return _task_spec_substitution()(task)
    return task


def _spec_of(task) -> str:
    """``spec.task_spec_name(task)`` (``SpecError``: an unknown task, or one with no spec of its
    own). Where the package cannot be imported (a launch file that loaded this file by its path,
    in a Python without the package) the task's text itself: a built-in task's spec has its
    name."""
    try:
        from ..spec import task_spec_name
    except ImportError:
        return str(task)
    return task_spec_name(task)


def _is_substitution(value) -> bool:
    """Whether ``value`` is a launch substitution, or a list of substitutions and text. Only a
    loaded launch system can have made one: this never imports it."""
    base = getattr(sys.modules.get("launch"), "Substitution", None)
    if base is None:
        return False
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    return any(isinstance(v, base) for v in items) and \
        all(isinstance(v, (str, base)) for v in items)


@functools.cache
def _task_spec_substitution():
    """The launch substitution class of ``_task_spec`` (made once the launch system is loaded:
    it derives from ``launch.Substitution``)."""
    from launch import Substitution
    from launch.utilities import normalize_to_list_of_substitutions, perform_substitutions

    class TaskSpec(Substitution):
        """The spec named after the task that ``task`` (substitutions) resolves to, as
        ``_spec_of`` maps a task's text."""

        def __init__(self, task):
            super().__init__()
            self.task = normalize_to_list_of_substitutions(task)

        def describe(self) -> str:
            return f"TaskSpec({' + '.join(s.describe() for s in self.task)})"

        def perform(self, context) -> str:
            return _spec_of(perform_substitutions(context, self.task))

    return TaskSpec


def scripted_expert(task, mode, spec=None) -> NodeDecl:
    """The scripted expert: in lockstep it answers every state, in real time it commands on a
    timer on simulated time."""
    realtime = _choice("mode", mode, MODES) == "realtime"
    return NodeDecl("scripted_expert", "scripted_expert", params_file="expert.yaml",
                    parameters=_params(task=task, spec=spec,
                                       trigger="timer" if realtime else "state",
                                       use_sim_time=realtime))


def policy_node(checkpoint, mode="lockstep", spec=None, backend=None, threads=1,
                remappings=()) -> NodeDecl:
    """The policy node on simulated time: in lockstep it answers every state and has no
    watchdog (no state can be late: the bridge waits for the answer); in real time it commands
    on a timer."""
    lockstep = _choice("mode", mode, MODES) == "lockstep"
    return NodeDecl("policy_node", "policy_node", params_file="policy.yaml",
                    remappings=list(remappings),
                    parameters=_params(checkpoint=checkpoint, spec=spec,
                                       trigger="state" if lockstep else "timer",
                                       use_sim_time=True, backend=backend, threads=threads,
                                       max_age_periods=0.0 if lockstep else None))


def expert_graph(task, mode="realtime", seed=None, cameras=None, expert: bool = True) -> list:
    """The simulated robot driven by its scripted expert (``expert``: False, the bridge
    alone)."""
    nodes = [bridge(task, mode, seed, cameras)]
    if expert:
        nodes.append(scripted_expert(task, mode))
    return nodes


def record_graph(task, dataset, spec=None, mode="lockstep", seed=None, storage=None,
                 cameras=None, auto_stop: bool = True, teleop: str = "none") -> list:
    """Recording in simulation: the bridge, the scripted expert (``teleop`` ``none``) or a
    joystick teleop (``joy``: the ``joy`` package's game controller node and ``joy_teleop``),
    and the recorder of ``spec`` (default: the task's) into ``dataset``, on simulated time.
    ``auto_stop``: the recorder ends an episode when the task reports done."""
    nodes = [bridge(task, mode, seed, cameras)]
    if _choice("teleop", teleop, TELEOPS) == "none":
        nodes.append(scripted_expert(task, mode))
    else:
        nodes += [NodeDecl("game_controller_node", "joy", package="joy"),
                  NodeDecl("joy_teleop", "joy_teleop", params_file="teleop.yaml",
                           parameters={"task": task, "use_sim_time": True})]
    nodes.append(NodeDecl("episode_recorder", "episode_recorder", params_file="recorder.yaml",
                          parameters=_params(dataset=dataset,
                                             spec=_task_spec(task) if spec is None else spec,
                                             storage=storage, task=task, use_sim_time=True,
                                             auto_stop_on_done=auto_stop)))
    return nodes


def _dagger_recorder(task, spec, dataset, supervised: bool) -> NodeDecl:
    """The recorder of a rig: the spec's topics, the expert's labels and the executed source
    (and the supervisor's button)."""
    topics = [LABEL_PREFIX + t for t in ACTION_TOPICS] + ["/command_mux/source"]
    return NodeDecl("episode_recorder", "episode_recorder", params_file="recorder.yaml",
                    parameters={"dataset": dataset,
                                "spec": _task_spec(task) if spec is None else spec,
                                "task": task, "use_sim_time": True, "auto_stop_on_done": True,
                                "topics": topics + (["/joy"] if supervised else [])})


def evaluation_graph(task, checkpoint, spec=None, seed=None, backend=None, mode="lockstep",
                     cameras=("",), threads=1, dataset=None) -> list:
    """A checkpoint in closed loop: the bridge of ``task`` and the policy node running
    ``checkpoint`` (its runtime ``spec``: default the checkpoint's) with ``backend`` (default:
    its parameter file's). ``cameras``: the bridge's (default none; None: its parameter
    file's). ``dataset``: also a recorder, as ``dagger_graph`` has (the label and source topics
    listed, though nothing publishes them here)."""
    nodes = [bridge(task, mode, seed, None if cameras is None else list(cameras)),
             policy_node(checkpoint, mode, spec, backend, threads)]
    if dataset is not None:
        nodes.append(_dagger_recorder(task, spec, dataset, supervised=False))
    return nodes


def dagger_graph(task, checkpoint, spec=None, dataset=None, mixture_per=None, seed=None,
                 supervisor: dict | None = None, backend=None, mode="policy", beta=None,
                 threads=1) -> list:
    """DAgger in simulation, in lockstep: the bridge, the scripted expert answering every state
    on ``/expert/...`` (its labels), the command mux forwarding the expert or the policy in
    sync (``mode``, ``beta``, ``mixture_per``, ``seed``: its mode, mixture probability, how
    often the mixture draws and its seed), the scripted ``supervisor`` holding the mux's
    intervention button (its settings; None: no supervisor, as in a mixture run), the policy
    node running ``checkpoint`` on ``/policy/...``, and with ``dataset`` the recorder."""
    supervised = supervisor is not None
    labels = LABEL_PREFIX.strip("/")  # the expert's controllers: expert/arm_controller, ...
    nodes = [
        bridge(task, "lockstep", seed, [""]),
        NodeDecl("scripted_expert", "scripted_expert", params_file="expert.yaml",
                 parameters=_params(task=task, spec=spec, trigger="state", publish="plans",
                                    arm_controller=f"{labels}/arm_controller",
                                    gripper_controller=f"{labels}/gripper_controller")),
        # (two lists: a parameter file must not alias one)
        NodeDecl("command_mux", "command_mux", params_file="mux.yaml",
                 parameters=_params(task=task, spec=_task_spec(task) if spec is None else spec,
                                    sources=["expert", "policy"],
                                    sync_sources=["expert", "policy"], sync=True, mode=mode,
                                    beta=beta, mixture_per=mixture_per, seed=seed,
                                    intervention_source="expert", joy_sync=supervised,
                                    intervention_button=INTERVENTION_BUTTON)),
    ]
    if supervised:
        nodes.append(NodeDecl("scripted_supervisor", "scripted_supervisor",
                              params_file="supervisor.yaml",
                              parameters={"spec": _task_spec(task) if spec is None else spec,
                                          "button": INTERVENTION_BUTTON, **supervisor}))
    nodes.append(policy_node(checkpoint, "lockstep", spec, backend, threads,
                             remappings=[(t, "/policy" + t) for t in ACTION_TOPICS]))
    if dataset is not None:
        nodes.append(_dagger_recorder(task, spec, dataset, supervised))
    return nodes


# ------------------------------------------------------------------------------ launch files
def launch_node(decl: NodeDecl):
    """``decl`` as a ``launch_ros.actions.Node``: its parameter file from the package's
    ``config/``, then its parameters (substitutions resolved by the launch system)."""
    from launch.substitutions import PathJoinSubstitution
    from launch_ros.actions import Node
    from launch_ros.substitutions import FindPackageShare

    parameters = []
    if decl.params_file:
        parameters.append(PathJoinSubstitution([FindPackageShare(PACKAGE), "config",
                                                decl.params_file]))
    if decl.parameters:
        parameters.append(dict(decl.parameters))
    extra = {"namespace": decl.namespace} if decl.namespace else {}
    return Node(package=decl.package, executable=decl.executable, name=decl.name,
                output="screen", parameters=parameters, remappings=list(decl.remappings),
                **extra)


def launch_description(arguments: list, nodes):
    """A launch file's description: its ``arguments`` (``DeclareLaunchArgument`` actions), then
    the nodes of ``nodes(arg, value)`` once the arguments are known. ``arg(name)`` is an
    argument as a substitution (for parameter values, typed by the launch system); ``value(name)``
    its text (for the knobs that shape the graph)."""
    from launch import LaunchDescription
    from launch.actions import OpaqueFunction
    from launch.substitutions import LaunchConfiguration

    def start(context):
        def value(name: str) -> str:
            return LaunchConfiguration(name).perform(context)

        return [launch_node(d) for d in nodes(LaunchConfiguration, value)]

    return LaunchDescription([*arguments, OpaqueFunction(function=start)])
