"""Start nodes as separate processes and always clean them up.

On a ROS 2 install, ``ros2 launch robot_imitation <file>.launch.py`` is the way to start the
suite; this module does the same job where the launch system is not installed (the PyPI
wheels), for the command line's pipelines, the tests and the benchmarks.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

import yaml
from robot_imitation_entry import EXECUTABLES

# the node executables the suite starts, and the module of each (``robot_imitation_entry``
# runs them: a signal while one starts gives one line, not a traceback); the container, which
# runs several of them, is started by ``ProcessGroup.start_container``
NODE_MODULES = {name: module for name, module in EXECUTABLES.items()
                if module.startswith("robot_imitation.nodes.") and name != "container"}


# The environment variable that tells a node which process started it (``ProcessGroup.start``):
# the node shuts down as on SIGTERM once that process is gone (``nodes.common.ShutdownRequest``),
# so a run killed outright (SIGKILL, the OOM killer) leaves no simulation or controller running.
PARENT_ENV = "ROBOT_IMITATION_PARENT_PID"


class _ParameterDumper(yaml.SafeDumper):
    """No YAML aliases: rcl's parameter file parser refuses them (a list used twice)."""

    def ignore_aliases(self, data):
        return True


class ProcessDied(RuntimeError):
    """A child process that exited on its own. ``str()`` holds the tail of its log;
    ``summary`` is one line: the process, its exit code and its own last error line."""

    def __init__(self, message: str, summary: str | None = None):
        super().__init__(message)
        self.summary = summary or message.splitlines()[0]


_GROUPS = weakref.WeakSet()  # every ProcessGroup of this process, for stop_all_groups()


def stop_all_groups(timeout: float = 5.0) -> None:
    """Stop the processes of every group of this process: the children run in sessions of
    their own, so a signal that ends this process never reaches them."""
    for group in list(_GROUPS):
        group.stop(timeout=timeout)


def composable(nodes: list) -> list:
    """``compose`` for ``ProcessGroup.start_graph``: every node of the graph that can share a
    process (``nodes.container.COMPOSABLE``: the bridge and its controllers), in one group; the
    others (the recorder, a teleop) apart."""
    from ..nodes.container import COMPOSABLE

    return [[d.name for d in nodes if d.executable in COMPOSABLE]]


def _composed(nodes: list, compose) -> list:
    """The groups of ``compose`` (node names) as lists of ``nodes``' declarations, checked:
    each name a node of the graph, in one group at most; each node one that can share a
    process (``nodes.container.COMPOSABLE``), under its own name and without a namespace (a
    process's name and namespace rules apply to all its nodes; its remappings are given per
    node). ValueError otherwise."""
    from ..nodes.container import COMPOSABLE

    by_name = {d.name: d for d in nodes}
    groups, seen = [], set()
    for names in compose:
        names = list(names)
        for n in names:
            if n not in by_name:
                raise ValueError(f"compose: no node {n!r} in the graph (its nodes: "
                                 f"{', '.join(by_name)})")
            if n in seen:
                raise ValueError(f"compose: node {n!r} is in two groups")
            seen.add(n)
            d = by_name[n]
            if d.executable not in COMPOSABLE or d.name != d.executable or d.namespace:
                why = ("cannot share a process" if d.executable not in COMPOSABLE else
                       "is renamed or namespaced (a shared process's name and namespace "
                       "rules apply to all its nodes)")
                raise ValueError(f"compose: node {n!r} {why}")
        if names:
            groups.append([d for d in nodes if d.name in names])  # (in the graph's order)
    return groups


