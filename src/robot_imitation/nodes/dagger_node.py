"""DAgger node: whole DAgger runs (expert demonstrations, BC, DAgger iterations) started over ROS.

Each run is the same loop as `robot-imitation dagger`: it starts the bridge, the scripted
expert, the policy node, the command mux and the supervisor in one child process (`compose`;
false: one each), the recorder in another, records, retrains
(in this process) and evaluates, and writes <out>/run_<timestamp> (dagger.json, the datasets,
train_<i>/ checkpoints, logs/). The run's processes talk on a private ROS domain of their own
(this host only), never on this node's graph, unless `join_ros_graph` is true.

Services (std_srvs/Trigger):
  ~/run     start a run in a background thread with the current parameters (a client sets them
            first, e.g. `ros2 param set /dagger iterations 5`); answers at once with
            "dagger started: <run dir>", or refuses while a run is going on.
  ~/cancel  stop the running run at its next iteration boundary (after the demonstrations, or
            once the iteration under way is evaluated); what it did so far stays in its folder.
Publishes:
  ~/progress   diagnostic_msgs/DiagnosticArray with one status (message = state; values state,
               stage (the run's latest log line), iteration (0: BC), iterations, beta
               (mixture), expert_share (of the iteration's steps, the expert drove),
               labels (expert labels trained on), success_rate, ci95_low, ci95_high and
               checkpoint (of the latest iteration), run_dir, elapsed, and error when failed)
               at every stage of the run and after each iteration's evaluation; reliable,
               transient local, depth 1 (a late subscriber gets the newest state). The same
               status goes to /diagnostics.
  ~/checkpoint std_msgs/String: the final policy's checkpoint of the last finished run (absolute
               path); reliable, transient local, depth 1.
A failed run (bad settings, a process that died, an error while training) publishes state
`failed` with the error and logs it; the node keeps serving.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from .common import LATCHED_QOS, Param, TorchThreads, declare_all, params_of, run
from .runs import new_run_dir, number, progress_message, publish_safely

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.node import Node  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from ..ros.graph import SimGraph  # noqa: E402
from ..algorithms.dagger_settings import DaggerSettings, to_config  # noqa: E402
from ..dagger import DaggerConfig, run_dagger  # noqa: E402
from ..policies import available_policies  # noqa: E402
from ..ros.launcher import stop_all_groups  # noqa: E402

# Command-line arguments that configure a node: this node's alone (see split_ros_args).
NODE_ARGS = ("-r", "--remap", "-p", "--param", "--params-file")
# Seconds the node's shutdown waits for a run to end once its processes are stopped (within
# the 5 s ros2 launch and the suite's launcher give a node between SIGINT and SIGTERM).
CLOSE_JOIN = 3.0
KEYS = ("state", "stage", "iteration", "iterations", "beta", "expert_share", "labels",
        "success_rate", "ci95_low", "ci95_high", "checkpoint", "run_dir", "elapsed")


def split_ros_args(argv: list) -> tuple[list, list]:
    """(the process's arguments, this node's arguments) from a command line.

    A run's helper nodes (the episode runners driving the bridge) live in this process, and
    command-line remappings and parameters apply to every node of a process: a node name given
    to this node (``-r __node:=dagger``, as ``ros2 launch`` passes ``name=``), a namespace or a
    parameter file would rename and reconfigure them too. So those become this node's own
    arguments; the rest (logging, enclave) stays the process's.
    """
    process, node, in_ros, i = [], [], False, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--ros-args":
            in_ros = True
        elif arg == "--":
            in_ros = False
        elif in_ros and arg in NODE_ARGS and i + 1 < len(argv):
            node += ["--ros-args", arg, argv[i + 1]]
            i += 2
            continue
        process.append(arg)
        i += 1
    return process, node


# the parameters of the node itself (where and how it runs a run); every other one is a
# DAgger setting (``algorithms.dagger_settings.DaggerSettings``, made from DaggerConfig's fields)
NODE_ONLY = (
    Param("out", "runs/dagger", "output folder: each run writes out/run_<timestamp>"),
    Param("cpu_threads", 0, "threads of CPU training (torch.set_num_threads); 0: torch's "
          "default, one per core. Fewer leave cores to the run's nodes", min_value=0,
          max_value=1024),
    Param("join_ros_graph", False, "run a run's simulation (bridge, expert, policy, mux, "
          "recorder) on this node's ROS domain, e.g. to watch it in RViz or Foxglove; by "
          "default each run gets a private domain of its own, this host only, so that its "
          "simulated commands never reach a real robot's controllers"),
    Param("compose", True, "a run's bridge, expert, policy node, mux and supervisor in one "
          "process (ROS 2 composition: the lockstep about a third faster, the same episodes); "
          "false: a process each. The recorder runs apart either way"),
)


def _parameters() -> tuple:
    """The DAgger node's parameters: one per DAgger setting (default, limits and description
    from DaggerConfig's fields; ``hold``, ``patience``, ``train_steps`` and ``device`` for its
    supervisor and training mappings; ``_settings`` turns them back into a DaggerConfig), then
    the node's own."""
    # the policy types known when the node starts (as the trainer's): a value set at run time
    # is refused then, not by the run it starts
    return params_of(DaggerSettings, choices={"policy": available_policies()}) + NODE_ONLY


