"""Episode runner: resets the bridge episode after episode and collects the outcomes.

Usable as a library (``EpisodeRunner`` inside a process that has called ``rclpy.init``) and as
the ``episode_runner`` executable, which runs N episodes, prints the success rate and exits.
"""
from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

# the outcome statistics live in a plain module (the no-ROS commands use them); its users here
# keep importing them from this module
from ..learning.outcomes import EpisodeOutcome, summarize, wilson_interval  # noqa: F401
from ..paths import write_text_whole
from .common import (LATCHED_QOS, Param, ServiceCaller, ShutdownRequest, SpinSlices,
                     checked_subscription, declare_all, help_requested, init_ros, make_executor,
                     parameter_help, to_sec)

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


def check_output(out: str) -> str | None:
    """What is wrong with ``output`` (None: nothing): checked at start, before any episode
    runs (found only when writing, the outcomes of every episode were lost). Its folder must
    exist and take a file, and the path must not be a folder."""
    path = Path(out)
    folder = path.parent
    if path.is_dir():
        return f"output {out!r} is a folder: give the JSON file to write"
    if not folder.is_dir():
        return f"output {out!r}: {str(folder)!r} " + (
            "is not a folder" if folder.exists() else "does not exist (no folder is made)")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"output {out!r}: the folder {str(folder)!r} is not writable ({exc.strerror or exc})"
    return None


def _fatal(text: str) -> None:
    print(f"[{EpisodeRunnerMain.NODE_NAME}] fatal: {text}", file=sys.stderr, flush=True)


class _Stopped(Exception):
    """SIGINT or SIGTERM during the run (``ShutdownRequest``)."""


def main(args=None) -> int:
    from rclpy.signals import SignalHandlerOptions

    if help_requested(sys.argv if args is None else args):
        print(parameter_help(EpisodeRunnerMain))
        return 0
    # a signal ends the run between two short waits, the outcomes so far written (rclpy's own
    # handler shut the context down, and the runner waited 30 s for a reset answer, then died)
    stop = ShutdownRequest(EpisodeRunnerMain.NODE_NAME)
    stop.install()
    if not init_ros(EpisodeRunnerMain.NODE_NAME, args,
                    signal_handler_options=SignalHandlerOptions.NO):
        return 1
    try:
        # named as the executable: a parameter file's `episode_runner:` section is its (the
        # node named episode_runner_params took none of it, and the run went on with defaults)
        node = rclpy.create_node(EpisodeRunnerMain.NODE_NAME)
        try:
            p = declare_all(node, EpisodeRunnerMain.PARAMETERS)
        except Exception as exc:  # noqa: BLE001 - a bad value: one line, as the nodes' run()
            _fatal(f"{type(exc).__name__}: {exc}")
            return 1
        n, bridge, out = p["episodes"], p["bridge"], p["output"]
        node.destroy_node()
        problem = check_output(out) if out else None
        if problem:
            _fatal(problem)
            return 1
        done: list[EpisodeOutcome] = []  # the outcomes so far: kept whatever ends the run

        def progress(outcomes):
            done[:] = outcomes
            o = outcomes[-1]
            print(f"episode {o.episode} seed {o.seed}: "
                  f"{'success' if o.success else 'failure'} in {o.ticks} ticks", flush=True)

        def alive():
            if stop.requested:
                raise _Stopped("stopped by a signal")

        error, code = None, 0
        try:
            run_episodes(n, bridge, progress=progress, alive=alive)
        except _Stopped as exc:  # the user's stop: exit 130, as a Ctrl-C at start-up
            error, code = str(exc), 130
        except (TimeoutError, RuntimeError, OSError, ValueError) as exc:
            # no bridge of that name, an episode that never ends, a refused reset
            error, code = f"fatal: bridge {bridge!r}: {exc}", 1
        return _report(done, n, out, error, code)
    finally:
        rclpy.try_shutdown()


def _report(done: list, n: int, out: str, error: str | None, code: int) -> int:
    """Print (and write to ``out``) the outcomes of the episodes ``done``; ``error``: what
    ended the run early (one line), ``code`` the exit code then."""
    if error and done:
        error += f" (after {len(done)} of {n} episodes)"
    if done:
        res = summarize(done)
        print(f"success {res['successes']}/{res['episodes']} = {res['success_rate']:.1%} "
              f"(95% CI {res['ci95'][0]:.1%}..{res['ci95'][1]:.1%})", flush=True)
        if out:
            text = json.dumps(res, indent=2)
            try:
                write_text_whole(out, text)
                if error:
                    error += f": the outcomes of those are in {out}"
            except OSError as exc:  # gone or full since the start: the outcomes go to stdout
                print(text, flush=True)
                _fatal(f"output {out!r} not written ({exc.strerror or exc}): the outcomes are "
                       "printed above")
                code = code or 1
    if error:
        print(f"[{EpisodeRunnerMain.NODE_NAME}] {error}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
