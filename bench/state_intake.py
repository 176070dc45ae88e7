"""What taking a controller's state topics costs in rclpy: the events executor (two ways of
spinning it) against a thread on one kept wait set, per message, over real DDS.

A publisher process plays the robot driver of the `reach` spec at `--rate` (1 kHz): per tick
`/ee_pose`, `/target_pose` (geometry_msgs/PoseStamped) and `/joint_states` (sensor_msgs/
JointState, 9 joints), RELIABLE keep-last 100 as the suite's `STATE_QOS`, on an absolute-time
schedule. A subscriber process takes them as serialized bytes (raw subscriptions, as the policy
node does) and answers every joint state with one command (a prepared serialized
std_msgs/Float64MultiArray of 7 values), in one of two ways:

- **events**: the nodes' way: callbacks dispatched by rclpy's events executor in slices of
  0.1 s (`robot_imitation.nodes.common.spin`: `spin_until_future_complete` on a future that
  never completes, the executor's own loop between the slices);
- **spin_once**: the same executor, one `spin_once` call per callback (the nodes' way before);
- **waitset**: a thread waiting on the three subscriptions alone (one wait set, kept) and
  taking everything waiting per wake-up: the recorder's `Drain`, without the recorder's pause
  between passes (`period` 0: a controller answers each state at once);
- **compiled**: the baseline under them all, the same loop in C on rcl (`intake_floor.c`: one
  wait set, serialized takes, the prepared answer), built with the machine's C compiler against
  the rcl headers the ROS installation ships (the PyPI wheels' venv or an installed prefix) and
  run in a process that has loaded rclpy, with no Python in the loop; left out, saying why,
  without a compiler or headers (or with `--no-compiled`);
- **compiled_py**: that C loop handing each message's bytes to a Python function (ctypes), as
  a raw subscription's callback gets them: what a Python node would pay per message with the
  messages taken in C instead of by rclpy's executor.

Reported per run: the subscriber's CPU (utime + stime of its process) over the measured window
as a share of one core and per message taken, the messages taken, the commands the publisher
received back; the variants alternate (`--rounds`, default 2 each) and the ratios of the
median CPU per message to that of spin_once are the figures, with events / compiled: what rclpy
and Python add per message over the middleware. The subscriber does nothing else: this is the
floor a Python node at this rate pays before any work of its own.

    .venv/bin/python bench/state_intake.py                  # 8 s windows, 2 rounds, 1 kHz
    .venv/bin/python bench/state_intake.py --seconds 20 --rounds 3

Writes bench/results/state_intake.json. Reports figures only, checks none.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from benchlib import RESULTS_DIR, positive  # noqa: E402

TOPICS = ("/ee_pose", "/target_pose", "/joint_states")
COMMAND = "/bench/command"
KINDS = ("events", "spin_once", "waitset", "compiled_py", "compiled")
COMPILED = ("compiled_py", "compiled")
FLOOR_SOURCE = HERE / "intake_floor.c"
FLOOR_LIBRARIES = ("rcl", "rmw", "rcutils", "rosidl_runtime_c",
                   "geometry_msgs__rosidl_typesupport_c", "sensor_msgs__rosidl_typesupport_c",
                   "std_msgs__rosidl_typesupport_c")


def build_floor(folder: Path) -> tuple[Path | None, str]:
    """``intake_floor.c`` built into a shared library in ``folder``: (its path, ""), or
    (None, why not: no C compiler, no rcl headers, the compiler's error)."""
    from robot_imitation.paths import ensure_ros_environment

    ensure_ros_environment()
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None, "no C compiler (cc or gcc on PATH, or CC)"
    prefixes = [sys.prefix, *os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)]
    prefix = next((Path(p) for p in prefixes
                   if p and (Path(p) / "include" / "rcl" / "rcl" / "rcl.h").is_file()), None)
    if prefix is None:
        return None, "no rcl headers (include/rcl/rcl/rcl.h) in the venv or AMENT_PREFIX_PATH"
    out = folder / "libintake_floor.so"
    cmd = [cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(FLOOR_SOURCE)]
    cmd += [f"-I{d}" for d in sorted((prefix / "include").iterdir()) if d.is_dir()]
    cmd += [f"-L{prefix / 'lib'}", f"-Wl,-rpath,{prefix / 'lib'}"]
    cmd += [f"-l{lib}" for lib in FLOOR_LIBRARIES]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, f"the C build failed: {last}"
    return out, ""


def _ros():
    from robot_imitation.nodes.common import STATE_QOS  # (sets up the ROS environment first)

    import rclpy
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import JointState

    return rclpy, STATE_QOS, (PoseStamped, PoseStamped, JointState)


