"""MuJoCo bridge node: a simulated robot behind the topics and services of real hardware.

Publishes (names relative to the node's namespace unless absolute):
  joint_states (sensor_msgs/JointState), ee_pose and the task's poses (geometry_msgs/PoseStamped),
  /clock (rosgraph_msgs/Clock), episode/status (diagnostic_msgs/DiagnosticArray, latched),
  <camera>/image_raw + <camera>/camera_info (sensor_msgs, rendered only while subscribed),
  ~/real_time_factor (std_msgs/Float64), /diagnostics.
Subscribes:
  /<arm_controller>/commands (std_msgs/Float64MultiArray: positions or velocities),
  /<arm_controller>/joint_trajectory (trajectory_msgs/JointTrajectory),
  /<gripper_controller>/commands (std_msgs/Float64MultiArray: [opening 0..1]).
Services: ~/reset (std_srvs/Trigger), ~/set_pause (std_srvs/SetBool), ~/step (std_srvs/Trigger,
  steps `step_ticks` control ticks while paused).
"""
from __future__ import annotations

import threading
import time

import numpy as np

from .common import (CLOCK_QOS, COMMAND_QOS, IMAGE_QOS, LOCKSTEP_IMAGE_QOS, SENSOR_QOS,
                     STATE_PUB_QOS, STATUS_PUB_QOS, MatchedReport, Param, declare_all, from_sec,
                     run, stamp_ns, to_sec)

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402
from std_msgs.msg import Float64, Float64MultiArray  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from ..bridge.core import BridgeCore, BurstLog, CommandResult  # noqa: E402
from ..bridge.stepper import Lockstep, Verdict  # noqa: E402
from ..cdr import CdrError, StateWriter, diagnostic_array, multi_array  # noqa: E402
from ..observation import deserialized  # noqa: E402
from ..pairing import layout_stamp  # noqa: E402
from ..sim.tasks import TaskConfig, TaskSim  # noqa: E402
from ..spec import SpecError  # noqa: E402

# how long a service (~/step) waits for the simulation thread; a step still running then ends
REQUEST_TIMEOUT_S = 30.0
# episode seeds are taken modulo this: each stays within what the `seed` parameter accepts
# (0 .. 2**63 - 1), so every episode can be replayed through it
SEED_END = 2**63


class CameraRenderer(threading.Thread):
    """Renders camera images off the simulation thread from snapshots of the state.

    ``lossless`` (lockstep): every frame due is rendered; a snapshot submitted while the one
    before is not taken yet waits for it (the simulation waits for the renderer, as it waits
    for commands), so which frames exist depends on simulated time only, never on the load.
    Otherwise (real time) a frame the renderer has not taken yet is replaced by the newer one
    (counted as skipped): real time goes on. ``flush`` waits until every frame submitted is
    published: lockstep publishes an episode's final status only then, so a recorder stopping on
    it does not stop before the episode's last frame (it did, under load: 48 of 49 frames)."""

    def __init__(self, node: "MujocoBridge", cameras, width: int, height: int,
                 lossless: bool = False):
        super().__init__(daemon=True, name="camera-renderer")
        self.node, self.cameras, self.width, self.height = node, cameras, width, height
        self.lossless = lossless
        self.cond = threading.Condition()
        self.snapshot = None
        self.stopped = False
        self.frames = 0
        self.skipped = 0
        self.pending = 0  # snapshots submitted and not yet published (or skipped)
        self.error = None

    def submit(self, stamp, qpos, mocap_pos, mocap_quat, wanted) -> None:
        with self.cond:
            if self.lossless:
                while self.snapshot is not None and not self.stopped and self.is_alive():
                    self.cond.wait(0.1)  # (a renderer that died takes nothing: skip, below)
            if self.snapshot is not None:
                self.skipped += 1
            else:
                self.pending += 1
            self.snapshot = (stamp, qpos, mocap_pos, mocap_quat, wanted)
            self.cond.notify_all()

    def flush(self) -> None:
        """Wait until every submitted frame is published (a renderer that died or was stopped
        publishes nothing more: no wait)."""
        with self.cond:
            while self.pending and not self.stopped and self.is_alive():
                self.cond.wait(0.1)

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def run(self) -> None:
        import mujoco

        model = self.node.sim.model
        data = mujoco.MjData(model)
        try:
            renderer = mujoco.Renderer(model, self.height, self.width)
        except Exception as exc:  # noqa: BLE001 - no GL platform: say so once, keep the bridge up
            self.error = f"{type(exc).__name__}: {exc}"
            self.node.get_logger().error(f"camera rendering unavailable ({self.error}); "
                                         "set MUJOCO_GL=egl or osmesa")
            return
        while True:
            with self.cond:
                while self.snapshot is None and not self.stopped:
                    self.cond.wait()
                if self.stopped:
                    break
                stamp, qpos, mocap_pos, mocap_quat, wanted = self.snapshot
                self.snapshot = None
                self.cond.notify_all()  # a lossless submit waiting for the slot
            data.qpos[:] = qpos
            data.mocap_pos[:] = mocap_pos
            data.mocap_quat[:] = mocap_quat
            mujoco.mj_forward(model, data)
            for name in wanted:
                renderer.update_scene(data, camera=name)
                pixels = renderer.render()
                self.node.publish_image(name, stamp, pixels)
                self.frames += 1
            with self.cond:
                self.pending -= 1
                self.cond.notify_all()  # a flush waiting for the last frame
        renderer.close()


