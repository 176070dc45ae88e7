"""The bridge as its own process, talking real DDS to test nodes and to the expert process."""
import re
import time

import numpy as np
import pytest

from conftest import wait_for

from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64, Float64MultiArray
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from robot_imitation.algorithms.dagger import DaggerConfig, demo_seeds
from robot_imitation.nodes.common import (CLOCK_QOS, COMMAND_QOS, SENSOR_QOS, STATE_QOS, from_sec,
                                         to_sec)
from robot_imitation.nodes.episode_runner import run_episodes
from robot_imitation.sim.env import ImitationEnv
from robot_imitation.sim.experts import make_expert

pytestmark = pytest.mark.ros

BRIDGE = "mujoco_bridge"


def start_bridge(procs, probe, **params):
    """Start the bridge and wait until its state reaches the probe."""
    params.setdefault("cameras", [""])
    procs.start_node("mujoco_bridge", params=params)
    joints = probe.record(JointState, "joint_states", STATE_QOS)
    wait_for(lambda: probe.node.count_publishers("joint_states") > 0, 30, "bridge up",
             procs=procs)
    return joints


def latest_q(joints):
    return np.array(joints[-1].position)


def publish_until(pub, msg, predicate, timeout, what, rate=50.0):
    """Publish ``msg`` at ``rate`` until ``predicate()`` holds (fail after ``timeout`` s)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pub.publish(msg)
        if predicate():
            return
        time.sleep(1.0 / rate)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def diagnostics_values(diags):
    for msg in reversed(diags):
        for status in msg.status:
            if status.name.endswith("simulation"):
                return {kv.key: kv.value for kv in status.values}
    return {}


def test_realtime_bridge_topics_camera_and_commands(procs, probe):
    joints = start_bridge(procs, probe, task="reach", mode="realtime", cameras=["front"],
                          camera_width=160, camera_height=120, camera_rate=10.0,
                          command_timeout=0.0)
    clocks = probe.record(Clock, "/clock", CLOCK_QOS)
    images = probe.record(Image, "front/image_raw", SENSOR_QOS)
    infos = probe.record(CameraInfo, "front/camera_info", SENSOR_QOS)
    rtf = probe.record(Float64, "/mujoco_bridge/real_time_factor", 10)
    wait_for(lambda: len(joints) > 20 and clocks and images and infos and len(rtf) >= 2, 30,
             "joint states, clock, a camera image and the real-time factor", procs=procs)
    # Physics paced by the wall clock: once started up (the first windows include start-up),
    # the achieved factor is near the target of 1.
    wait_for(lambda: any(0.8 < m.data < 1.2 for m in rtf), 15,
             "a real-time factor near 1", procs=procs)

    js = joints[-1]
    assert list(js.name) == [f"panda_joint{i}" for i in range(1, 8)] + [
        "panda_finger_joint1", "panda_finger_joint2"]
    assert len(js.position) == len(js.velocity) == len(js.effort) == 9
    stamps = [to_sec(m.header.stamp) for m in joints]
    assert all(b > a for a, b in zip(stamps, stamps[1:])), "joint state stamps must increase"
    assert to_sec(clocks[-1].clock) > 0

    img = images[-1]
    assert (img.width, img.height, img.encoding, img.step) == (160, 120, "rgb8", 480)
    pixels = np.frombuffer(bytes(img.data), np.uint8).reshape(120, 160, 3)
    assert pixels.std() > 5, "the camera image is blank"
    info = infos[-1]
    assert (info.width, info.height) == (160, 120) and info.k[0] > 0 and info.k[8] == 1.0

    # Command joint 1 forward and watch the arm follow.
    q0 = latest_q(joints)
    target = q0[:7].copy()
    target[0] += 0.4
    pub = probe.node.create_publisher(Float64MultiArray, "/arm_controller/commands", COMMAND_QOS)
    wait_for(lambda: pub.get_subscription_count() > 0, 10, "bridge subscribed to commands")
    publish_until(pub, Float64MultiArray(data=target.tolist()),
                  lambda: latest_q(joints)[0] - q0[0] > 0.35, 15, "joint 1 to follow")
    np.testing.assert_allclose(latest_q(joints)[1:7], q0[1:7], atol=0.05)


def test_seeded_reset_reproduces_initial_state(procs, probe):
    # Lockstep with no controller: the state stays at tick 0 of each episode.
    joints = start_bridge(procs, probe, task="push", mode="lockstep", seed=123,
                          lockstep_republish=0.1)
    wait_for(lambda: joints, 20, "initial state")
    first = latest_q(joints)
    answers = [probe.call(Trigger, f"/{BRIDGE}/reset").message]  # seed 124
    time.sleep(0.3)
    other = latest_q(joints)
    probe.set_params(BRIDGE, seed=123)
    answers.append(probe.call(Trigger, f"/{BRIDGE}/reset").message)  # seed 123 again
    time.sleep(0.3)
    again = latest_q(joints)
    # The highest seed a run may ask of the bridge: a DAgger run of the highest --seed records
    # its demonstrations from seed * SEED_STRIDE (the parameter stopped at 2**31 - 1 before)
    highest = demo_seeds(DaggerConfig(seed=2**32 - 1), 1)[0]
    probe.set_params(BRIDGE, seed=highest)
    answers.append(probe.call(Trigger, f"/{BRIDGE}/reset").message)
    time.sleep(0.3)
    last = latest_q(joints)
    assert answers == ["episode 1 seed 124", "episode 2 seed 123", f"episode 3 seed {highest}"]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # The same seed gives the same initial state as the gymnasium task.
    env = ImitationEnv("push")
    for seed, q in ((123, first), (highest, last)):
        obs, _ = env.reset(seed=seed)
        np.testing.assert_array_equal(q, obs["joint_pos"])


def _lockstep_run(procs, probe, name, n_ticks, seed):
    """Bridge + expert (two processes) in lockstep; the joint positions of the first ticks."""
    procs.start_node("mujoco_bridge", name=name, params={
        "task": "push", "mode": "lockstep", "seed": seed, "cameras": [""],
        "start_paused": True})
    procs.start_node("scripted_expert", name=f"{name}_expert",
                     params={"task": "push", "trigger": "state"})
    joints = probe.record(JointState, "joint_states", STATE_QOS, key=name)
    wait_for(lambda: probe.node.count_subscribers("joint_states") >= 2
             and probe.node.count_publishers("/arm_controller/commands") >= 1
             and probe.node.count_publishers("/gripper_controller/commands") >= 1,
             30, "bridge, expert and probe connected", procs=procs)
    time.sleep(0.5)  # let every endpoint finish matching
    # Start the episode (same seed) now that everyone listens, then let the loop run.
    probe.set_params(name, seed=seed)
    joints.clear()
    assert probe.call(Trigger, f"/{name}/reset").message == f"episode 1 seed {seed}"
    assert probe.call(SetBool, f"/{name}/set_pause", SetBool.Request(data=False)).success
    by_stamp = {}
    wait_for(lambda: len({to_sec(m.header.stamp) for m in joints}) > n_ticks, 60,
             f"{n_ticks} lockstep ticks", procs=procs)
    for m in joints:
        by_stamp.setdefault(to_sec(m.header.stamp), np.array(m.position))
    procs.stop(name)
    procs.stop(f"{name}_expert")
    stamps = sorted(by_stamp)[: n_ticks + 1]
    return np.array(stamps), np.array([by_stamp[s] for s in stamps])


def test_lockstep_is_deterministic_and_equals_the_gym_task(procs, probe):
    n = 35  # seed 7 succeeds after 40 ticks; lockstep holds once an episode is done
    t1, run1 = _lockstep_run(procs, probe, "bridge_a", n, seed=7)
    t2, run2 = _lockstep_run(procs, probe, "bridge_b", n, seed=7)
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_array_equal(run1, run2)
    assert np.allclose(np.diff(t1), 0.05), "one state per control tick, no tick skipped"
    # The same seed and expert without ROS: the very same trajectory.
    env = ImitationEnv("push")
    expert = make_expert(env.sim)
    obs, _ = env.reset(seed=7)
    gym_traj = [obs["joint_pos"]]
    for _ in range(n):
        obs, *_ = env.step(expert(obs))
        gym_traj.append(obs["joint_pos"])
    np.testing.assert_array_equal(run1, np.array(gym_traj))


def gym_episode(task: str, seed: int) -> tuple[int, float]:
    """(ticks, final reward) of the scripted expert's episode of ``seed`` without ROS."""
    env = ImitationEnv(task)
    expert = make_expert(env.sim)
    obs, _ = env.reset(seed=seed)
    ticks = 0
    while True:
        obs, reward, terminated, truncated, _ = env.step(expert(obs))
        ticks += 1
        if terminated or truncated:
            return ticks, float(reward)


