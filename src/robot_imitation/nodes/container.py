"""Several of the suite's nodes in one process: ``container <executable> ... [--ros-args ...]``.

ROS 2's composition for these Python nodes: the nodes named (``mujoco_bridge``,
``scripted_expert``, ``policy_node``, ``command_mux``, ``scripted_supervisor``) are made in
order in one process and spun by one executor. They talk over DDS as they do between processes
(the same topics, QoS and services: a recorder or a tool elsewhere sees nothing different), but
a message between two of them is handed over inside the process, with no other process to wake
up: a lockstep simulation, which waits for its controller's answer at every tick, runs about a
third faster with the bridge and its controller in one container (``bench/bridge_throughput.py``).
The price: the nodes share one interpreter, so one node's computation holds up the others'
callbacks (no matter in lockstep, where they take turns), and a node that dies takes the others
with it.

Parameters: a parameter file with a section per node (``ros.launcher.ProcessGroup.start_graph``
writes one); remappings: rules of one node each (``-r <node>:<from>:=<to>``; a rule without the
node's name applies to every node in the process). The nodes keep their own names and the
process's namespace.
"""
from __future__ import annotations

import importlib
import sys

# executable -> (module, node class) of the nodes that can share a process: those whose
# executable is ``common.run`` of one class (the recorder and the DAgger node run their own)
COMPOSABLE = {
    "mujoco_bridge": ("robot_imitation.nodes.bridge_node", "MujocoBridge"),
    "scripted_expert": ("robot_imitation.nodes.expert_node", "ScriptedExpert"),
    "policy_node": ("robot_imitation.nodes.policy_node", "PolicyNode"),
    "command_mux": ("robot_imitation.nodes.command_mux_node", "CommandMux"),
    "scripted_supervisor": ("robot_imitation.nodes.supervisor_node", "ScriptedSupervisor"),
}
NAME = "container"


class ContainerError(ValueError):
    pass


def check_executables(executables) -> None:
    """Raise ``ContainerError`` (one line naming the value) unless ``executables`` names one
    or more composable nodes, each once."""
    executables = list(executables)
    if not executables:
        raise ContainerError(f"no node given (one or more of {', '.join(COMPOSABLE)})")
    unknown = [e for e in executables if e not in COMPOSABLE]
    if unknown:
        raise ContainerError(f"{', '.join(map(repr, unknown))} cannot share a process (the "
                             f"composable nodes: {', '.join(COMPOSABLE)})")
    twice = sorted({e for e in executables if executables.count(e) > 1})
    if twice:
        raise ContainerError(f"{', '.join(twice)} given twice: one node of each name")


def main(args=None) -> int:
    from .common import run

    argv = list(sys.argv if args is None else args)
    cut = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
    executables = [a for a in argv[1:cut] if a not in ("-h", "--help")]
    asked = [a for a in argv[1:cut] if a in ("-h", "--help")]  # (each node's parameters)
    if asked and not executables:
        print(f"{NAME}: {__doc__.strip()}\n\nusage: {NAME} <executable> ... [--help] "
              "[--ros-args --params-file nodes.yaml ...]")
        return 0
    try:
        check_executables(executables)
    except ContainerError as exc:
        print(f"[{NAME}] fatal: {exc}", file=sys.stderr, flush=True)
        return 1
    classes = tuple(getattr(importlib.import_module(COMPOSABLE[e][0]), COMPOSABLE[e][1])
                    for e in executables)
    return run(classes, [argv[0], *asked, *argv[cut:]], name=f"{NAME} {'+'.join(executables)}")


if __name__ == "__main__":
    raise SystemExit(main())
