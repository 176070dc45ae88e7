"""What a stalled reader's transport lost is sent again soon enough for the recorder to wait.

A process that falls behind (a loaded machine) cannot take what arrives: its shared-memory
queue overflows and those messages are lost in transport. A reliable writer sends them again
once its next heartbeat tells the reader they are missing. With Fast DDS's default heartbeat
period (3 s) the repair of a burst came 2.5-5.5 s after the reader woke; a recorder waits at most
``answer_timeout`` (2 s by default) for an episode's final messages, and a DAgger run under
load trained on an episode whose last 23 steps so never reached the bag. The suite's Fast DDS
profiles give writers a 100 ms heartbeat.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.ros

# a reader as the recorder's (reliable, keep all), in a process of its own that says when it
# has every message of the burst
READER = r"""
import sys, time, rclpy
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from geometry_msgs.msg import PoseStamped

rclpy.init()
node = rclpy.create_node("repair_reader")
burst, bursts = int(sys.argv[1]), int(sys.argv[2])
got = [set() for _ in range(bursts)]
node.create_subscription(PoseStamped, "/repair_burst",
                         lambda m: got[m.header.stamp.sec].add(m.header.stamp.nanosec),
                         QoSProfile(depth=1000, history=QoSHistoryPolicy.KEEP_ALL,
                                    reliability=QoSReliabilityPolicy.RELIABLE))
print("ready", flush=True)
for k in range(bursts):  # each burst's count, and when its last message came
    deadline = time.monotonic() + 30.0
    while len(got[k]) < burst and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.01)
    print(len(got[k]), time.time(), flush=True)
"""

BURST = 1000  # twice what a reader's shared-memory port queue holds (512)
# bursts, each repaired within the recorder's wait. A writer's periodic heartbeat is timed from
# its last publish: with Fast DDS's 3 s, every repair came 2.55-2.8 s after the reader woke
# (0.2 s after the burst); with the suite's 100 ms, 0.1-0.2 s on a quiet machine and up to
# 1.4 s on a machine loaded far beyond its cores (the reader taking a thousand messages)
BURSTS = 3


def await_match(reader, pub) -> None:
    """Until ``reader`` (a process running a reader script of this module) says it is ready and
    ``pub`` has matched its subscription, both sides."""
    assert reader.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 30.0
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pub.get_subscription_count() == 1, "the reader never matched"
    time.sleep(0.5)  # its side has matched too


def test_a_stalled_readers_lost_messages_come_within_the_recorders_answer_timeout(probe):
    from geometry_msgs.msg import PoseStamped

    from robot_imitation.nodes.common import STATE_PUB_QOS
    from robot_imitation.nodes.recorder_node import EpisodeRecorder

    timeout = next(p.default for p in EpisodeRecorder.PARAMETERS if p.name == "answer_timeout")
    pub = probe.node.create_publisher(PoseStamped, "/repair_burst", STATE_PUB_QOS)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(BURST), str(BURSTS)],
                              text=True, stdout=subprocess.PIPE, env=os.environ.copy())
    repairs = []
    try:
        await_match(reader, pub)
        msg = PoseStamped()
        for k in range(BURSTS):
            os.kill(reader.pid, signal.SIGSTOP)
            try:
                msg.header.stamp.sec = k
                for n in range(BURST):
                    msg.header.stamp.nanosec = n
                    pub.publish(msg)
                time.sleep(0.2)
            finally:
                woke = time.time()
                os.kill(reader.pid, signal.SIGCONT)
            count, at = reader.stdout.readline().split()
            assert int(count) == BURST, f"burst {k}: {count} of {BURST} messages ever came"
            repairs.append(float(at) - woke)
    finally:
        if reader.poll() is None:
            reader.kill()
        reader.wait()
    # every message, the lost ones sent again, within the wait
    assert max(repairs) < timeout, (
        f"the last lost message of each burst came {[round(r, 2) for r in repairs]} s after the "
        f"reader woke; a recorder waits {timeout} s for an episode's final messages")


# a reliable reader in a process of its own, taking what comes until told to stop
QUIET_READER = r"""
import sys, rclpy
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from geometry_msgs.msg import PoseStamped

rclpy.init()
node = rclpy.create_node("quiet_reader")
node.create_subscription(PoseStamped, "/nack_suppression", lambda m: None,
                         QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE))
print("ready", flush=True)
while rclpy.ok():
    rclpy.spin_once(node, timeout_sec=0.05)
"""


def event_thread_switches() -> int:
    """Voluntary context switches so far of this process's Fast DDS event threads
    (``dds.ev.*``): each wake-up ends with one, the thread waiting again (a preemption by
    another process's work is not counted)."""
    total = 0
    for task in os.scandir(f"/proc/{os.getpid()}/task"):
        try:
            with open(f"{task.path}/comm") as f:
                if not f.read().startswith("dds.ev"):
                    continue
            with open(f"{task.path}/status") as f:
                total += sum(int(line.split()[1]) for line in f
                             if line.startswith("voluntary_ctxt_switches"))
        except OSError:  # a thread that ended meanwhile
            continue
    return total


def test_a_publish_to_a_reader_in_another_process_does_not_wake_the_event_thread_each_time(probe):
    """Each sample a reliable writer sends to a reader in another process restarts that
    reader's NACK-suppression timer; with Fast DDS's default duration (0) the timer is due at
    once, so every publish woke the participant's event thread (and the publishing thread
    waited on the mutex they share): at 1 kHz, 3-4 context switches a tick in a node that
    answers with two commands. The suite's profiles suppress NACKs for 3 ms after a send (less
    than the reader's 5 ms heartbeat response delay: a loss's NACK still gets its repair), so
    the timer runs at most once in 3 ms whatever the rate (the switches counted against the
    publishes, and against the time where a loaded machine slowed the publishes)."""
    from geometry_msgs.msg import PoseStamped

    from robot_imitation.nodes.common import STATE_PUB_QOS

    pub = probe.node.create_publisher(PoseStamped, "/nack_suppression", STATE_PUB_QOS)
    reader = subprocess.Popen([sys.executable, "-c", QUIET_READER], text=True,
                              stdout=subprocess.PIPE, env=os.environ.copy())
    try:
        await_match(reader, pub)
        msg, sent = PoseStamped(), 1000
        before, t = event_thread_switches(), time.monotonic()
        for n in range(sent):   # a publish about every 0.4 ms
            msg.header.stamp.nanosec = n
            pub.publish(msg)
            time.sleep(0.0003)
        woken, elapsed = event_thread_switches() - before, time.monotonic() - t
    finally:
        reader.kill()
        reader.wait()
    # With the suppression: about one wake-up in each 3 ms, 2.6-3.6 switches (340-380 in 0.43 s
    # quiet, 750-770 in 0.63-0.69 s beside three busy loops, 536 in 0.43 s in a CI run, which
    # failed a bound of 3 per 3 ms). Without: one or more for each publish while the machine is
    # quiet (2,500-2,540), fewer once load merges the wake-ups (940-2,720 beside three busy
    # loops: the lowest would pass). So: fewer than 0.9 a publish, or 4 per 3 ms where the
    # publishes took longer.
    bound = max(0.9 * sent, 4 * elapsed / 0.003) + 50
    assert woken < bound, (f"the event threads switched {woken} times for {sent} publishes in "
                           f"{elapsed:.2f} s (at most {bound:.0f} with NACKs suppressed for 3 ms)")