def test_a_reset_mid_episode_waits_for_the_pending_answer(procs, ros):
    """Reset while the expert drives: an answer to the interrupted episode's last state
    arriving after the reset must not be taken for the new episode's first (that would shift
    all its commands by one tick): it names its state, and is dropped. Each new episode must be the gym task's episode of
    its seed, tick for tick."""
    from robot_imitation.nodes.episode_runner import EpisodeRunner, Spinner

    procs.start_node("mujoco_bridge", params={"task": "push", "mode": "lockstep", "seed": 60,
                                              "cameras": [""]})
    procs.start_node("scripted_expert", params={"task": "push", "trigger": "state"})
    runner = EpisodeRunner()
    spinner = Spinner(runner)
    outcomes = []
    try:
        runner.wait_for_bridge()
        assert runner.wait_settled(60), "the expert did not finish the first episode"
        for _ in range(6):
            episode = runner.reset().split()[1]  # an episode to interrupt
            wait_for(lambda: runner.status.get("episode") == episode
                     and int(runner.status["tick"]) >= 5, 30, "the episode under way",
                     procs=procs, interval=0.001)
            outcomes.append(runner.run_episode(60.0))  # reset mid-episode, run to the end
    finally:
        spinner.stop()
        runner.destroy_node()
    got = [(o.seed, o.ticks, round(o.reward, 6)) for o in outcomes]
    expected = [(o.seed, *(lambda t, r: (t, round(r, 6)))(*gym_episode("push", o.seed)))
                for o in outcomes]
    assert got == expected, (got, expected)


