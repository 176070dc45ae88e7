"""Trainer node: Behavior Cloning runs started over ROS, progress and checkpoints as topics.

Services (std_srvs/Trigger):
  ~/train   start a run in a background thread with the current parameters (a client sets
            them first, e.g. `ros2 param set /trainer steps 20000`); answers at once with
            "training started: <run dir>" (each run writes <out>/run_<timestamp>), or refuses
            while a run is going on.
  ~/cancel  stop the running run at its next progress report (within `log_every` steps), or
            after the closed-loop episode under way when it is evaluating (the evaluation
            left unfinished counts for nothing).
Publishes:
  ~/progress   diagnostic_msgs/DiagnosticArray with one status (message = state; values state,
               step, total, train_loss, val_loss, success_rate, run_dir, elapsed, and error
               (failed) or checkpoint, best_val_loss, best_success_rate (done)); at most
               `progress_rate` per second, evaluations and state changes always; reliable,
               transient local, depth 1 (a late subscriber gets the newest state). The same
               status goes to /diagnostics.
  ~/checkpoint std_msgs/String: the best checkpoint of the last finished run (absolute path);
               reliable, transient local, depth 1, so policy nodes started later still get it.
An unknown `task` or `robot` is refused at start and when set, as `robot-imitation train`
refuses it; ~/train refuses, with the reason, what the command line refuses before training
(a device that is not there, a task or robot that does not fit the dataset's spec). A failed
run (bad dataset, bad settings, an error while training) publishes state `failed` with the
error and logs it; the node keeps serving. An empty list given at start (`sources: []`) is
the empty list; `hidden: []` is refused at start.
Ctrl-C (SIGINT, SIGTERM) stops a running run as ~/cancel does and waits for it to get there
(state `cancelled`), then exits 0; further signals are ignored (SIGKILL aborts).
"""
from __future__ import annotations

import dataclasses
import math
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

from ..learning.trainer import TrainConfig, Trainer, TrainingStopped  # noqa: E402
from ..policies import available_policies  # noqa: E402


class Cancelled(Exception):
    """Raised from the progress callback to end a run that ~/cancel asked to stop."""


# the parameters of the node itself; every other one is a TrainConfig field (``params_of``)
NODE_ONLY = (
    Param("dataset", "datasets/demos", "dataset folder to train on (recorded by "
          "episode_recorder)"),
    Param("spec", "", "observation/action spec (config/specs name or path); empty: the "
          "dataset's"),
    Param("out", "runs/train", "output folder: each run writes out/run_<timestamp>"),
)
NODE_ONLY_AFTER = (
    Param("cpu_threads", 0, "threads of CPU training (torch.set_num_threads); 0: torch's "
          "default, one per core. Fewer leave cores to other nodes, and avoid "
          "oversubscription on a loaded machine", min_value=0, max_value=1024),
    Param("progress_rate", 10.0, "most ~/progress messages per second (evaluations and "
          "state changes are always published)", min_value=0.1, max_value=1000.0),
)


def _loads(load):
    """A ``Param`` check: why a task or robot name is not one ``load`` finds (its one line, as
    the command line says it), or None; empty: none given."""
    def problem(name) -> str | None:
        if not name:
            return None
        try:
            load(name)
        except Exception as exc:  # noqa: BLE001 - ModelError, a YAML error: said, not raised
            return str(exc)
        return None
    return problem


def _task(name) -> None:
    from ..sim.tasks import TaskConfig

    TaskConfig.load(name)


def _robot(name) -> None:
    from ..sim.robot import RobotConfig

    RobotConfig.load(name)


# checks of TrainConfig fields beyond their limits: the command line's before it trains
CHECKS = {"task": _loads(_task), "robot": _loads(_robot)}


def _parameters() -> tuple:
    """The trainer's parameters: its own, and one per TrainConfig field (default, limits and
    description from the field; the policy types known when the node starts)."""
    settings = params_of(TrainConfig, choices={"policy": available_policies()})
    settings = tuple(dataclasses.replace(p, check=CHECKS[p.name]) if p.name in CHECKS else p
                     for p in settings)
    return NODE_ONLY + settings + NODE_ONLY_AFTER