class ProcessGroup:
    """A set of child processes, each in its own process group, with logs in ``log_dir``. The
    suite's nodes among them stop by themselves when this process dies (``PARENT_ENV``).

    Safe to use from several threads: a node's shutdown may stop the group (``stop_all_groups``)
    while the run that owns it is starting, checking or stopping its processes. Once stopped as
    a whole the group is closed: ``start`` refuses and ``check`` raises ``ProcessDied``, so a run
    waiting on its processes ends instead of waiting for ones that are gone."""

    def __init__(self, log_dir: str | os.PathLike | None = None, env: dict | None = None):
        _GROUPS.add(self)
        self._tmp = None
        if log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="robot_imitation-")
            log_dir = self._tmp.name
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ if env is None else env)
        self.procs: dict[str, subprocess.Popen] = {}  # running (or died on their own)
        self.stopped: dict[str, int | None] = {}       # stopped on purpose: exit codes
        self._logs = {}
        self._lock = threading.RLock()
        self.closed = False  # stopped as a whole

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        with self._lock:
            if self.closed:
                raise ProcessDied(f"not starting {name}: its process group was stopped "
                                  f"(logs in {self.log_dir})")
            log = open(self.log_dir / f"{name}.log", "wb")
            env = {**self.env, PARENT_ENV: str(os.getpid())}
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            self.procs[name] = proc
            self._logs[name] = log
            return proc

    def start_node(self, executable: str, name: str | None = None, params: dict | None = None,
                   namespace: str | None = None, extra_args: list | None = None
                   ) -> subprocess.Popen:
        """Start one of the package's nodes with parameters (written as a ros__parameters file)."""
        name = name or executable
        argv = [sys.executable, "-m", "robot_imitation_entry", executable, "--ros-args"]
        if name != executable:
            argv += ["-r", f"__node:={name}"]
        if namespace:
            argv += ["-r", f"__ns:={namespace}"]
        if params:
            path = self.log_dir / f"{name}.params.yaml"
            with open(path, "w", encoding="utf-8") as f:
                yaml.dump({name: {"ros__parameters": params}}, f, Dumper=_ParameterDumper)
            argv += ["--params-file", str(path)]
        argv += list(extra_args or [])
        return self.start(name, argv)

    def start_graph(self, nodes: list, compose=()) -> list[subprocess.Popen]:
        """Start every node of a graph (``graphs.NodeDecl`` list, e.g. ``graphs.record_graph``),
        in order. A node of another package (which only ``ros2 launch`` can start) is refused
        before any process starts. ``compose``: groups of node names that share one process
        each (``nodes.container``), started where the group's first node comes, named after
        its nodes (``mujoco_bridge+scripted_expert``); a node that cannot share one is refused
        before any process starts."""
        for decl in nodes:
            if decl.package != "robot_imitation" or decl.executable not in NODE_MODULES:
                raise ValueError(f"node {decl.name}: {decl.package} {decl.executable} cannot be "
                                 "started here (only this package's nodes; use ros2 launch)")
        groups = _composed(nodes, compose)
        procs = []
        for decl in nodes:
            group = next((g for g in groups if any(decl is d for d in g)), None)
            if group is not None:
                if decl is group[0]:
                    procs.append(self.start_container(group))
                continue
            remaps = [arg for src, dst in decl.remappings for arg in ("-r", f"{src}:={dst}")]
            procs.append(self.start_node(decl.executable, decl.name, dict(decl.parameters),
                                         namespace=decl.namespace, extra_args=remaps))
        return procs

    def start_container(self, decls: list) -> subprocess.Popen:
        """Start the nodes ``decls`` in one process (``nodes.container``), their parameters in
        one file, a section per node; named ``<node>+<node>...``."""
        name = "+".join(d.name for d in decls)
        argv = [sys.executable, "-m", "robot_imitation_entry", "container",
                *(d.executable for d in decls), "--ros-args"]
        path = self.log_dir / f"{name}.params.yaml"
        with open(path, "w", encoding="utf-8") as f:
            yaml.dump({d.name: {"ros__parameters": dict(d.parameters)} for d in decls}, f,
                      Dumper=_ParameterDumper)
        # each node's remappings as rules of that node alone (``<node>:<from>:=<to>``)
        remaps = [arg for d in decls for src, dst in d.remappings
                  for arg in ("-r", f"{d.name}:{src}:={dst}")]
        return self.start(name, argv + ["--params-file", str(path)] + remaps)

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.log_dir / f"{name}.log"
        try:
            return path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    def last_error(self, name: str) -> str:
        """The child's own last error line in its log (a fatal start-up error, the last line
        of a traceback), else its last line; without its ``[name]`` prefix."""
        lines = [ln.strip() for ln in self.log(name).splitlines() if ln.strip()]
        for line in reversed(lines):
            if any(w in line.lower() for w in ("fatal", "error", "exception")):
                break
        else:
            line = lines[-1] if lines else ""
        for prefix in (f"[{name}] fatal:", f"[{name}]"):
            if line.startswith(prefix):
                line = line[len(prefix):].strip()
                break
        return line

    def check(self) -> None:
        """Raise ``ProcessDied`` if a child exited, or the group was stopped as a whole."""
        with self._lock:
            if self.closed:
                raise ProcessDied(f"the processes were stopped (logs in {self.log_dir})")
            procs = list(self.procs.items())
        for name, proc in procs:
            if proc.poll() is not None:
                said = self.last_error(name)
                raise ProcessDied(
                    f"{name} exited with code {proc.returncode}:\n{self.log(name)}",
                    f"{name} exited with code {proc.returncode}" + (f": {said}" if said else "")
                    + f" (log: {self.log_dir / f'{name}.log'})")

    def stop(self, name: str | None = None, timeout: float = 5.0) -> dict:
        """SIGINT, then SIGTERM, then SIGKILL; returns the exit codes (of the processes this
        call stopped). Without ``name``: every process, and the group is closed."""
        with self._lock:
            if name is None:
                self.closed = True
            return self._stop([name] if name else list(self.procs), timeout)

    def _stop(self, names: list, timeout: float) -> dict:
        names = [n for n in names if n in self.procs]
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
            alive = [n for n in names if self.procs[n].poll() is None]
            if not alive:
                break
            for n in alive:
                try:
                    os.killpg(self.procs[n].pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            for n in alive:
                try:
                    self.procs[n].wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        codes = {}
        for n in names:
            codes[n] = self.procs.pop(n).poll()
            self._logs.pop(n).close()
        self.stopped.update(codes)
        return codes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