def test_bad_commands_rejected_logged_once_per_burst(procs, probe):
    joints = start_bridge(procs, probe, task="reach", mode="realtime", command_timeout=0.0)
    diags = probe.record(DiagnosticArray, "/diagnostics", 10)
    pub = probe.node.create_publisher(Float64MultiArray, "/arm_controller/commands", COMMAND_QOS)
    grip = probe.node.create_publisher(Float64MultiArray, "/gripper_controller/commands",
                                       COMMAND_QOS)
    traj = probe.node.create_publisher(JointTrajectory, "/arm_controller/joint_trajectory",
                                       COMMAND_QOS)
    wait_for(lambda: joints and pub.get_subscription_count() and grip.get_subscription_count()
             and traj.get_subscription_count(), 20, "bridge ready")
    time.sleep(0.5)
    q0 = latest_q(joints)
    bad = [[0.1, 0.2, 0.3], [float("nan")] * 7, [0.0] * 6 + [float("inf")]]
    for i in range(12):
        pub.publish(Float64MultiArray(data=bad[i % 3]))
        time.sleep(0.02)
        if i % 4 == 3:  # bytes that are no Float64MultiArray (raw): dropped, the bridge lives
            pub.publish(b"\x00\x01\x00\x00" + b"\xff" * 8)
            time.sleep(0.02)
    traj.publish(b"\x00\x01\x00\x00" + b"\xff" * 8)  # no trajectory: an arm command rejected
    grip.publish(Float64MultiArray(data=[0.5, 0.5]))
    # The burst ends once quiet for a second: its summary, counts per reason.
    wait_for(lambda: "16 bad arm commands in the last burst" in procs.log(BRIDGE), 10,
             "the summary of the burst", procs=procs)
    np.testing.assert_allclose(latest_q(joints)[:7], q0[:7], atol=5e-3)

    # A command beyond the joint limit is clamped; the arm moves towards the limit only.
    target = q0[:7].copy()
    target[0] = 10.0
    publish_until(pub, Float64MultiArray(data=target.tolist()),
                  lambda: latest_q(joints)[0] > q0[0] + 0.3, 15, "joint 1 to move")
    assert max(m.position[0] for m in joints) <= 2.8973 + 1e-3
    wait_for(lambda: int(diagnostics_values(diags).get("commands_clamped", 0)) > 0, 5,
             "diagnostics with the clamped count")
    values = diagnostics_values(diags)
    assert values["rejected_wrong_length"] == "5"  # 4 arm + 1 gripper
    assert values["rejected_not_finite"] == "8"
    assert values["rejected_malformed"] == "4"
    assert procs.stop(BRIDGE) == {BRIDGE: 0}, "the bridge must exit cleanly on SIGINT"
    log = procs.log(BRIDGE, tail=100_000)
    assert log.count("rejected arm command") == 1, log
    assert "16 bad arm commands in the last burst" in log
    assert "malformed 4, not_finite 8, wrong_length 4" in log
    assert "Traceback" not in log, log
    assert log.count("rejected gripper command: wrong length 2") == 1, log
    # The burst of clamped commands (published at 50 Hz until the joint moved) is one line too,
    # and its summary (at the latest when the bridge stops).
    assert log.count("clamped arm command") == 1, log
    assert log.count("bad arm commands in the last burst") == 2, log


def test_a_flood_of_mixed_bad_commands_is_logged_once_per_burst(procs, probe):
    """10 kHz of arm commands for 1.5 s, wrong lengths, NaNs, values beyond the limits and
    good ones interleaved: one line when the burst starts, one summary whose counts per
    reason are those of /diagnostics (a change of kind or a good command used to start a new
    burst: thousands of lines)."""
    joints = start_bridge(procs, probe, task="reach", mode="realtime", command_timeout=0.0)
    diags = probe.record(DiagnosticArray, "/diagnostics", 10)
    pub = probe.node.create_publisher(Float64MultiArray, "/arm_controller/commands", COMMAND_QOS)
    wait_for(lambda: joints and pub.get_subscription_count(), 20, "bridge ready", procs=procs)
    q = latest_q(joints)[:7]
    beyond = q.copy()
    beyond[0] = 10.0
    flood = [Float64MultiArray(data=[0.1, 0.2]), Float64MultiArray(data=beyond.tolist()),
             Float64MultiArray(data=[float("nan")] * 7), Float64MultiArray(data=q.tolist())]
    start, sent = time.monotonic(), 0
    while sent < 15_000:
        pub.publish(flood[sent % 4])
        sent += 1
        while time.monotonic() < start + sent / 10_000:
            pass
    # Once the flood is over, the bursts' lines account for every bad command the bridge
    # counted (/diagnostics), and go on doing so.
    wait_for(lambda: counted(diags) and
             logged_counts(procs.log(BRIDGE, tail=100_000)) == counted(diags),
             15, "the flood's summary to match the diagnostics", procs=procs)
    seen = len(diags)
    wait_for(lambda: len(diags) > seen, 5, "diagnostics after the summary", procs=procs)
    # A few commands delivered late (reliable retransmissions under load: a CI run's 7, 1.3 s
    # after the flood) open a burst of their own, summed up once it has been quiet a second.
    wait_for(lambda: logged_counts(procs.log(BRIDGE, tail=100_000)) == counted(diags), 10,
             "the log to account for every bad command counted, late ones too", procs=procs)
    log = procs.log(BRIDGE, tail=100_000)
    lines = [line for line in log.splitlines() if "arm command" in line]
    # One line when a burst starts, one summary when it ends, bursts at least a second apart
    # (normally the whole flood is one burst: two lines); it used to be thousands.
    assert len(lines) <= 2 * (log_seconds(lines[-1]) - log_seconds(lines[0]) + 1), \
        "\n".join(lines[:10])
    assert sum("in the last burst" in line for line in lines) >= 1


