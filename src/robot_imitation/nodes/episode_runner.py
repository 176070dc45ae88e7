"""Episode runner: resets the bridge episode after episode and collects the outcomes.

Usable as a library (``EpisodeRunner`` inside a process that has called ``rclpy.init``) and as
the ``episode_runner`` executable, which runs N episodes, prints the success rate and exits.
"""
from __future__ import annotations

import json
import sys
import threading
import time

# the outcome statistics live in a plain module (the no-ROS commands use them); its users here
# keep importing them from this module
from ..learning.outcomes import EpisodeOutcome, summarize, wilson_interval  # noqa: F401
from .common import (LATCHED_QOS, Param, ServiceCaller, SpinSlices, checked_subscription,
                     declare_all, help_requested, init_ros, make_executor, parameter_help, to_sec)

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.node import Node  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402


class EpisodeRunner(Node):
    def __init__(self, bridge: str = "mujoco_bridge", name: str = "episode_runner",
                 context=None):
        super().__init__(name, context=context)
        self.caller = ServiceCaller(self)
        self.bridge = bridge
        self.reset_name = f"{bridge}/reset"
        self._cond = threading.Condition()
        self._status = None
        checked_subscription(self, DiagnosticArray, "episode/status", self._on_status,
                             LATCHED_QOS)

    def _on_status(self, msg: DiagnosticArray) -> None:
        if not msg.status:
            return
        values = {kv.key: kv.value for kv in msg.status[0].values}
        with self._cond:
            self._status = (to_sec(msg.header.stamp), values)
            self._cond.notify_all()

    @property
    def status(self) -> dict:
        """The values of the newest episode status ({} before any)."""
        with self._cond:
            return dict(self._status[1]) if self._status else {}

    def call(self, srv_type, name: str, request=None, timeout: float = 30.0):
        """Call ``name`` and wait for the answer (see ``ServiceCaller``; the node must be
        spinning elsewhere)."""
        return self.caller.call(srv_type, name, request, timeout)

    def set_params(self, node: str, **params) -> None:
        """Set ``params`` on ``node`` through its ``set_parameters`` service; raises
        ``RuntimeError`` naming what it refused."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        req = SetParameters.Request()
        req.parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in params.items()]
        resp = self.call(SetParameters, f"/{node}/set_parameters", req)
        bad = [r.reason for r in resp.results if not r.successful]
        if bad:
            raise RuntimeError(f"{node} refused parameters {params}: {bad}")

    def seed_episodes(self, seed: int) -> None:
        """The episodes of the next resets get seeds ``seed``, ``seed`` + 1, ... (the bridge's
        ``seed`` parameter, which counts from its last change: the episode the bridge began
        when it came up took the first seed of the base it was started with)."""
        self.set_params(self.bridge.lstrip("/"), seed=int(seed))

    def wait_for_service(self, srv_type, name: str, timeout: float = 30.0, alive=None) -> bool:
        """Wait (up to ``timeout`` s) for the server of ``name``; False if it did not appear.
        ``alive``: called between short waits, to raise at once when the process that should
        serve it has died (``ProcessGroup.check``)."""
        deadline = time.monotonic() + timeout
        while True:
            if alive is not None:
                alive()
            left = deadline - time.monotonic()
            if self.caller.ready(srv_type, name, min(max(left, 0.0), 0.25)):
                return True
            if left <= 0:
                return False

    def wait_for_bridge(self, timeout: float = 30.0, alive=None) -> None:
        """Wait for the bridge's reset service (``alive``: see ``wait_for_service``)."""
        if not self.wait_for_service(Trigger, self.reset_name, timeout, alive):
            raise TimeoutError(f"no bridge reset service {self.reset_name} within "
                               f"{timeout} s: is the bridge running (same ROS_DOMAIN_ID)?")

    def wait_settled(self, timeout: float = 30.0, alive=None) -> bool:
        """Wait until the bridge's current episode is done (true), or ``timeout`` (false).
        ``alive``: see ``wait_for_service`` (a process that died ends the wait at once).

        A lockstep bridge runs an episode from its start whenever a controller answers it;
        recording must not begin while that episode may still announce its end, or a
        recorder stopping on `done` would stop on it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._status is None or self._status[1]["done"] != "true":
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if alive is not None:
                    alive()
                self._cond.wait(min(left, 0.25))
        return True

    def reset(self, timeout: float = 30.0) -> str:
        resp = self.call(Trigger, self.reset_name, timeout=timeout)
        if not resp.success:
            raise RuntimeError(f"bridge refused reset: {resp.message}")
        return resp.message

    def run_episode(self, timeout: float = 120.0, alive=None) -> EpisodeOutcome:
        """Reset, then wait until the bridge reports the episode done (``alive``: see
        ``wait_for_service``)."""
        msg = self.reset()
        episode = int(msg.split()[1])
        start = time.monotonic()
        t0 = None
        with self._cond:
            while True:
                st = self._status
                if st is not None and int(st[1]["episode"]) == episode:
                    if t0 is None:
                        t0 = st[0]
                    if st[1]["done"] == "true":
                        v = st[1]
                        return EpisodeOutcome(episode, int(v["seed"]), v["success"] == "true",
                                              int(v["tick"]), float(v["reward"]), st[0] - t0,
                                              time.monotonic() - start, st[0])
                left = timeout - (time.monotonic() - start)
                if left <= 0:
                    raise TimeoutError(f"episode {episode} not done after {timeout} s "
                                       "(is a controller answering the bridge?)")
                if alive is not None:
                    alive()
                self._cond.wait(min(left, 0.25))


class Spinner:
    """Spin nodes in a background thread (for library use).

    A callback that raises is logged (the node's logger, with the exception) and the spinning
    goes on: one bad message must not silence every other subscription of the nodes (the
    exception used to end the thread, and the nodes went deaf until their callers timed out).
    """

    def __init__(self, *nodes):
        self.context = nodes[0].context if nodes else None  # the nodes' context (a SimGraph's)
        self.logger = nodes[0].get_logger() if nodes else None
        self.errors = 0  # callbacks that raised
        self.executor = make_executor("events", self.context)
        for n in nodes:
            self.executor.add_node(n)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        slices = SpinSlices(self.executor, 0.05)
        while not self._stop.is_set() and rclpy.ok(context=self.context):
            try:
                slices.run()
            except Exception as exc:  # noqa: BLE001 - a callback's error, or a shutdown race
                if self._stop.is_set() or not rclpy.ok(context=self.context):
                    return
                self.errors += 1
                if self.logger is not None:
                    self.logger.error(f"a callback failed ({type(exc).__name__}: {exc}); "
                                      f"spinning on", throttle_duration_sec=5.0)

    def stop(self):
        """End the spinning and let go of the nodes: an executor that still holds a node keeps
        it in use, and a node destroyed then kept its publishers on the graph (and in DDS)
        until the executor happened to be garbage collected."""
        self._stop.set()
        self.thread.join(timeout=2.0)
        if not self.thread.is_alive():   # (a callback that never returns keeps them)
            self.executor.shutdown()


def run_episodes(n: int, bridge: str = "mujoco_bridge", timeout: float = 120.0,
                 progress=None, alive=None, context=None, seed: int | None = None
                 ) -> list[EpisodeOutcome]:
    """Run ``n`` episodes against a running bridge (rclpy initialised: the default context,
    or ``context``); ``alive``: see ``EpisodeRunner.wait_for_service``. ``seed``: episode k
    gets seed ``seed`` + k (None: the bridge's own sequence goes on)."""
    runner = EpisodeRunner(bridge, context=context)
    spinner = Spinner(runner)
    try:
        runner.wait_for_bridge(alive=alive)
        if seed is not None:
            runner.seed_episodes(seed)
        outcomes = []
        for _ in range(n):
            outcomes.append(runner.run_episode(timeout, alive))
            if progress:
                progress(outcomes)
        return outcomes
    finally:
        spinner.stop()
        runner.destroy_node()


class EpisodeRunnerMain:
    """The ``episode_runner`` executable's parameters (``main`` declares them on a node of its
    own, then runs an ``EpisodeRunner``)."""

    NODE_NAME = "episode_runner"
    PARAMETERS = (
        Param("episodes", 10, "episodes to run", min_value=1),
        Param("bridge", "mujoco_bridge", "bridge node name"),
        Param("output", "", "write the outcomes to this JSON file"),
    )


def main(args=None) -> int:
    if help_requested(sys.argv if args is None else args):
        print(parameter_help(EpisodeRunnerMain))
        return 0
    if not init_ros(EpisodeRunnerMain.NODE_NAME, args):
        return 1
    try:
        node = rclpy.create_node("episode_runner_params")
        try:
            p = declare_all(node, EpisodeRunnerMain.PARAMETERS)
        except Exception as exc:  # noqa: BLE001 - a bad value: one line, as the nodes' run()
            print(f"[{EpisodeRunnerMain.NODE_NAME}] fatal: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
            return 1
        n, bridge, out = p["episodes"], p["bridge"], p["output"]
        node.destroy_node()
        res = summarize(run_episodes(n, bridge, progress=lambda o: print(
            f"episode {o[-1].episode} seed {o[-1].seed}: "
            f"{'success' if o[-1].success else 'failure'} in {o[-1].ticks} ticks", flush=True)))
        print(f"success {res['successes']}/{res['episodes']} = {res['success_rate']:.1%} "
              f"(95% CI {res['ci95'][0]:.1%}..{res['ci95'][1]:.1%})")
        if out:
            with open(out, "w", encoding="utf-8") as f:
                json.dump(res, f, indent=2)
        return 0
    finally:
        rclpy.try_shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