def publisher(rate: float, seconds: float) -> int:
    rclpy, qos, types = _ros()
    from std_msgs.msg import Float64MultiArray

    rclpy.init()
    node = rclpy.create_node("state_intake_driver")
    pubs = [node.create_publisher(t, topic, qos) for t, topic in zip(types, TOPICS)]
    joints = types[2](name=[f"joint_{i}" for i in range(9)], position=[0.1] * 9,
                      velocity=[0.0] * 9, effort=[0.0] * 9)
    msgs = (types[0](), types[1](), joints)
    answers = [0]
    node.create_subscription(Float64MultiArray, COMMAND,
                             lambda m: answers.__setitem__(0, answers[0] + 1), qos)
    exe = rclpy.executors.SingleThreadedExecutor()
    exe.add_node(node)
    def spin() -> None:
        try:
            exe.spin()
        except rclpy.executors.ExternalShutdownException:
            pass

    spinning = threading.Thread(target=spin, daemon=True)
    spinning.start()
    deadline = time.monotonic() + 20
    while not all(p.get_subscription_count() for p in pubs) or \
            not node.count_publishers(COMMAND):
        if time.monotonic() > deadline:
            print(json.dumps({"error": "the subscriber did not come up"}), flush=True)
            return 1
        time.sleep(0.05)
    time.sleep(0.5)
    period, sent, t0 = 1.0 / rate, 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        sent += 1
        for pub, msg in zip(pubs, msgs):
            pub.publish(msg)
        wait = t0 + sent * period - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    time.sleep(0.5)
    print(json.dumps({"sent": sent, "answers": answers[0]}), flush=True)
    rclpy.try_shutdown()  # (ends the executor's spin)
    spinning.join(timeout=5)
    node.destroy_node()
    return 0


def compiled_subscriber(kind: str, library: str, warmup: float, seconds: float) -> int:
    """The C loop of ``intake_floor.c`` in this process, after rclpy has loaded the ROS
    libraries and the message packages (the same ones the Python variants use). ``compiled_py``:
    each message's bytes handed to a Python function, as a raw subscription's callback gets
    them."""
    import ctypes

    _ros()
    importlib.import_module("std_msgs.msg")  # its type support, as the Python variants load it

    callback = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(ctypes.c_ubyte),
                                ctypes.c_size_t)
    last = [b""]

    def got(topic: int, data, length: int) -> None:
        last[0] = ctypes.string_at(data, length)  # the bytes a raw subscription's callback gets

    lib = ctypes.CDLL(library)
    lib.intake_floor.argtypes = [ctypes.c_double, ctypes.c_double,
                                 ctypes.POINTER(ctypes.c_double),
                                 ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_long),
                                 callback]
    cpu, wall, n = ctypes.c_double(), ctypes.c_double(), ctypes.c_long()
    hand = callback(got) if kind == "compiled_py" else ctypes.cast(None, callback)
    if lib.intake_floor(warmup, seconds, ctypes.byref(cpu), ctypes.byref(wall), ctypes.byref(n),
                        hand):
        return 1
    print(json.dumps({"kind": kind, "cpu_s": cpu.value, "wall_s": wall.value,
                      "messages": n.value, "share": cpu.value / wall.value,
                      "us_per_message": cpu.value / max(n.value, 1) * 1e6}), flush=True)
    return 0