BAD_ARM_START = {"rejected arm command: wrong length": "wrong_length",
                 "rejected arm command: NaN": "not_finite", "clamped arm command": "clamped"}


def logged_counts(log: str) -> dict:
    """Bad arm commands per reason, as the bridge's log accounts for them: each burst's summary,
    or its first line when it has only one command (so far)."""
    counts, pending = {}, None
    for line in log.splitlines():
        if "(further bad arm commands" in line:
            if pending:
                counts[pending] = counts.get(pending, 0) + 1
            pending = next(v for k, v in BAD_ARM_START.items() if k in line)
        elif "bad arm commands in the last burst" in line:
            for part in line.split("): ", 1)[1].split(", "):
                key, n = part.split()
                counts[key] = counts.get(key, 0) + int(n)
            pending = None
    if pending:
        counts[pending] = counts.get(pending, 0) + 1
    return counts


def counted(diags) -> dict:
    values = diagnostics_values(diags)
    counts = {"clamped": int(values.get("commands_clamped", 0)),
              "not_finite": int(values.get("rejected_not_finite", 0)),
              "wrong_length": int(values.get("rejected_wrong_length", 0))}
    return {k: n for k, n in counts.items() if n}


def log_seconds(line: str) -> float:
    return float(re.search(r"\[(\d+\.\d+)\]", line).group(1))


def test_command_timeout_holds_the_robot(procs, probe):
    joints = start_bridge(procs, probe, task="reach", mode="realtime",
                          command_interface="velocity", command_timeout=0.3)
    pub = probe.node.create_publisher(Float64MultiArray, "/arm_controller/commands", COMMAND_QOS)
    wait_for(lambda: joints and pub.get_subscription_count(), 20, "bridge ready")
    time.sleep(0.3)
    q0 = latest_q(joints)[0]
    pub.publish(Float64MultiArray(data=[0.5] + [0.0] * 6))  # once, never renewed
    time.sleep(1.5)
    moved = latest_q(joints)[0] - q0
    time.sleep(0.5)
    assert 0.05 < moved < 0.3, f"moved {moved:.3f} rad: the timeout did not hold the arm"
    assert latest_q(joints)[0] - q0 == pytest.approx(moved, abs=5e-3)


def test_joint_trajectory_command(procs, probe):
    # The default command timeout (0.5 s) is shorter than the trajectory: it must run to its end.
    joints = start_bridge(procs, probe, task="reach", mode="realtime", command_timeout=0.5)
    pub = probe.node.create_publisher(JointTrajectory, "/arm_controller/joint_trajectory",
                                      COMMAND_QOS)
    wait_for(lambda: joints and pub.get_subscription_count(), 20, "bridge ready")
    time.sleep(0.3)
    q0 = latest_q(joints)[:7]
    goal = q0 + np.array([0.3, -0.2, 0.1, 0.2, 0.0, 0.1, -0.3])
    msg = JointTrajectory()
    msg.joint_names = [f"panda_joint{i}" for i in range(7, 0, -1)]  # any order, by name
    msg.points = [JointTrajectoryPoint(positions=((q0 + goal) / 2)[::-1].tolist(),
                                       time_from_start=Duration(sec=1, nanosec=0)),
                  JointTrajectoryPoint(positions=goal[::-1].tolist(),
                                       time_from_start=Duration(sec=2, nanosec=0))]
    pub.publish(msg)
    wait_for(lambda: np.allclose(latest_q(joints)[:7], goal, atol=0.03), 10,
             "the arm at the trajectory's goal")
    time.sleep(1.0)  # past the timeout after the last point: the arm is held at the goal
    np.testing.assert_allclose(latest_q(joints)[:7], goal, atol=0.03)