class TrainerNode(Node):
    NODE_NAME = "trainer"
    PARAMETERS = _parameters()

    def __init__(self):
        super().__init__(self.NODE_NAME)
        declare_all(self, self.PARAMETERS)
        self._settings_params = {p.name: p for p in self.PARAMETERS
                                 if p.name in TrainConfig.__dataclass_fields__}

        self.pub_progress = self.create_publisher(DiagnosticArray, "~/progress", LATCHED_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.pub_checkpoint = self.create_publisher(String, "~/checkpoint", LATCHED_QOS)
        self.create_service(Trigger, "~/train", self._srv_train)
        self.create_service(Trigger, "~/cancel", self._srv_cancel)

        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._busy = False  # a run is under way (set by ~/train, cleared with its final state)
        self._cancel = threading.Event()
        self._status: dict = {}
        self._last_publish = 0.0
        self._threads = TorchThreads()   # cpu_threads 0: torch's default in every run
        self.get_logger().info("trainer ready: set parameters, then call ~/train")

    # ----------------------------------------------------------------- parameters
    def _settings(self) -> tuple[str, str | None, str, TrainConfig]:
        """(dataset, spec, out, training configuration) from the current parameters."""
        p = {name: param.setting_value(self.get_parameter(name).value)
             for name, param in self._settings_params.items()}
        cfg = TrainConfig.from_dict(p)
        spec = self.get_parameter("spec").value or None
        return (self.get_parameter("dataset").value, spec, self.get_parameter("out").value, cfg)

    # ----------------------------------------------------------------- services
    def _srv_train(self, req, resp):
        try:
            return self._start(resp)
        except Exception as exc:  # noqa: BLE001 - never fatal: the client gets the reason
            self.get_logger().debug(traceback.format_exc())
            return self._refuse(resp, f"{type(exc).__name__}: {exc}")

    def _refuse(self, resp, problem: str):
        self.get_logger().error(f"not training: {problem}")
        resp.success, resp.message = False, f"not training: {problem}"
        return resp

    def _start(self, resp):
        with self._lock:
            if self._busy:
                s = self._status
                resp.success = False
                resp.message = (f"a training run is already running: {s.get('run_dir')} (step "
                                f"{s.get('step', 0)}/{s.get('total', '?')}); wait for it or "
                                "call ~/cancel")
                return resp
            try:
                dataset, spec, out, cfg = self._settings()
            except ValueError as exc:  # a value outside TrainConfig's limits (SettingError)
                return self._refuse(resp, str(exc))
            problem, run_dir = self._problem(dataset, spec, cfg), None
            if not problem:
                try:
                    run_dir = new_run_dir(Path(out))
                except OSError as exc:
                    problem = f"cannot create a run folder in {out}: {exc}"
            if problem:
                self._status = {"state": "failed", "step": 0, "total": cfg.steps,
                                "run_dir": "", "error": problem}
                self._publish(force=True)
                return self._refuse(resp, problem)
            self._cancel.clear()
            self._status = {"state": "running", "step": 0, "total": cfg.steps,
                            "run_dir": str(run_dir), "train_loss": None, "val_loss": None,
                            "success_rate": None, "started": time.monotonic()}
            self._thread = threading.Thread(target=self._train, name="training", daemon=True,
                                            args=(dataset, spec, run_dir, cfg))
            self._thread.start()
            self._busy = True
            self._publish(force=True)
        self.get_logger().info(f"training on {dataset} into {run_dir}: {asdict(cfg)}")
        resp.success, resp.message = True, f"training started: {run_dir}"
        return resp

    @staticmethod
    def _problem(dataset: str, spec: str | None, cfg: TrainConfig) -> str | None:
        """What `robot-imitation train` refuses before training, if any: no dataset folder, a
        device that is not there, an unknown task or robot, a task or robot that does not fit
        the dataset's spec. A dataset whose spec cannot be read is left to the run, which fails
        naming it (state `failed`)."""
        from ..data.dataset import dataset_spec
        from ..learning.trainer import resolve_device

        if not dataset:
            return "the dataset parameter is empty"
        if not Path(dataset).is_dir():
            return f"dataset {dataset}: no such folder"
        try:
            resolve_device(cfg.device)
        except (ValueError, RuntimeError) as exc:
            return str(exc)
        problem = CHECKS["task"](cfg.task) or CHECKS["robot"](cfg.robot)
        if problem:
            return problem
        try:
            spec_obj = dataset_spec(Path(dataset), spec)
        except Exception:  # noqa: BLE001 - the run says what is wrong with the dataset
            return None
        try:
            if cfg.robot:  # its limits fit the spec's actions (LimitsError naming both)
                from ..deploy.limits import robot_limits

                robot_limits(cfg.robot, spec_obj)
            if cfg.task and cfg.eval_episodes:
                from ..learning.evaluation import task_mismatch

                problem = task_mismatch(spec_obj, cfg.task, "gym")
                if problem:
                    return (f"spec {spec_obj.name} {problem} (task is where the policy is "
                            "evaluated)")
        except Exception as exc:  # noqa: BLE001 - said, as the command line says it
            return str(exc)
        return None

    def _srv_cancel(self, req, resp):
        with self._lock:
            if not self._busy:
                resp.success, resp.message = False, "no training run is running"
                return resp
            self._cancel.set()
            run_dir = self._status.get("run_dir")
        resp.success = True
        resp.message = (f"cancelling {run_dir}: it stops at its next progress report "
                        "(within log_every steps), or after the evaluation's episode under way")
        self.get_logger().info(resp.message)
        return resp

    # ----------------------------------------------------------------- the run
    def _train(self, dataset: str, spec: str | None, run_dir: Path, cfg: TrainConfig) -> None:
        from ..data.dataset import build_dataset

        result = None
        try:
            threads = self._threads.set(self.get_parameter("cpu_threads").value)
            self.get_logger().info(f"training on CPU threads: {threads}")
            data = build_dataset(dataset, spec=spec, val_fraction=cfg.val_fraction,
                                 seed=cfg.seed, sources=cfg.sources or None,
                                 include_interrupted=cfg.include_interrupted)
            if self._cancel.is_set():
                raise Cancelled()
            trainer = Trainer(data, run_dir, cfg, log=self.get_logger().info,
                              progress=self._on_progress, stop=self._cancel.is_set)
            result = trainer.run()
            state, values = "done", {}
        except (Cancelled, TrainingStopped):
            state, values = "cancelled", {}
        except Exception as exc:  # noqa: BLE001 - a failed run is reported, never fatal
            state, values = "failed", {"error": f"{type(exc).__name__}: {exc}"}
            self.get_logger().debug(traceback.format_exc())
        finally:
            try:
                if run_dir.is_dir() and not any(run_dir.iterdir()):
                    run_dir.rmdir()  # a run that failed before writing anything
            except OSError:
                pass
        if state == "done":
            best = str(Path(result["best"]).resolve())
            values = {"step": result["steps"], "checkpoint": best,
                      "best_val_loss": result["best_val_loss"],
                      "best_success_rate": result["best_success_rate"]}
            # the checkpoint first: whoever sees `done` finds it latched already
            publish_safely(self, self.pub_checkpoint, String(data=best))
            success = result["best_success_rate"]
            self.get_logger().info(
                f"training done: {result['steps']} steps, "
                + (f"best val loss {result['best_val_loss']:.4g}"
                   if math.isfinite(result["best_val_loss"]) else "no validation episodes")
                + (f", best success {success:.0%}" if success is not None else "")
                + f"; best checkpoint {best}")
        elif state == "cancelled":
            self.get_logger().warning(
                f"training cancelled at step {self._status.get('step')}: {run_dir}")
        else:
            self.get_logger().error(f"training failed ({run_dir}): {values['error']}")
        self._finish(state, **values)

    def _on_progress(self, step: int, total: int, row: dict) -> None:
        evaluation = "val_loss" in row or "success_rate" in row
        with self._lock:
            s = self._status
            s.update(step=step, total=total, train_loss=row.get("train_loss"))
            for key in ("val_loss", "success_rate"):
                if key in row:
                    s[key] = row[key]
        if self._cancel.is_set():  # the step reached (and its evaluation) go with `cancelled`
            raise Cancelled()
        self._publish(force=evaluation or step >= total)

    def _finish(self, state: str, **values) -> None:
        """The run's final state: published, and the node free for the next ~/train."""
        with self._lock:
            self._status.update(state=state, **values)
            self._busy = False
        self._publish(force=True)

    # ----------------------------------------------------------------- publishing
    def _publish(self, force: bool = False) -> None:
        now = time.monotonic()
        rate = self.get_parameter("progress_rate").value
        if not force and now - self._last_publish < 1.0 / rate:
            return
        self._last_publish = now
        with self._lock:
            s = dict(self._status)
        keys = ["state", "step", "total", "train_loss", "val_loss", "success_rate", "run_dir"]
        values = {"state": s["state"], "step": str(s.get("step", 0)),
                  "total": str(s.get("total", 0)), "run_dir": s.get("run_dir", "")}
        for key in ("train_loss", "val_loss", "success_rate"):
            values[key] = number(s.get(key))
        values["elapsed"] = (f"{now - s['started']:.1f}" if "started" in s else "0")
        keys.append("elapsed")
        if "checkpoint" in s:
            values.update(checkpoint=s["checkpoint"],
                          best_val_loss=number(s.get("best_val_loss")),
                          best_success_rate=number(s.get("best_success_rate")))
            keys += ["checkpoint", "best_val_loss", "best_success_rate"]
        msg = progress_message(self, "training", s, values, keys)
        publish_safely(self, self.pub_progress, msg)
        publish_safely(self, self.pub_diag, msg)

    def close(self) -> None:
        """At shutdown (Ctrl-C, SIGTERM): stop a running run as ~/cancel does, and wait until
        it has: it stops at its next progress report (within `log_every` steps, or after the
        closed-loop episode or checkpoint save under way) and ends `cancelled`. The process must not
        exit with the run's thread still inside torch or a save: it aborted (exit 134), with
        the run neither finished nor marked cancelled. Further signals are ignored
        (``ShutdownRequest``); SIGKILL aborts."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._cancel.set()
        self.get_logger().warning(
            f"shutting down: training run {self._status.get('run_dir')} stops at its next "
            "progress report (or after the evaluation's episode under way); waiting for it")
        while thread.is_alive():
            thread.join(timeout=0.5)


def main(args=None) -> int:
    return run(TrainerNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