class DaggerNode(Node):
    NODE_NAME = "dagger"
    PARAMETERS = _parameters()

    def __init__(self, cli_args: list | None = None):
        super().__init__(self.NODE_NAME, cli_args=cli_args)
        declare_all(self, self.PARAMETERS)  # values outside a setting's limits refused
        self._settings_params = {p.name: p for p in self.PARAMETERS
                                 if p.name in DaggerSettings.__dataclass_fields__}

        self.pub_progress = self.create_publisher(DiagnosticArray, "~/progress", LATCHED_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.pub_checkpoint = self.create_publisher(String, "~/checkpoint", LATCHED_QOS)
        self.create_service(Trigger, "~/run", self._srv_run)
        self.create_service(Trigger, "~/cancel", self._srv_cancel)

        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._threads = TorchThreads()   # cpu_threads 0: torch's default in every run
        self._busy = False  # a run is under way (set by ~/run, cleared with its final state)
        self._cancel = threading.Event()
        self._closing = threading.Event()  # the node is shutting down
        self._status: dict = {}
        self.abandoned = False  # closed while its run was still busy (see close)
        self.get_logger().info("dagger ready: set parameters, then call ~/run")

    # ----------------------------------------------------------------- parameters
    def _settings(self) -> tuple[str, DaggerConfig]:
        """(out, DAgger configuration) from the current parameters."""
        values = {name: param.setting_value(self.get_parameter(name).value)
                  for name, param in self._settings_params.items()}
        return self.get_parameter("out").value, to_config(values)

    @staticmethod
    def _problem(cfg: DaggerConfig) -> str | None:
        """What makes ``cfg`` unusable before anything starts (unknown task or spec), if any."""
        from ..sim.tasks import TaskConfig
        from ..spec import Spec

        try:
            TaskConfig.load(cfg.task)
            Spec.load(cfg.spec) if cfg.spec else Spec.for_task(cfg.task)
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            return str(exc)
        return None

    # ----------------------------------------------------------------- services
    def _srv_run(self, req, resp):
        with self._lock:
            if self._busy:
                s = self._status
                resp.success = False
                resp.message = (f"a DAgger run is already running: {s.get('run_dir')} "
                                f"(iteration {s.get('iteration', '-')}/{s.get('iterations')}, "
                                f"{s.get('stage', '')}); wait for it or call ~/cancel")
                return resp
            try:
                out, cfg = self._settings()
            except ValueError as exc:  # a value outside DaggerConfig's limits (SettingError)
                self.get_logger().error(f"not running DAgger: {exc}")
                resp.success, resp.message = False, f"not running DAgger: {exc}"
                return resp
            run_dir = None
            problem = self._problem(cfg)
            if problem is None:
                try:
                    run_dir = new_run_dir(Path(out))
                except OSError as exc:
                    problem = f"cannot create a run folder in {out}: {exc}"
            if problem:
                self._status = {"state": "failed", "stage": "not started",
                                "iterations": cfg.iterations, "run_dir": "", "error": problem}
                self._publish()
                self.get_logger().error(f"not running DAgger: {problem}")
                resp.success, resp.message = False, f"not running DAgger: {problem}"
                return resp
            self._cancel.clear()
            self._busy = True
            self._status = {"state": "running", "stage": "starting",
                            "iterations": cfg.iterations, "run_dir": str(run_dir),
                            "started": time.monotonic()}
            self._publish()
            self._thread = threading.Thread(target=self._run, name="dagger", daemon=True,
                                            args=(run_dir, cfg))
            self._thread.start()
        self.get_logger().info(f"DAgger into {run_dir}: {asdict(cfg)}")
        resp.success, resp.message = True, f"dagger started: {run_dir}"
        return resp

    def _srv_cancel(self, req, resp):
        with self._lock:
            if not self._busy:
                resp.success, resp.message = False, "no DAgger run is running"
                return resp
            self._cancel.set()
            run_dir = self._status.get("run_dir")
        resp.success = True
        resp.message = (f"cancelling {run_dir}: it stops at its next iteration boundary "
                        "(after the demonstrations, or once the iteration under way is "
                        "evaluated)")
        self.get_logger().info(resp.message)
        return resp

    # ----------------------------------------------------------------- the run
    def _run(self, run_dir: Path, cfg: DaggerConfig) -> None:
        results = None
        try:
            self._threads.set(self.get_parameter("cpu_threads").value)
            with SimGraph(join=self.get_parameter("join_ros_graph").value) as graph:
                results = run_dagger(run_dir, cfg, log=self._on_log,
                                     on_iteration=self._on_iteration,
                                     should_stop=self._cancel.is_set, graph=graph,
                                     abort=self._closing.is_set,
                                     compose=self.get_parameter("compose").value)
            state, values = ("cancelled" if results.get("stopped") else "done"), {}
        except Exception as exc:  # noqa: BLE001 - a failed run is reported, never fatal
            state, values = "failed", {"error": f"{type(exc).__name__}: {exc}"}
            self.get_logger().debug(traceback.format_exc())
        if self._closing.is_set():
            return  # ended by the node's shutdown (its processes stopped): no one to tell
        if state == "done":
            final = str(Path(results["iterations"][-1]["checkpoint"]).resolve())
            values = {"checkpoint": final, "stage": f"done: {run_dir / 'dagger.json'}"}
            # the checkpoint first: whoever sees `done` finds it latched already
            publish_safely(self, self.pub_checkpoint, String(data=final))
            self.get_logger().info(f"DAgger done: {len(results['iterations'])} iteration(s) "
                                   f"(BC included); final checkpoint {final}; results in "
                                   f"{run_dir / 'dagger.json'}")
        elif state == "cancelled":
            values = {"stage": "cancelled"}
            self.get_logger().warning(f"DAgger cancelled after {len(results['iterations'])} "
                                      f"iteration(s): {run_dir}")
        else:
            self.get_logger().error(f"DAgger failed ({run_dir}): {values['error']}")
        self._finish(state, **values)

    def _on_log(self, line: str) -> None:
        """run_dagger's log lines: logged, and published as the run's stage."""
        text = str(line).removeprefix("[dagger] ")
        self.get_logger().info(text)
        with self._lock:
            self._status["stage"] = text
        self._publish()

    def _on_iteration(self, row: dict) -> None:
        with self._lock:
            self._status.update(iteration=row["iteration"], beta=row["beta"],
                                expert_share=row["expert_share"], labels=row["labels"],
                                success_rate=row["success_rate"],
                                ci95_low=row["ci95"][0], ci95_high=row["ci95"][1],
                                checkpoint=str(Path(row["checkpoint"]).resolve()))
        self._publish()

    def _finish(self, state: str, **values) -> None:
        """The run's final state: published, and the node free for the next ~/run."""
        with self._lock:
            self._status.update(state=state, **values)
            self._busy = False
        self._publish()

    # ----------------------------------------------------------------- publishing
    def _publish(self) -> None:
        with self._lock:
            s = dict(self._status)
        values = {"state": s["state"], "stage": str(s.get("stage", "")),
                  "iteration": "" if s.get("iteration") is None else str(s["iteration"]),
                  "iterations": str(s.get("iterations", "")),
                  "labels": str(s.get("labels", 0)),
                  "checkpoint": s.get("checkpoint", ""), "run_dir": s.get("run_dir", "")}
        for key in ("beta", "expert_share", "success_rate", "ci95_low", "ci95_high"):
            values[key] = number(s.get(key))
        values["elapsed"] = (f"{time.monotonic() - s['started']:.1f}" if "started" in s
                             else "0")
        msg = progress_message(self, "dagger", s, values, KEYS)
        publish_safely(self, self.pub_progress, msg)
        publish_safely(self, self.pub_diag, msg)

    def close(self) -> None:
        """At shutdown: a run under way cannot stop before its next iteration boundary, so its
        processes are stopped here (none outlives the node); the run itself ends with it: its
        waits on those processes end at once (``ProcessGroup.check``), and a policy training
        stops at its next progress report (``abort``: within ``log_every`` steps). A run still
        busy after that (a service call it cannot cut short, a longer training step) is left to
        the process's exit (``abandoned``)."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._closing.set()
            self._cancel.set()
            # (printed: the context is shut down already, rosout would complain)
            print(f"[{self.get_name()}] shutting down during a DAgger run: stopping its "
                  f"processes ({self._status.get('run_dir')})", file=sys.stderr, flush=True)
            stop_all_groups(timeout=3.0)
            thread.join(timeout=CLOSE_JOIN)
            stop_all_groups(timeout=3.0)  # any the run started meanwhile
            if thread.is_alive():
                self.abandoned = True
                print(f"[{self.get_name()}] the run is still busy (training, or a service "
                      "call it cannot cut short): exiting without it", file=sys.stderr, flush=True)


def main(args=None) -> int:
    process_args, node_args = split_ros_args(list(sys.argv if args is None else args))

    nodes = []

    class Dagger(DaggerNode):
        def __init__(self):
            super().__init__(cli_args=node_args)
            nodes.append(self)

    code = run(Dagger, process_args)
    if any(n.abandoned for n in nodes):
        # a thread still running a run's code (its helper node's executor among it) must not
        # meet the interpreter's teardown (an abort in C++): leave at once, all else closed
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