def test_trajectory_stamps_past_and_wall_clock(procs, probe):
    """Header stamps as joint_trajectory_controller reads them, and what the user sees: a
    wall-clock stamp (the bridge runs on simulation time) is rejected with both times and the
    likely cause; a trajectory stamped in the past skips its past points and runs the rest; one
    that ends in the past is rejected. Each is counted in /diagnostics."""
    joints = start_bridge(procs, probe, task="reach", mode="realtime", command_timeout=0.5)
    clocks = probe.record(Clock, "/clock", CLOCK_QOS)
    diags = probe.record(DiagnosticArray, "/diagnostics", 10)
    pub = probe.node.create_publisher(JointTrajectory, "/arm_controller/joint_trajectory",
                                      COMMAND_QOS)
    wait_for(lambda: joints and clocks and pub.get_subscription_count(), 20, "bridge ready",
             procs=procs)
    names = [f"panda_joint{i}" for i in range(1, 8)]

    def trajectory(stamp, points):
        msg = JointTrajectory(joint_names=names)
        msg.header.stamp = from_sec(stamp)
        msg.points = [JointTrajectoryPoint(positions=list(map(float, q)),
                                           time_from_start=Duration(sec=int(t),
                                                                    nanosec=int(t % 1 * 1e9)))
                      for t, q in points]
        return msg

    def log_line(needle):
        found = [line for line in procs.log(BRIDGE, tail=100_000).splitlines() if needle in line]
        return found[0] if found else None

    def bridge_times(line):
        return [float(x) for x in re.findall(r"clock \((\d+\.\d+) s\)", line)]

    q0 = latest_q(joints)[:7]
    goal = q0 + np.array([0.2, -0.2, 0.1, 0.2, 0.0, 0.1, -0.2])
    # A wall-clock stamp: rejected, the arm does not move.
    before = to_sec(clocks[-1].clock)
    wall = time.time()
    pub.publish(trajectory(wall, [(1.0, goal)]))
    line = wait_for(lambda: log_line("rejected arm command"), 10, "the rejection logged",
                    procs=procs)
    after = to_sec(clocks[-1].clock)
    assert f"trajectory stamped {wall:.3f} s" in line and "wall-clock stamp" in line, line
    # the bridge's clock when it rejected: from the probe's newest /clock before the command
    # to the one it has when the line shows, within the /clock messages still in flight to the
    # probe then (under load a tick or more: 0.5 s allowed; a wall-clock time would be 1e9 off)
    assert before - 1e-3 <= bridge_times(line)[0] <= after + 0.5, (line, before, after)

    # Stamped a second in the past: its first point is skipped, the arm goes to the second.
    now = to_sec(joints[-1].header.stamp)
    pub.publish(trajectory(now - 1.0, [(0.5, q0 - 0.1), (3.0, goal)]))
    wait_for(lambda: np.allclose(latest_q(joints)[:7], goal, atol=0.03), 15,
             "the arm at the trajectory's goal", procs=procs)
    late = log_line("started late")
    assert late and f"trajectory stamped {now - 1.0:.3f} s started late: 1 of its 2 points" \
        in late, late

    # Ending in the past (more than a second after the last bad command: a burst of its own).
    now = to_sec(joints[-1].header.stamp)
    pub.publish(trajectory(now - 5.0, [(1.0, q0), (2.0, q0)]))
    line = wait_for(lambda: log_line(f"trajectory stamped {now - 5.0:.3f} s ends at"), 10,
                    "the rejection logged", procs=procs)
    assert f"ends at {now - 3.0:.3f} s, not after the bridge's clock" in line, line
    wait_for(lambda: diagnostics_values(diags).get("rejected_trajectory_in_past") == "1", 5,
             "the rejection counted", procs=procs)
    values = diagnostics_values(diags)
    assert values["rejected_start_too_far_ahead"] == "1"
    assert values["trajectories_started_late"] == "1"
    time.sleep(0.5)
    np.testing.assert_allclose(latest_q(joints)[:7], goal, atol=0.03)  # still at the goal


def test_pause_step_resume(procs, probe):
    start_bridge(procs, probe, task="reach", mode="realtime")
    clocks = probe.record(Clock, "/clock", CLOCK_QOS)
    wait_for(lambda: clocks, 20, "clock")
    assert probe.call(SetBool, f"/{BRIDGE}/set_pause", SetBool.Request(data=True)).success
    time.sleep(0.3)
    t_paused = to_sec(clocks[-1].clock)
    time.sleep(0.5)
    assert to_sec(clocks[-1].clock) == t_paused
    probe.set_params(BRIDGE, step_ticks=5)
    resp = probe.call(Trigger, f"/{BRIDGE}/step")
    assert resp.success, resp.message
    time.sleep(0.3)
    assert to_sec(clocks[-1].clock) == pytest.approx(t_paused + 5 * 0.05, abs=1e-6)
    assert probe.call(SetBool, f"/{BRIDGE}/set_pause", SetBool.Request(data=False)).success
    time.sleep(0.5)
    assert to_sec(clocks[-1].clock) > t_paused + 0.3
    assert not probe.call(Trigger, f"/{BRIDGE}/step").success  # only while paused


@pytest.mark.parametrize("task", ["reach", "push"])
def test_scripted_expert_through_ros(procs, ros, task):
    """Bridge and expert as separate processes in lockstep: >= 95% success over 50 episodes."""
    procs.start_node("mujoco_bridge", params={"task": task, "mode": "lockstep", "seed": 500,
                                              "cameras": [""]})
    procs.start_node("scripted_expert", params={"task": task, "trigger": "state"})
    outcomes = run_episodes(50, timeout=60.0)
    procs.check()
    seeds = [o.seed for o in outcomes]
    assert len(set(seeds)) == 50
    successes = sum(o.success for o in outcomes)
    assert successes >= 48, f"{task}: {successes}/50"