def subscriber(kind: str, warmup: float, seconds: float) -> int:
    rclpy, qos, types = _ros()
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Float64MultiArray

    from robot_imitation.nodes.common import spin
    from robot_imitation.nodes.recorder_node import Drain, _never_called, _TakenByDrain

    rclpy.init()
    node = rclpy.create_node("state_intake_subscriber")
    command = node.create_publisher(Float64MultiArray, COMMAND, qos)
    answer = serialize_message(Float64MultiArray(data=[0.0] * 7))
    taken = [0]
    first = threading.Event()
    window = {}
    done = threading.Event()

    def got(topic: str) -> None:
        taken[0] += 1
        first.set()
        if topic == "/joint_states":
            command.publish(answer)

    def clock() -> None:
        first.wait()
        time.sleep(warmup)
        t, n = os.times(), taken[0]
        window.update(cpu0=t.user + t.system, wall0=time.monotonic(), n0=n)
        time.sleep(seconds)
        t, n = os.times(), taken[0]
        window.update(cpu1=t.user + t.system, wall1=time.monotonic(), n1=n)
        done.set()

    threading.Thread(target=clock, daemon=True).start()
    drain = None
    if kind in ("events", "spin_once"):
        from rclpy.experimental import EventsExecutor

        for t, topic in zip(types, TOPICS):
            node.create_subscription(t, topic, lambda data, topic=topic: got(topic), qos,
                                     raw=True)
        exe = EventsExecutor()
        exe.add_node(node)

        class Stop:
            requested = False

        stop = Stop()
        threading.Thread(target=lambda: (done.wait(), setattr(stop, "requested", True)),
                         daemon=True).start()
        if kind == "events":
            spin(exe, stop=stop)
        else:
            while not stop.requested:
                exe.spin_once(timeout_sec=0.1)
    else:
        def offer(batch) -> None:
            for _, topic, _, _ in batch:
                got(topic)

        drain = Drain(offer, node.context, print)
        group = _TakenByDrain()
        for t, topic in zip(types, TOPICS):
            drain.add(topic, node.create_subscription(t, topic, _never_called, qos, raw=True,
                                                      callback_group=group))
        done.wait()
        drain.close()
    cpu = window["cpu1"] - window["cpu0"]
    wall = window["wall1"] - window["wall0"]
    n = window["n1"] - window["n0"]
    print(json.dumps({"kind": kind, "cpu_s": cpu, "wall_s": wall, "messages": n,
                      "share": cpu / wall, "us_per_message": cpu / max(n, 1) * 1e6}),
          flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def one_run(kind: str, args) -> dict:
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    me = [sys.executable, str(Path(__file__).resolve())]
    extra = ["--library", str(args.library)] if kind in COMPILED else []
    sub = subprocess.Popen(me + ["--subscriber", kind, "--seconds", str(args.seconds), *extra],
                           env=env, stdout=subprocess.PIPE, text=True)
    pub = subprocess.Popen(me + ["--publisher", "--rate", str(args.rate), "--seconds",
                                 str(args.seconds + 3.0)], env=env, stdout=subprocess.PIPE,
                           text=True)
    limit = args.seconds + 60
    try:
        sub_out, _ = sub.communicate(timeout=limit)
        pub_out, _ = pub.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        sub.kill()
        pub.kill()
        raise SystemExit(f"error: a {kind} run did not end within {limit:.0f} s")
    try:
        result = json.loads(sub_out.strip().splitlines()[-1])
        result.update(json.loads(pub_out.strip().splitlines()[-1]))
    except (IndexError, ValueError):
        raise SystemExit(f"error: the {kind} run gave no result (exit codes {sub.returncode}, "
                         f"{pub.returncode})")
    if "error" in result:
        raise SystemExit(f"error: {result['error']}")
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=positive, default=1000.0, help="ticks per second")
    ap.add_argument("--seconds", type=positive, default=8.0, help="measured window per run")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each variant, alternating")
    ap.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--subscriber", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--library", help=argparse.SUPPRESS)
    ap.add_argument("--no-compiled", action="store_true",
                    help="leave out the compiled floor (intake_floor.c, built with cc)")
    args = ap.parse_args()
    if args.publisher:
        return publisher(args.rate, args.seconds)
    if args.subscriber in COMPILED:
        return compiled_subscriber(args.subscriber, args.library, 1.0, args.seconds)
    if args.subscriber:
        return subscriber(args.subscriber, 1.0, args.seconds)
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, not {args.rounds}")
    with tempfile.TemporaryDirectory(prefix="state_intake-") as folder:
        kinds = KINDS
        if args.no_compiled:
            kinds, skipped = KINDS[:-2], "--no-compiled"
        else:
            args.library, skipped = build_floor(Path(folder))
            if args.library is None:
                kinds = KINDS[:-2]
        if skipped:
            print(f"[bench] compiled floor left out: {skipped}", flush=True)
        return measure(args, kinds, skipped)


def measure(args, kinds: tuple, skipped: str) -> int:
    runs = []
    for _ in range(args.rounds):
        for kind in kinds:
            runs.append(one_run(kind, args))
            r = runs[-1]
            print(f"{kind:<11} {r['share']:6.1%} of a core, {r['us_per_message']:6.1f} us CPU per "
                  f"message, {r['messages']} taken, {r['answers']} of {r['sent']} states "
                  "answered", flush=True)
    median = {k: statistics.median(r["us_per_message"] for r in runs if r["kind"] == k)
              for k in kinds}
    load = os.getloadavg()[0]
    base = median["spin_once"]
    print(f"\nCPU per message taken (median of {args.rounds}): "
          + ", ".join(f"{k} {median[k]:.1f} us" for k in kinds)
          + "; / spin_once: " + ", ".join(f"{k} {median[k] / base:.2f}" for k in kinds
                                          if k != "spin_once")
          + f" (load average {load:.2f}, {os.cpu_count()} CPUs)")
    if "compiled" in median:
        print(f"events / compiled: {median['events'] / median['compiled']:.2f} (what rclpy "
              "and Python add per message over the same loop in C); compiled_py / compiled: "
              f"{median['compiled_py'] / median['compiled']:.2f} (a Python callback per "
              "message, taken in C)")
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / "state_intake.json"
    out.write_text(json.dumps({"rate": args.rate, "seconds": args.seconds, "runs": runs,
                               "median_us_per_message": median, "load": load,
                               "compiled_left_out": skipped or None}, indent=2) + "\n")
    print(f"[bench] results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
