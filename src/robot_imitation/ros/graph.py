"""Where a simulated run talks: a private ROS 2 graph of its own, unless asked otherwise.

The command line's simulated runs (``demo``, ``record``, ``evaluate --ros``, ``dagger``,
``pipeline``, ``make demo``) and the DAgger node's runs start a simulated robot, controllers and
a policy that publish ``/joint_states`` and ``/arm_controller/commands``. On a robot's computer,
on the shell's ``ROS_DOMAIN_ID``, those commands would reach the real controller, and two runs
on one machine would mix. So by default a run gets a ROS domain that nothing on this machine
uses (no DDS participant bound to it, no other run holding it), limited to this host
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``); its child processes and the run's own nodes (an
rclpy context of their own) use it. ``join=True`` (the command line's ``--join-ros-graph``)
runs on the shell's graph instead, to watch a run in RViz or Foxglove.

A domain is in use when a DDS participant of it is bound to its discovery port (the RTPS
port mapping: 7400 + 250 * domain + 10 + 2 * participant, as Fast DDS and Cyclone DDS bind
them) or another run of this suite holds its lock file (taken before any participant exists).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import tempfile
from pathlib import Path

# Domain IDs usable on Linux without touching the ephemeral port range (the ROS 2 docs).
SAFE_DOMAINS = range(1, 102)
PARTICIPANTS_CHECKED = 10  # participant indices whose port is probed per domain


class GraphError(RuntimeError):
    pass


def domain_in_use(domain: int) -> bool:
    """Whether a DDS participant on this host is bound to ``domain``'s discovery ports."""
    for participant in range(PARTICIPANTS_CHECKED):
        port = 7400 + 250 * domain + 10 + 2 * participant
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
        finally:
            sock.close()
    return False


def _lock(domain: int):
    """The lock file of ``domain`` (an open file holding an exclusive lock), or None."""
    path = Path(tempfile.gettempdir()) / f"robot_imitation-ros-domain-{domain}.lock"
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


class SimGraph:
    """The ROS graph of one simulated run: its domain, the environment of its child processes
    and an rclpy context for the run's own nodes. Close it (or use ``with``) when the run ends."""

    def __init__(self, join: bool = False):
        self.private = not join
        self._lock_file = None
        self._context = None
        shell = os.environ.get("ROS_DOMAIN_ID", "")
        self.shell_domain = int(shell) if shell.strip().isdigit() else 0
        if join:
            self.domain = self.shell_domain
            self.env = dict(os.environ)
            return
        self.domain = self._pick(exclude={self.shell_domain})
        self.env = dict(os.environ, ROS_DOMAIN_ID=str(self.domain),
                        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
        self.env.pop("ROS_STATIC_PEERS", None)

    def _pick(self, exclude: set) -> int:
        # start somewhere that depends on the process, so that runs started together try
        # different domains first; the lock settles any tie
        domains = list(SAFE_DOMAINS)
        start = os.getpid() % len(domains)
        for domain in domains[start:] + domains[:start]:
            if domain in exclude:
                continue
            lock = _lock(domain)
            if lock is None:
                continue
            if domain_in_use(domain):
                lock.close()
                continue
            self._lock_file = lock
            return domain
        raise GraphError(f"no free ROS domain among {SAFE_DOMAINS.start}.."
                         f"{SAFE_DOMAINS.stop - 1} on this machine: stop some ROS processes, or "
                         "run on your own graph with --join-ros-graph")

    def describe(self) -> str:
        if self.private:
            return (f"a private ROS graph: domain {self.domain}, this host only "
                    "(--join-ros-graph to run on the shell's graph and watch it)")
        return f"the shell's ROS graph (domain {self.domain}): visible to every node on it"

    @property
    def context(self):
        """An rclpy context on this graph's domain (initialized on first use)."""
        if self._context is None:
            from ..paths import ensure_ros_environment

            ensure_ros_environment()
            import rclpy
            from rclpy.context import Context
            from rclpy.signals import SignalHandlerOptions

            ctx = Context()
            # rcl takes the discovery range from the environment when a context starts
            saved = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE")
            os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = self.env.get(
                "ROS_AUTOMATIC_DISCOVERY_RANGE", saved or "SUBNET")
            try:
                # no signal handlers: the process that owns the run handles its signals; no
                # command-line arguments: a node's `-r __node:=...` or `-p` given to this
                # process are not the run's
                rclpy.init(args=[], context=ctx, domain_id=self.domain,
                           signal_handler_options=SignalHandlerOptions.NO)
            finally:
                if saved is None:
                    os.environ.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
                else:
                    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = saved
            self._context = ctx
        return self._context

    def close(self) -> None:
        if self._context is not None:
            self._context.try_shutdown()
            self._context = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> "SimGraph":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