def test_cameras_render_only_while_subscribed(procs, probe):
    start_bridge(procs, probe, task="reach", mode="realtime", cameras=["front", "side"],
                 camera_width=64, camera_height=48, camera_rate=20.0)
    diags = probe.record(DiagnosticArray, "/diagnostics", 10)
    wait_for(lambda: sum(st.name.endswith("simulation") for m in list(diags) for st in m.status)
             >= 2, 10, "two diagnostics messages of the simulation", procs=procs)
    assert diagnostics_values(diags)["camera_frames"] == "0"
    side = probe.record(Image, "side/image_raw", SENSOR_QOS)
    wait_for(lambda: len(side) >= 5, 20, "side camera images", procs=procs)
    assert (side[-1].width, side[-1].height) == (64, 48)
    wait_for(lambda: int(diagnostics_values(diags).get("camera_frames", 0)) >= 5, 10,
             "rendered frames counted")
    # frames at the camera rate in simulation time: never closer than a period, and two in a
    # row a period apart (on a loaded machine a real-time bridge skips frames it is late for,
    # so the spacing's median is no measure of the rate)
    def spacings():
        return np.diff([to_sec(m.header.stamp) for m in list(side)])

    wait_for(lambda: np.any(np.abs(spacings() - 1 / 20.0) <= 0.011), 30,
             "two frames one camera period apart", procs=procs)
    assert np.all(spacings() >= 1 / 20.0 - 0.011), spacings()
    # Once the last subscriber has gone, rendering stops.
    for sub in list(probe.node.subscriptions):
        if sub.topic_name.endswith("side/image_raw"):
            probe.node.destroy_subscription(sub)
    time.sleep(1.5)
    wait_for(lambda: len(diags) >= 1, 5, "diagnostics")
    frames = int(diagnostics_values(diags)["camera_frames"])
    time.sleep(2.5)
    assert int(diagnostics_values(diags)["camera_frames"]) == frames


def test_lockstep_publishes_an_episodes_frames_before_its_final_status_and_does_not_hold_it(
        procs, probe):
    """A recorder stops on an episode's final status: the frames still rendering off the
    simulation thread when it went out were lost (a frame due at the final tick was always
    published after the status; a CI run lost the last frame of an episode, 48 of 49). Here a
    frame at every tick (camera rate = control rate): each frame of the episode is received
    before its final status.

    The status goes out with its state, never held for the state's answers: a controller may
    answer a state only once its status is in, as the policy node does (a bridge that held the
    final status until the final state was answered stalled every episode end for
    `lockstep_republish` s, and the policy node's answer to the final state came after it all
    the same). The controller here answers after the status, and `lockstep_republish` is long.
    Reception stamps of the middleware, in one process."""
    from conftest import AnswerAfterStatus
    from robot_imitation.sim.tasks import TaskConfig

    rate = TaskConfig.load("reach").control_rate
    start_bridge(procs, probe, task="reach", mode="lockstep", seed=11, start_paused=True,
                 cameras=["front"], camera_width=64, camera_height=48, camera_rate=rate,
                 lockstep_republish=5.0)
    ctl = AnswerAfterStatus(image_topic="/front/image_raw")
    try:
        wait_for(lambda: ctl.node.count_publishers("/front/image_raw") and ctl.connected(), 30,
                 "the bridge", procs=procs)
        time.sleep(0.5)  # matched with the test's subscriptions (the bridge renders)
        assert probe.call(SetBool, f"/{BRIDGE}/set_pause", SetBool.Request(data=False)).success
        wait_for(lambda: ctl.finals, 60, "the episode's final status", procs=procs)
        time.sleep(1.0)  # a frame published after the final status arrives meanwhile
    finally:
        ctl.close()
    end = ctl.finals[0]
    end_received = ctl.statuses[end]
    frames = ctl.frames
    assert end in frames, f"no frame of the final tick ({end} ns; last: {max(frames)} ns)"
    late = sorted(t for t, got in frames.items() if t <= end and got > end_received)
    assert not late, f"frames received after the final status: {late}"
    assert len(frames) > 10  # the episode's ticks since the test subscribed
    # the final status with its state (5 s when held for an answer that waits for it)
    held = (end_received - ctl.states[end][1]) * 1e-9
    assert held < 2.0, f"the final status came {held:.2f} s after its state"
    assert end in ctl.answered


def test_any_mjcf_through_the_bridge(procs, probe, tmp_path):
    from test_sim import SIMPLE_ARM

    model = tmp_path / "arm.xml"
    model.write_text(SIMPLE_ARM)
    joints = start_bridge(procs, probe, task="none", robot=str(model), mode="realtime",
                          command_timeout=0.0)
    wait_for(lambda: joints, 20, "joint states", procs=procs)
    assert list(joints[-1].name) == ["shoulder", "elbow"]
    pub = probe.node.create_publisher(Float64MultiArray, "/arm_controller/commands", COMMAND_QOS)
    wait_for(lambda: pub.get_subscription_count(), 10, "bridge subscribed")
    publish_until(pub, Float64MultiArray(data=[0.5, -0.5]),
                  lambda: np.allclose(latest_q(joints), [0.5, -0.5], atol=0.03), 15,
                  "the two-link arm at its command")