class MujocoBridge(Node):
    NODE_NAME = "mujoco_bridge"
    PARAMETERS = (
        Param("task", "push", "task to load: a name from config/tasks, a task YAML path, or "
              "'none' with `robot` naming an MJCF file", read_only=True),
        Param("robot", "", "robot override: a name from config/robots, a robot YAML path, or "
              "an MJCF path; empty: the task's robot", read_only=True),
        Param("mode", "realtime", "timing: physics paced by the wall clock, or lockstep "
              "(publish the state of tick k, wait for the commands answering it, step)",
              read_only=True,
              choices=("realtime", "lockstep")),
        Param("real_time_factor", 1.0, "realtime mode: target simulation speed relative to the "
              "wall clock", min_value=0.01, max_value=100.0),
        Param("state_rate", 100.0, "realtime mode: Hz of joint_states and poses (lockstep: "
              "once per control tick)", read_only=True, min_value=1.0, max_value=1000.0),
        Param("clock_rate", 500.0, "realtime mode: Hz of /clock", read_only=True,
              min_value=1.0, max_value=10000.0),
        Param("arm_controller", "arm_controller", "name of the arm controller: commands on "
              "/<name>/commands and /<name>/joint_trajectory", read_only=True),
        Param("gripper_controller", "gripper_controller", "name of the gripper controller: "
              "/<name>/commands", read_only=True),
        Param("command_interface", "position", "what arm commands are", read_only=True,
              choices=("position", "velocity")),
        Param("command_timeout", 0.5, "seconds (sim time) without a valid arm command before "
              "the arm is held still; 0 disables", min_value=0.0, max_value=3600.0),
        Param("lockstep_commands", ["arm", "gripper"], "lockstep mode: the command topics that "
              "must answer a state before it is stepped. An answer names its state (the stamp "
              "in a Float64MultiArray's layout label, a trajectory's header stamp): answers to "
              "earlier states are dropped; unstamped commands are taken by arrival",
              read_only=True),
        Param("lockstep_republish", 1.0, "lockstep mode: seconds (wall) before an unanswered "
              "state is sent again (pairing does not depend on it)", min_value=0.05,
              max_value=60.0),
        Param("seed", 0, "base seed: episode k after the last change of this parameter uses "
              "seed+k (modulo 2**63: after 2**63-1 comes 0)", min_value=0,
              max_value=SEED_END - 1),
        Param("auto_reset", False, "start the next episode as soon as one is done"),
        Param("start_paused", False, "start paused (at run time: ~/set_pause)",
              read_only=True),
        Param("step_ticks", 1, "control ticks run by one ~/step call", min_value=1,
              max_value=1_000_000),
        Param("cameras", ["all"], "cameras to publish ('all': every camera of the task; [''] "
              "or []: none)", read_only=True),
        Param("camera_width", 320, "camera image width (px)", read_only=True, min_value=8,
              max_value=4096),
        Param("camera_height", 240, "camera image height (px)", read_only=True, min_value=8,
              max_value=4096),
        Param("camera_rate", 15.0, "camera frames per second (sim time)", min_value=0.1,
              max_value=1000.0),
        Param("camera_reliable", True, "publish images RELIABLE (in lockstep keep-all: no "
              "frame lost to a busy subscriber; every subscriber may still ask for best "
              "effort); false: sensor-data QoS (best effort), which loses large frames under "
              "load", read_only=True),
        Param("frame_id", "world", "frame of the published poses", read_only=True),
    )

    def __init__(self):
        super().__init__(self.NODE_NAME)
        self.p = p = declare_all(self, self.PARAMETERS)

        task = p["task"]
        if task == "none":
            if not p["robot"]:
                raise ValueError("task 'none' needs the robot parameter (an MJCF path or robot)")
            self.sim = TaskSim(TaskConfig.for_model(p["robot"]), p["robot"])
        else:
            self.sim = TaskSim(task, p["robot"] or None)
        self.core = BridgeCore(self.sim, p["command_interface"], p["command_timeout"])
        self.lockstep = p["mode"] == "lockstep"
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.joint_names = self.sim.robot.joint_names
        self.pose_keys = (("ee_pose",) if self.sim.has_ee else ()) + tuple(self.sim.logic.pose_keys)
        frame = p["frame_id"]

        # ---------------------------------------------------------------- publishers
        self.pub_joints = self.create_publisher(JointState, "joint_states", STATE_PUB_QOS)
        self.pub_poses = {k: self.create_publisher(PoseStamped, k, STATE_PUB_QOS)
                          for k in self.pose_keys}
        self.pub_clock = self.create_publisher(Clock, "/clock", CLOCK_QOS)
        self.pub_status = self.create_publisher(DiagnosticArray, "episode/status",
                                            STATUS_PUB_QOS)
        self.pub_rtf = self.create_publisher(Float64, "~/real_time_factor", 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # the state messages serialized here, their constant parts once (cdr.StateWriter):
        # raw publishes, the same messages as filling rclpy ones costs twice as much
        self._writer = StateWriter(list(self.joint_names), frame)
        self._clock_msg = Clock()

        # ---------------------------------------------------------------- cameras
        wanted = list(p["cameras"])
        task_cams = list((self.sim.cfg.cameras or {}).keys())
        if wanted == ["all"]:
            wanted = task_cams
        wanted = [c for c in wanted if c]
        unknown = [c for c in wanted if c not in task_cams]
        if unknown:
            raise ValueError(f"unknown cameras {unknown}; the task has {task_cams}")
        self.cameras = {}
        w, h = p["camera_width"], p["camera_height"]
        cam_qos = ((LOCKSTEP_IMAGE_QOS if self.lockstep else IMAGE_QOS)
                   if p["camera_reliable"] else SENSOR_QOS)
        for name in wanted:
            fovy = float(self.sim.model.cam_fovy[self.sim.model.camera(name).id])
            self.cameras[name] = (self.create_publisher(Image, f"{name}/image_raw", cam_qos),
                                  self.create_publisher(CameraInfo, f"{name}/camera_info",
                                                        cam_qos),
                                  _camera_info(name, w, h, fovy))
        self.renderer = CameraRenderer(self, wanted, w, h, lossless=self.lockstep) \
            if wanted else None
        # what a recorder waits for before a start (its messages from the first on)
        MatchedReport(self, [self.pub_joints, *self.pub_poses.values(), self.pub_clock,
                             self.pub_status, *(pub for cam in self.cameras.values()
                                                for pub in cam[:2])], self.pub_diag)
        self._next_frame = 0.0
        self._rendering: list[str] = []

        # ---------------------------------------------------------------- commands
        arm, grip = p["arm_controller"], p["gripper_controller"]
        self._command_subs = {
            # raw: the stamp and values read from the CDR bytes (cdr.multi_array), not a message
            # object built for them (a tenth of the cost); bytes it does not take deserialized
            "arm": [self.create_subscription(Float64MultiArray, f"/{arm}/commands", self._on_arm,
                                             COMMAND_QOS, raw=True),
                    # raw too: bytes that are no trajectory are rejected and said, as the
                    # commands' are (a typed subscription loses them without a word)
                    self.create_subscription(JointTrajectory, f"/{arm}/joint_trajectory",
                                             self._on_traj, COMMAND_QOS, raw=True)],
            "gripper": [self.create_subscription(Float64MultiArray, f"/{grip}/commands",
                                                 self._on_gripper, COMMAND_QOS, raw=True)]}
        # Bad commands are logged once per burst (floods included), trajectories that started
        # late (points already past skipped) likewise; /diagnostics counts them all.
        warn = self.get_logger().warning
        self._arm_log = BurstLog(warn, "bad arm commands")
        self._grip_log = BurstLog(warn, "bad gripper commands")
        self._late_log = BurstLog(warn, "late trajectories")
        self._ahead_log = BurstLog(warn, "commands naming a state never published")
        need = set(p["lockstep_commands"])
        if not need <= {"arm", "gripper"}:
            raise ValueError(f"lockstep_commands: {sorted(need)}; allowed: arm, gripper")

        # ---------------------------------------------------------------- services
        self.create_service(Trigger, "~/reset", self._srv_reset)
        self.create_service(SetBool, "~/set_pause", self._srv_pause)
        self.create_service(Trigger, "~/step", self._srv_step)
        self._requests: list = []
        self._published_at = 0.0  # time.monotonic() of the last state published
        self._republish = float(p["lockstep_republish"])  # read by the lockstep loop

        # ---------------------------------------------------------------- state
        self.paused = bool(p["start_paused"])
        self.running = True
        self._seed_base = int(p["seed"])
        self._seed_count = 0
        # the lockstep protocol (pairing answers with states, stepping): a plain core
        self.stepper = Lockstep(self.core, need, p["auto_reset"], self._next_seed)
        # values set at run time: checked by their descriptors and declare_all, then applied
        self.add_post_set_parameters_callback(self._after_params)
        self.overruns = 0
        self.rtf = 0.0
        self.steps_total = 0
        self.ticks_total = 0
        self.create_timer(1.0, self._publish_diagnostics)
        with self.lock:
            self._reset(self._next_seed())
        self.thread = threading.Thread(target=self._loop, daemon=True, name="sim")
        self.context.on_shutdown(self._stop_loop)
        if self.renderer:
            self.renderer.start()
        self.thread.start()
        self.get_logger().info(
            f"task '{self.sim.cfg.name}' ({len(self.joint_names)} joints, "
            f"{self.sim.cfg.control_rate:g} Hz control, {1 / self.sim.model.opt.timestep:g} Hz "
            f"physics), mode {p['mode']}, cameras {wanted or 'none'}")
        for note in self.sim.notes:  # e.g. a robot MJCF's timestep the task replaced
            self.get_logger().warning(note)

    # ===================================================================== parameters
    def _after_params(self, params) -> None:
        """Apply values set at run time (checked and taken already). Each parameter that can be
        set is read where it acts: ``self.p`` (real_time_factor, camera_rate, step_ticks,
        auto_reset in real time), or applied here; the others are read-only."""
        with self.cond:
            for prm in params:
                if prm.name in self.p:
                    self.p[prm.name] = prm.value
                if prm.name == "seed":
                    self._seed_base, self._seed_count = int(prm.value), 0
                elif prm.name == "command_timeout":
                    self.core.command_timeout = float(prm.value)
                elif prm.name == "auto_reset":
                    self.stepper.auto_reset = bool(prm.value)
                elif prm.name == "lockstep_republish":
                    # the lockstep loop's wait, counted from the last state, is measured again
                    self._republish = float(prm.value)
                    self.cond.notify_all()

    def _next_seed(self) -> int:
        seed = (self._seed_base + self._seed_count) % SEED_END
        self._seed_count += 1
        return seed

    # ===================================================================== commands
    def _offer(self, which: str, stamp, apply) -> CommandResult | None:
        """A command (lock held): in lockstep, paired with the state it names (``stamp``, ns;
        None: unstamped) by the stepper, which applies it or drops it; else applied. Returns
        the command's result, None when dropped."""
        if not self.lockstep:
            # an answer to a state of the episode before a reset, still on its way: the robot
            # was put back since (its pose would be a jump): dropped, counted
            return None if self.core.earlier_episode(stamp) else apply()
        verdict, result = self.stepper.offer(which, stamp, apply)
        if verdict is Verdict.AHEAD:
            self._ahead_log.note("ahead", f"dropped {which} command naming state {stamp} ns: "
                                 f"the bridge's current state is {self.stepper.stamp} ns")
        if result is not None and result.ok and self.stepper.complete():
            # the answer that completes the state steps it here, in the callback: handing it to
            # the simulation thread cost a thread wake-up per tick (about 0.1 ms of a 2 ms
            # tick, measured); requests, pauses and held episodes are left to that thread
            try:
                stepped = self._advance()
            except Exception as exc:  # the node must say why the robot stopped
                self.get_logger().fatal(f"simulation step failed: {type(exc).__name__}: {exc}")
                raise
            if not stepped:
                self.cond.notify_all()
        return result

    def _on_arm(self, raw: bytes) -> None:
        try:
            stamp, data = _command(raw)
        except SpecError as exc:
            self._malformed(self._arm_log, "arm", exc)
            return
        with self.lock:
            result = self._offer("arm", stamp, lambda: self.core.command_arm(data))
        if result is not None:
            self._report(self._arm_log, "arm", result, len(data))

    def _on_traj(self, raw: bytes) -> None:
        try:
            msg = deserialized(raw, "trajectory_msgs/msg/JointTrajectory")
        except SpecError as exc:
            self._malformed(self._arm_log, "arm", exc)
            return
        with self.lock:
            start = to_sec(msg.header.stamp)
            # stamped with the current state: its answer; any other stamp is a start time
            # (joint_trajectory_controller's meaning), the trajectory taken by arrival
            stamp = stamp_ns(msg.header.stamp)
            result = self._offer(
                "arm", stamp if self.lockstep and stamp == self.stepper.stamp else None,
                lambda: self.core.command_trajectory(
                    msg.joint_names, [to_sec(pt.time_from_start) for pt in msg.points],
                    [list(pt.positions) for pt in msg.points], start=start or None))
            detail = self.core.detail
        if result.ok and detail:  # started late: the points already past were skipped
            self._late_log.note("started_late", f"arm {detail}")
        self._report(self._arm_log, "arm", result, len(msg.joint_names), detail)

    def _on_gripper(self, raw: bytes) -> None:
        try:
            stamp, data = _command(raw)
        except SpecError as exc:
            self._malformed(self._grip_log, "gripper", exc)
            return
        with self.lock:
            result = self._offer("gripper", stamp, lambda: self.core.command_gripper(data))
        if result is not None:
            self._report(self._grip_log, "gripper", result, len(data))

    def _malformed(self, log: BurstLog, what: str, exc: SpecError) -> None:
        """A command whose bytes are no message: dropped (a state it was to answer waits for
        a readable one), counted and logged as a rejected command."""
        with self.lock:
            self.core.malformed()
        log.note(CommandResult.MALFORMED.value, f"rejected {what} command: {exc}")

    def _report(self, log: BurstLog, what: str, result: CommandResult, n: int,
                detail: str = "") -> None:
        """Log a bad command (once per burst, see BurstLog); counted by the core already."""
        if result is CommandResult.CLAMPED:
            log.note(result.value, f"clamped {what} command: beyond the limits (joint position "
                                   "or velocity limits; gripper 0..1)")
            return
        if result.ok:
            return
        reason = {
            CommandResult.WRONG_LENGTH: f"wrong length {n} (arm expects {self.core.n_arm} values, "
                                        "gripper 1)",
            CommandResult.NOT_FINITE: "NaN or infinite value",
            CommandResult.UNKNOWN_JOINTS: f"joint names must be exactly "
                                          f"{self.sim.robot.arm_joint_names}",
            CommandResult.BAD_TRAJECTORY: "trajectory times must be >= 0 and non-decreasing",
            CommandResult.TRAJECTORY_IN_PAST: detail,
            CommandResult.START_TOO_FAR_AHEAD: detail,
        }[result]
        log.note(result.value, f"rejected {what} command: {reason}")

    # ===================================================================== services
    def _request(self, kind: str, arg=None, timeout: float = REQUEST_TIMEOUT_S):
        done = threading.Event()
        box = {}
        with self.cond:
            self._requests.append((kind, arg, done, box))
            self.cond.notify_all()
        if not done.wait(timeout):
            box["cancel"] = True  # a step still running ends at its next tick
            if not done.wait(2.0) or "message" not in box:
                return False, f"{kind}: the simulation thread did not answer within {timeout} s"
            return False, box["message"]
        return box.get("ok", True), box.get("message", "")

    def _srv_reset(self, req, resp):
        # Answered at once, the reset left to the simulation thread: this executor must stay
        # free to take the answers to the state last published, which the reset waits for.
        with self.cond:
            episode = self.core.episode + 1 + sum(r[0] == "reset" for r in self._requests)
            seed = self._next_seed()
            self._requests.append(("reset", seed, None, None))
            self.cond.notify_all()
        resp.success, resp.message = True, f"episode {episode} seed {seed}"
        return resp

    def _srv_pause(self, req, resp):
        with self.cond:
            self.paused = bool(req.data)
            self.cond.notify_all()
        resp.success = True
        resp.message = "paused" if req.data else "running"
        return resp

    def _srv_step(self, req, resp):
        if not self.paused:
            resp.success, resp.message = False, "~/step works while paused (call ~/set_pause first)"
            return resp
        resp.success, resp.message = self._request("step", int(self.p["step_ticks"]))
        return resp

    def _serve_requests(self) -> None:
        """Run pending service requests on the simulation thread (lock held)."""
        while self._requests:
            kind, arg, done, box = self._requests.pop(0)
            if kind == "reset":
                self._reset(arg)
            elif kind == "step":
                # the lock is held throughout: a shutdown or a caller that stopped waiting
                # ends the step at its next tick (a million ticks take minutes)
                stepped = 0
                while stepped < arg and self.running and not box.get("cancel"):
                    self.core.step_tick()
                    self.ticks_total += 1
                    stepped += 1
                    self._publish_state()
                why = "" if stepped == arg else f" of {arg} (shutting down)" \
                    if not self.running else \
                    f" of {arg} (cancelled: the reply waited {REQUEST_TIMEOUT_S:g} s)"
                box["ok"] = stepped == arg
                box["message"] = f"stepped {stepped} ticks{why}: episode tick " \
                                 f"{self.core.tick}, time {self.core.clock:.4f}"
            if done is not None:
                done.set()

    def _reset(self, seed: int) -> None:
        # answers to the old episode's states name earlier stamps: dropped as late
        self.stepper.reset(seed)
        self._next_frame = self.core.clock
        self._publish_state()

    # ===================================================================== publishing
    def _publish_state(self) -> None:
        """Joint states, poses, clock and episode status of the current instant (lock held)."""
        self._published_at = time.monotonic()
        t = self.core.clock
        stamp = from_sec(t)
        sec, nsec = stamp.sec, stamp.nanosec
        self.pub_clock.publish(self._writer.clock(sec, nsec))
        obs = self.sim.observe()
        for key in self.pose_keys:
            self.pub_poses[key].publish(self._writer.pose_stamped(sec, nsec, obs[key][:7]))
        q, qd, eff = self.sim.joint_state()
        self.pub_joints.publish(self._writer.joint_state(sec, nsec, q, qd, eff))
        self._maybe_render(t)
        st = self.core.status()
        if st.done and self.lockstep and self.renderer:
            # the episode's frames before its final status, which a recorder stops on (its
            # answers come after: a controller may wait for a state's status before answering,
            # as the policy node does; the recorder waits for them)
            self.renderer.flush()
        self._publish_status(stamp, st)

    def _publish_status(self, stamp, st) -> None:
        self.pub_status.publish(diagnostic_array(
            stamp.sec, stamp.nanosec, DiagnosticStatus.OK[0], "episode", st.outcome,
            self.sim.cfg.name,
            (("episode", str(st.episode)), ("seed", str(st.seed)), ("tick", str(st.tick)),
             ("success", str(st.success).lower()), ("done", str(st.done).lower()),
             ("reward", repr(float(st.reward))))))

    def _maybe_render(self, t: float) -> None:
        if not self.renderer or t + 1e-9 < self._next_frame:
            return
        self._next_frame = max(self._next_frame + 1.0 / self.p["camera_rate"], t)
        wanted = [n for n, (img, info, _) in self.cameras.items()
                  if img.get_subscription_count() or info.get_subscription_count()]
        if wanted != self._rendering:
            self._log_rendering(wanted)
        if wanted:
            d = self.sim.data
            self.renderer.submit(from_sec(t), d.qpos.copy(), d.mocap_pos.copy(),
                                 d.mocap_quat.copy(), wanted)

    def _log_rendering(self, wanted: list[str]) -> None:
        """Log each change of the rendered set, with who subscribes: frames rendered with no
        visible subscriber are then traceable to the endpoint the middleware matched."""
        self._rendering = wanted
        if not wanted:
            self.get_logger().info("cameras idle: no subscribers")
            return
        who = set()
        for name in wanted:
            img, info, _ = self.cameras[name]
            for pub in (img, info):
                who.update(f"{e.node_namespace.rstrip('/')}/{e.node_name}"
                           for e in self.get_subscriptions_info_by_topic(pub.topic_name))
        self.get_logger().info(f"rendering cameras {', '.join(wanted)} for "
                               f"{', '.join(sorted(who)) or 'a subscriber not yet in the graph'}")

    def publish_image(self, name: str, stamp, pixels: np.ndarray) -> None:
        img_pub, info_pub, info = self.cameras[name]
        msg = Image()
        msg.header.stamp = stamp
        msg.header.frame_id = f"{name}_optical_frame"
        msg.height, msg.width = pixels.shape[:2]
        msg.encoding = "rgb8"
        msg.step = msg.width * 3
        msg.data = pixels.tobytes()
        img_pub.publish(msg)
        info.header.stamp = stamp
        info_pub.publish(info)

    def _publish_diagnostics(self) -> None:
        for log in (self._arm_log, self._grip_log, self._late_log, self._ahead_log):
            log.flush()
        with self.lock:
            c = self.core.counters
            values = {"mode": self.p["mode"], "real_time_factor": f"{self.rtf:.3f}",
                      "overruns": self.overruns, "physics_steps": self.steps_total,
                      "control_ticks": self.ticks_total, "episode": self.core.episode,
                      "commands_accepted": c.accepted, "commands_clamped": c.clamped,
                      "commands_rejected": c.rejected_total, "command_timeouts": c.timeouts,
                      "trajectories_started_late": c.late_trajectories,
                      "holding": str(self.core.holding).lower(), "paused": str(self.paused).lower()}
            for reason, n in c.rejected.items():
                values[f"rejected_{reason}"] = n
            if not self.lockstep:
                values["earlier_episode_dropped"] = c.earlier_episode
            if self.lockstep:
                k = self.stepper.counters
                values.update({"lockstep_answers": k.answers, "lockstep_unstamped": k.unstamped,
                               "lockstep_late_dropped": k.late,
                               "lockstep_ahead_dropped": k.ahead})
            if self.renderer:
                values["camera_frames"] = self.renderer.frames
                values["camera_frames_skipped"] = self.renderer.skipped
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        level = DiagnosticStatus.WARN if (self.core.holding or c.rejected_total) else \
            DiagnosticStatus.OK
        msg.status = [DiagnosticStatus(level=level, name=f"{self.get_name()}: simulation",
                                        message="holding (command timeout)" if self.core.holding
                                        else "ok", hardware_id="mujoco",
                                        values=[KeyValue(key=k, value=str(v))
                                                for k, v in values.items()])]
        self.pub_diag.publish(msg)
        if self.p["mode"] == "realtime":
            self.pub_rtf.publish(Float64(data=float(self.rtf)))

    # ===================================================================== simulation loop
    def _loop(self) -> None:
        try:
            if self.p["mode"] == "lockstep":
                self._loop_lockstep()
            else:
                self._loop_realtime()
        except Exception as exc:  # noqa: BLE001 - the node must say why the robot stopped
            if not self.running or not self.context.ok():
                return  # shutting down: publishers are gone
            self.get_logger().fatal(f"simulation thread died: {type(exc).__name__}: {exc}")
            raise

    def _loop_lockstep(self) -> None:
        stepper = self.stepper
        with self.cond:
            # The first state was published by the reset in __init__ (an answer to it may be in
            # already). Whoever subscribed since gets it from the republish below; no copy at
            # once: a controller that answered it would answer the copy again
            # (nodes.common.LastAnswer), and a recorder would keep both answers.
            while self.running:
                self._serve_requests()
                if self.paused or stepper.held():
                    # paused, or the episode is over (its final state and outcome published):
                    # hold until ~/set_pause or ~/reset
                    self.cond.wait(0.1)
                    continue
                if not stepper.complete():
                    # answers step the state in their callback (_offer); this thread republishes
                    # a state nobody answered for `lockstep_republish` s (it may have been
                    # missed; self._republish, which a change at run time sets)
                    left = self._published_at + self._republish - time.monotonic()
                    if left > 0:
                        self.cond.wait(left)
                    elif not self._requests and not self.paused:
                        self._publish_state()
                    continue
                self._advance()

    def _advance(self) -> bool:
        """Step the answered state and publish the next one (lock held), unless a request
        waits, the simulation is paused or the episode is held: then False, and the simulation
        thread decides."""
        stepper = self.stepper
        if self._requests or self.paused or stepper.held() or not stepper.complete() \
                or not self.running:
            return False
        episode = self.core.episode
        stepper.advance()
        self.steps_total += self.sim.substeps
        self.ticks_total += 1
        if self.core.episode != episode:  # auto_reset started the next episode
            self._next_frame = self.core.clock
        self._publish_state()
        return True

    def _loop_realtime(self) -> None:
        dt = self.sim.model.opt.timestep
        substeps = self.sim.substeps
        state_every = max(1, round(1.0 / (self.p["state_rate"] * dt)))
        clock_every = max(1, round(1.0 / (self.p["clock_rate"] * dt)))
        next_wall = time.monotonic()
        window_wall, window_steps = next_wall, self.steps_total
        n = 0
        while self.running:
            period = dt / self.p["real_time_factor"]
            with self.cond:
                self._serve_requests()
                if self.paused:
                    self.cond.wait(0.05)
                    next_wall = time.monotonic()
                    window_wall, window_steps = next_wall, self.steps_total
                    continue
                self.core.step_physics(1)
                self.steps_total += 1
                n += 1
                if n % substeps == 0:
                    status = self.core.note_tick()
                    self.ticks_total += 1
                    if status.done and self.p["auto_reset"]:
                        self._reset(self._next_seed())
                        n = 0
                if n % state_every == 0:
                    self._publish_state()
                elif n % clock_every == 0:
                    self._clock_msg.clock = from_sec(self.core.clock)
                    self.pub_clock.publish(self._clock_msg)
            next_wall += period
            now = time.monotonic()
            if now - window_wall >= 1.0:
                # Simulated time per wall time over the window (counted in physics steps, so
                # that episode resets, which move the clock on, do not count).
                self.rtf = (self.steps_total - window_steps) * dt / (now - window_wall)
                window_wall, window_steps = now, self.steps_total
            delay = next_wall - now
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:
                self.overruns += 1
                if delay < -0.05:  # far behind: drop the backlog instead of racing to catch up
                    next_wall = now

    def stop_requested(self) -> None:
        """The first SIGINT/SIGTERM (in its handler): the simulation thread's work ends at its
        next tick (``common.ShutdownRequest``); the node closes once its spin loop ends."""
        self.running = False

    def _stop_loop(self) -> None:
        self.running = False  # seen by a multi-tick ~/step, which holds the lock
        with self.cond:
            self.cond.notify_all()

    def close(self) -> None:
        self._stop_loop()
        if self.thread.is_alive():
            self.thread.join(timeout=2.0)
        if self.renderer:
            self.renderer.stop()
            self.renderer.join(timeout=2.0)
        for log in (self._arm_log, self._grip_log, self._late_log, self._ahead_log):
            log.end()  # summarise a burst still open


def _command(raw: bytes) -> tuple:
    """(the state it names or None, values) of a serialized ``Float64MultiArray`` command;
    ``SpecError`` for bytes that are none."""
    try:
        return multi_array(raw)
    except CdrError as exc:  # not plain little-endian CDR: the usual way
        msg = deserialized(raw, "std_msgs/msg/Float64MultiArray", exc)
        return layout_stamp(msg.layout), msg.data


def _camera_info(name: str, width: int, height: int, fovy_deg: float) -> CameraInfo:
    """Pinhole intrinsics of a MuJoCo camera (square pixels, centred principal point)."""
    f = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    info = CameraInfo()
    info.header.frame_id = f"{name}_optical_frame"
    info.width, info.height = width, height
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    info.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def main(args=None) -> int:
    return run(MujocoBridge, args)


if __name__ == "__main__":
    raise SystemExit(main())