def test_lockstep_drops_a_late_answer_after_a_reset(procs, probe):
    """An answer to the state last published that arrives after a reset (here 0.6 s late,
    longer than any grace window) names that state: the bridge drops it instead of taking it
    for the answer to the new episode's first state, which stays unstepped until answered."""
    import threading

    from robot_imitation.nodes.common import LATCHED_QOS, answer

    joints = start_bridge(procs, probe, task="reach", mode="lockstep", seed=5,
                          lockstep_commands=["arm"])
    pub = probe.node.create_publisher(Float64MultiArray, "/arm_controller/commands", COMMAND_QOS)
    status, diag = [], probe.record(DiagnosticArray, "/diagnostics", 10)
    answering, delayed, late_sent = [False], [], []

    def on_state(msg):
        if not answering[0]:
            return
        q, stamp = list(msg.position[:7]), to_sec(msg.header.stamp)
        # from the episode's tick 4 on (its status can reach the probe after its state: the
        # first state seen at tick 4 or later, under load, is the one answered late)
        if len(joints) and status and status[-1].get("episode") == "1" and \
                int(status[-1].get("tick", 0)) >= 4 and not delayed:
            delayed.append(stamp)  # the answer to this state comes after the reset
            threading.Timer(0.6, lambda: (pub.publish(answer(q, stamp)),
                                          late_sent.append(time.monotonic()))).start()
        elif not delayed:
            pub.publish(answer(q, stamp))

    def on_status(msg):
        status.append({kv.key: kv.value for kv in msg.status[0].values})

    probe.node.create_subscription(DiagnosticArray, "episode/status", on_status, LATCHED_QOS)
    probe.node.create_subscription(JointState, "joint_states", on_state, STATE_QOS)
    wait_for(lambda: joints and pub.get_subscription_count(), 20, "the idle state",
             procs=procs)
    answering[0] = True
    assert probe.call(Trigger, f"/{BRIDGE}/reset").success
    wait_for(lambda: delayed, 30, "tick 4 of the episode", procs=procs)
    assert probe.call(Trigger, f"/{BRIDGE}/reset").success  # before the answer to tick 4
    wait_for(lambda: late_sent, 5, "the late answer", procs=procs)
    time.sleep(1.0)
    now = status[-1]
    assert now["episode"] == "2" and now["tick"] == "0", \
        f"the late answer stepped the new episode: {now}"

    def late_dropped():
        for msg in reversed(list(diag)):
            for st in msg.status:
                values = {kv.key: kv.value for kv in st.values}
                if "lockstep_late_dropped" in values:
                    return int(values["lockstep_late_dropped"]) >= 1
        return False

    wait_for(late_dropped, 5, "the late answer counted as dropped", procs=procs)


def test_realtime_drops_an_answer_to_the_episode_before_a_reset(procs, probe):
    """Real time: the bridge applied every command as it came, so an answer to a state of the
    episode before a reset, still on its way when the robot was put back, drove the arm back
    toward the old episode's pose (a jump). A command naming a state before the episode's
    start is now dropped and counted (`earlier_episode_dropped`); unstamped commands and
    answers to this episode's states are applied."""
    from robot_imitation.nodes.common import answer

    joints = start_bridge(procs, probe, task="reach", mode="realtime", seed=5,
                          command_timeout=0.0)
    pub = probe.node.create_publisher(Float64MultiArray, "/arm_controller/commands", COMMAND_QOS)
    diag = probe.record(DiagnosticArray, "/diagnostics", 10)
    wait_for(lambda: len(joints) > 5 and pub.get_subscription_count(), 20, "the bridge",
             procs=procs)
    old = joints[-1]
    old_stamp, q_old = to_sec(old.header.stamp), np.array(old.position[:7])
    assert probe.call(Trigger, f"/{BRIDGE}/reset").success
    n = len(joints)
    wait_for(lambda: len(joints) > n + 5, 10, "states of the new episode", procs=procs)
    q0 = latest_q(joints)
    far = q_old.copy()
    far[0] += 1.0
    pub.publish(answer(far, old_stamp))  # answers a state of the episode before the reset
    time.sleep(1.0)
    assert abs(latest_q(joints)[0] - q0[0]) < 0.02, "the earlier episode's answer was applied"

    def dropped():
        for msg in reversed(list(diag)):
            for st in msg.status:
                values = {kv.key: kv.value for kv in st.values}
                if "earlier_episode_dropped" in values:
                    return values["earlier_episode_dropped"], values["commands_rejected"]
        return None

    wait_for(lambda: dropped() == ("1", "0"), 5, "the answer counted as dropped", procs=procs)
    # an answer to a state of this episode is applied
    now = joints[-1]
    target = np.array(now.position[:7])
    target[0] += 0.4
    publish_until(pub, answer(target, to_sec(now.header.stamp)),
                  lambda: latest_q(joints)[0] - q0[0] > 0.3, 15, "joint 1 to follow")


def _play_bridge(procs, probe, node, params=None):
    """Start ``node`` (a lockstep controller on task reach; ``params`` for its own) with this
    test playing the bridge:
    (its answers as received, ``publish(sec, topics)`` of the state at ``sec`` s with its
    episode status when whole, the status publisher, the stamp an answer names)."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Joy

    from robot_imitation.nodes.common import STATE_PUB_QOS, STATUS_PUB_QOS
    from robot_imitation.pairing import layout_stamp
    from robot_imitation.spec import Spec

    if node in ("scripted_expert", "policy_node"):
        params = params or {"task": "reach", "trigger": "state"}
        topic, mtype = "/arm_controller/commands", Float64MultiArray

        def stamp_of(msg):
            return layout_stamp(msg.layout)
    else:
        params, topic, mtype = {"spec": "reach"}, "/joy", Joy

        def stamp_of(msg):
            return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
    answers = probe.record(mtype, topic, STATE_QOS)
    pubs = {"/joint_states": probe.node.create_publisher(JointState, "/joint_states",
                                                          STATE_PUB_QOS)}
    pubs.update({t: probe.node.create_publisher(PoseStamped, t, STATE_PUB_QOS)
                 for t in ("/ee_pose", "/target_pose")})
    status = probe.node.create_publisher(DiagnosticArray, "/episode/status", STATUS_PUB_QOS)
    procs.start_node(node, params=params)
    names = next(f.joints for f in Spec.load("reach").observations if f.key == "joint_pos")
    watched = ["/ee_pose", "/target_pose"] if node == "scripted_supervisor" else list(pubs)
    wait_for(lambda: all(pubs[t].get_subscription_count() for t in watched)
             and probe.node.count_publishers(topic), 30, node, procs=procs)

    def publish(sec: int, topics=tuple(pubs), with_status: bool = True) -> None:
        stamp = from_sec(float(sec))
        for t in topics:
            if t == "/joint_states":
                msg = JointState(name=list(names), position=[0.0, -0.5, 0.0, -2.0, 0.0, 1.6,
                                                             0.8, 0.02, 0.02],
                                 velocity=[0.0] * len(names), effort=[0.0] * len(names))
            else:
                msg = PoseStamped()
                msg.pose.position.x, msg.pose.position.z = 0.4 + 0.1 * len(t), 0.4
                msg.pose.orientation.w = 1.0
            msg.header.stamp = stamp
            pubs[t].publish(msg)
        if with_status and set(topics) == set(pubs):
            msg = DiagnosticArray()
            msg.header.stamp = stamp
            msg.status = [DiagnosticStatus(name="episode", values=[
                KeyValue(key="episode", value="0"), KeyValue(key="tick", value=str(sec - 1)),
                KeyValue(key="done", value="false")])]
            status.publish(msg)

    return answers, publish, status, stamp_of


@pytest.mark.ros
@pytest.mark.parametrize("node", ["scripted_expert", "scripted_supervisor"])
def test_a_lockstep_controller_answers_a_state_published_again(procs, probe, node):
    """A lockstep bridge publishes a state again when no answer reached it (lockstep_republish):
    an answer was lost, or went out while only another reader of the command topic was matched
    (a recorder, `ros2 topic echo`), not the bridge yet. The expert and the supervisor answered
    each state once, so the simulation waited for ever (a CI run's recording pipeline: its first
    episode never ended). They now answer a state that comes again whole once more, with the
    same message; a part of it again is no repetition. This test plays the bridge."""
    answers, publish, _, stamp_of = _play_bridge(procs, probe, node)
    publish(1)
    wait_for(lambda: len(answers) == 1, 10, "the answer to state 1", procs=procs)
    publish(1, topics=("/ee_pose",))  # a part again: no repetition
    time.sleep(0.5)
    assert len(answers) == 1
    publish(1, topics=("/joint_states", "/target_pose"))  # now the whole state came again
    wait_for(lambda: len(answers) == 2, 10, "the answer to state 1 again", procs=procs)
    assert answers[1] == answers[0] and stamp_of(answers[1]) == 10**9
    publish(2)
    wait_for(lambda: len(answers) == 3, 10, "the answer to state 2", procs=procs)
    assert stamp_of(answers[2]) == 2 * 10**9
    assert "state 1.000 s published again: answered again (1 in all)" in procs.log(node)


@pytest.mark.ros
@pytest.mark.parametrize("node", ["scripted_expert", "policy_node", "scripted_supervisor"])
def test_a_controller_drops_a_malformed_episode_status_and_answers_on(procs, probe, node,
                                                                      tmp_path):
    """Bytes on /episode/status that are no DiagnosticArray (a raw publisher's, a broken
    driver's) ended the scripted expert with a traceback: it reads the status raw, and
    deserializing such bytes raised in its callback (the policy node and the scripted
    supervisor, reading it typed, lost them without a word). Each now drops them with one line
    naming the topic (at most one every 5 s), waits for the state's readable status (a lockstep
    bridge publishes the state and its status again when no answer came) and answers on."""
    from conftest import untrained_checkpoint

    params = None
    if node == "policy_node":
        # (on simulation time, as in lockstep: this test's stamps are seconds from 0)
        params = {"checkpoint": str(untrained_checkpoint(tmp_path / "ckpt", "reach")),
                  "trigger": "state", "use_sim_time": True}
    answers, publish, status, stamp_of = _play_bridge(procs, probe, node, params)
    publish(1)
    wait_for(lambda: len(answers) == 1, 10, "the answer to state 1", procs=procs)
    publish(2, with_status=False)
    for _ in range(3):
        status.publish(b"\x00\x01\x00\x00" + b"\xff" * 8)  # state 2's status, unreadable
    time.sleep(0.5)
    assert len(answers) == 1, "state 2 was answered without its status"
    publish(2)  # again, as the bridge does when no answer came
    wait_for(lambda: len(answers) == 2, 10, "the answer to state 2", procs=procs)
    assert stamp_of(answers[1]) == 2 * 10**9
    publish(3)
    wait_for(lambda: len(answers) == 3, 10, "the answer to state 3", procs=procs)
    assert procs.stop(node) == {node: 0}
    log = procs.log(node, tail=100_000)
    assert log.count("/episode/status: a message that cannot be deserialized as "
                     "diagnostic_msgs/msg/DiagnosticArray (") == 1, log
    assert "12 bytes)" in log, log
    assert "Traceback" not in log, log
