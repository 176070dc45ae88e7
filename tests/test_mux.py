"""The command mux: its logic, and the node over real DDS in each mode (intervention through a
sensor_msgs/Joy button, lockstep sync)."""
import time

import numpy as np
import pytest
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import Float64MultiArray, String

from conftest import mux_value, wait_for
from robot_imitation.algorithms.dagger import BetaSchedule
from robot_imitation.deploy.limits import CommandLimiter, LimitsError, command_limits
from robot_imitation.deploy.mux import MuxCore
from robot_imitation.nodes.common import (COMMAND_QOS, SENSOR_QOS, STATE_QOS, STATUS_QOS,
                                         answer)
from robot_imitation.pairing import stamp_of
from robot_imitation.spec import Spec

ARM, GRIP = "/arm_controller/commands", "/gripper_controller/commands"
KEEP = QoSProfile(depth=1000, reliability=QoSReliabilityPolicy.RELIABLE,
                  history=QoSHistoryPolicy.KEEP_LAST)
# how long a forward (or a line) may take to come: generous, as a test run beside other work
# once took over 5 s for one; a passing wait ends at once
WAIT = 20.0


# ====================================================================== core
def test_mixture_draws_per_step_and_per_episode():
    core = MuxCore([ARM], ["expert", "policy"], "mixture", beta=0.3, seed=1)
    picks = [core.choose() for _ in range(4000)]
    assert abs(picks.count("expert") / 4000 - 0.3) < 0.03
    core = MuxCore([ARM], ["expert", "policy"], "mixture", beta=0.5, per="episode", seed=2)
    per_episode = []
    for _ in range(200):
        core.new_episode()
        steps = {core.choose() for _ in range(20)}
        assert len(steps) == 1, "one source for the whole episode"
        per_episode.append(steps.pop())
    assert 70 < per_episode.count("expert") < 130
    for mode, expected in (("expert", "expert"), ("policy", "policy")):
        core.set_mode(mode)
        assert core.choose() == expected
    with pytest.raises(ValueError, match="beta"):
        core.set_mode("mixture", 1.5)
    with pytest.raises(ValueError, match="mode"):
        core.set_mode("autopilot")
    # a mode that forwards a source the mux does not have is refused (it forwarded nothing,
    # saying only "no answer from the chosen source")
    core = MuxCore([ARM], ["a", "b"], "a", intervention_source="b")
    with pytest.raises(ValueError, match=r"mode 'mixture' forwards the sources \['expert', "
                       r"'policy'\], but \['expert', 'policy'\] are not among the sources"):
        core.set_mode("mixture")
    with pytest.raises(ValueError, match=r"\['policy'\] is not among"):
        core.set_mode("intervention")
    with pytest.raises(ValueError, match=r"\['expert'\] is not among"):
        core.set_mode("expert")
    assert core.mode == "a"
    with pytest.raises(ValueError, match=r"mode 'mixture' forwards"):
        MuxCore([ARM], ["a", "b"], "mixture")


def test_sync_waits_for_every_source_and_consumes_in_order():
    core = MuxCore([ARM, GRIP], ["expert", "policy", "human"], "policy",
                   sync_sources=["expert", "policy"])
    core.on_state()
    core.on_answer("policy", ARM, "p-arm-1")
    core.on_answer("policy", GRIP, "p-grip-1")
    assert core.ready() is None, "the expert has not labelled this state yet"
    core.on_answer("expert", ARM, "e-arm-1")
    core.on_answer("expert", GRIP, "e-grip-1")
    assert core.ready() == [(ARM, "p-arm-1"), (GRIP, "p-grip-1")]
    assert core.ready() is None, "no new state yet"
    # the next state's answers may arrive before the mux sees the state
    core.on_answer("policy", ARM, "p-arm-2")
    core.on_answer("policy", GRIP, "p-grip-2")
    core.on_answer("expert", ARM, "e-arm-2")
    core.on_answer("expert", GRIP, "e-grip-2")
    core.set_mode("expert")
    core.on_state()
    assert core.ready() == [(ARM, "e-arm-2"), (GRIP, "e-grip-2")]
    # a timeout forwards the chosen source alone; the other's late answer is dropped at the
    # next forward instead of shifting every later pairing
    core.on_state()
    core.on_answer("expert", ARM, "e-arm-3")
    core.on_answer("expert", GRIP, "e-grip-3")
    assert core.ready() is None and core.force() == [(ARM, "e-arm-3"), (GRIP, "e-grip-3")]
    core.on_answer("policy", ARM, "p-arm-3-late")
    core.on_answer("policy", GRIP, "p-grip-3-late")
    core.on_state()
    for source in ("policy", "expert"):
        core.on_answer(source, ARM, f"{source[0]}-arm-4")
        core.on_answer(source, GRIP, f"{source[0]}-grip-4")
    assert core.ready() == [(ARM, "e-arm-4"), (GRIP, "e-grip-4")]
    core.on_state()
    for source in ("policy", "expert"):
        core.on_answer(source, ARM, f"{source[0]}-arm-5")
        core.on_answer(source, GRIP, f"{source[0]}-grip-5")
    core.set_mode("policy")
    assert core.ready() == [(ARM, "p-arm-5"), (GRIP, "p-grip-5")]


def test_a_mixture_draws_once_per_state_however_often_a_timeout_asks():
    """A sync timeout that finds the drawn source's answer missing asks again every 50 ms; each
    ask used to draw again, so the draw ended on whichever source had answered (the mixture's
    beta no longer held, and the draws depended on the timing)."""
    core = MuxCore([ARM], ["expert", "policy"], "mixture", beta=0.5, seed=8)
    first = np.random.default_rng(8).random(2)   # the draws of the next two states
    assert first[0] < 0.5 <= first[1], "seed 8: the expert, then the policy"
    core.on_state(stamp=1)
    core.on_answer("policy", ARM, "p-1")
    assert all(core.force() is None for _ in range(50)), "drawn: the expert, who never answered"
    core.on_answer("expert", ARM, "e-1")
    assert core.force() == [(ARM, "e-1")]
    core.on_state(stamp=2)   # the next state: the next draw
    core.on_answer("policy", ARM, "p-2")
    assert core.force() == [(ARM, "p-2")]


def test_joy_sync_waits_for_the_button_state_of_each_state():
    """A scripted supervisor stamps its Joy like the state it judges: in intervention mode the
    mux forwards a state's answer only once that state's button state is in, so who drives a
    step never depends on which message came first."""
    core = MuxCore([ARM], ["expert", "policy"], "intervention", intervention_source="expert",
                   joy_sync=True)
    core.on_state(stamp=1)
    core.on_answer("policy", ARM, "p-1")
    core.on_answer("expert", ARM, "e-1")
    assert core.ready() is None, "no button state for this state yet"
    core.on_joy(True, stamp=1)
    assert core.ready() == [(ARM, "e-1")] and core.last_choice == "expert"
    # the Joy of the next state may come before the state itself
    core.on_joy(False, stamp=2)
    core.on_answer("policy", ARM, "p-2")
    core.on_answer("expert", ARM, "e-2")
    core.on_state(stamp=2)
    assert core.ready() == [(ARM, "p-2")] and core.last_choice == "policy"
    # a stale Joy (another state's) does not count; the timeout still forwards
    core.on_state(stamp=3)
    core.on_answer("policy", ARM, "p-3")
    core.on_answer("expert", ARM, "e-3")
    assert core.ready() is None and core.force() == [(ARM, "p-3")]
    # the next episode's button state may come before the final state is forwarded
    core.on_state(stamp=5)
    core.on_joy(True, stamp=5)
    core.on_answer("expert", ARM, "e-5")
    core.on_joy(False, stamp=6)
    core.on_answer("policy", ARM, "p-5")
    assert core.ready() == [(ARM, "e-5")], "state 5's own button state decides"
    # outside intervention mode the button is not waited for
    core.set_mode("expert")
    core.on_state(stamp=7)
    core.on_answer("policy", ARM, "p-7")
    core.on_answer("expert", ARM, "e-7")
    assert core.ready() == [(ARM, "e-7")]


def test_beta_schedules():
    assert [BetaSchedule("constant", 0.5)(i) for i in (1, 2, 3)] == [0.5, 0.5, 0.5]
    assert [BetaSchedule("linear", 1.0, iterations=4)(i) for i in (1, 2, 3, 4, 5)] == \
        [1.0, 0.75, 0.5, 0.25, 0.0]
    assert [BetaSchedule("exponential", 1.0, 0.5)(i) for i in (1, 2, 3)] == [1.0, 0.5, 0.25]
    with pytest.raises(ValueError, match="cosine"):
        BetaSchedule("cosine")


# ====================================================================== node
def test_sync_drops_an_answer_naming_an_earlier_state():
    """After a sync timeout forwarded one source alone, the other's late answer to that state
    must not be paired with the next state (it names its state: dropped)."""
    core = MuxCore([ARM, GRIP], ["expert", "policy"], mode="expert")
    core.on_state(stamp_of(1.0))
    core.on_answer("policy", ARM, answer([1.0] * 7, 1.0))
    core.on_answer("policy", GRIP, answer([1.0], 1.0))
    core.set_mode("policy")
    assert core.ready() is None          # the expert has not answered state 1
    assert core.force()[0][1].data[0] == 1.0  # timeout: the policy's answer alone
    core.set_mode("expert")
    core.on_state(stamp_of(2.0))
    core.on_answer("expert", ARM, answer([10.0] * 7, 1.0))  # late: answers state 1
    core.on_answer("expert", GRIP, answer([10.0], 1.0))
    assert core.ready() is None, "a late answer is no answer to state 2"
    for source, value in (("policy", 2.0), ("expert", 20.0)):
        core.on_answer(source, ARM, answer([value] * 7, 2.0))
        core.on_answer(source, GRIP, answer([value], 2.0))
    out = core.ready()
    assert [m.data[0] for _, m in out] == [20.0, 20.0] and core.dropped_late == 2


def test_sync_keeps_an_answer_to_the_next_episode_across_a_forward():
    """At an episode's end the robot starts the next episode without executing the answer to
    the final state, so a fast source's answer to the new episode's first state can reach the
    mux before the slow source's answer to the final state (the policy node answers a state once
    its status is in) and before the mux sees the new state. Forwarding the final state's answer
    must not drop it: that state would then never be answered by the chosen source, and the
    lockstep would wait forever (the pipeline's "episode 14 not done after 120 s")."""
    core = MuxCore([ARM, GRIP], ["expert", "policy"], mode="expert")
    final, first = 5.0, 5.5  # the stamps of the final state and of the next episode's first
    core.on_state(stamp_of(final))
    core.on_answer("expert", ARM, answer([1.0] * 7, final))
    core.on_answer("expert", GRIP, answer([1.0], final))
    core.on_answer("expert", ARM, answer([2.0] * 7, first))   # the next episode's already
    core.on_answer("expert", GRIP, answer([2.0], first))
    assert core.ready() is None, "the policy has not answered the final state"
    core.on_answer("policy", ARM, answer([0.0] * 7, final))
    core.on_answer("policy", GRIP, answer([0.0], final))
    assert [m.data[0] for _, m in core.ready()] == [1.0, 1.0]
    core.on_state(stamp_of(first))
    assert core.ready() is None, "the policy has not answered the new state yet"
    assert [m.data[0] for _, m in core.force()] == [2.0, 2.0], \
        "the expert's answer to the new state was dropped with the final state's"
    # the policy's late answer to that state is still no answer to the next one
    core.on_answer("policy", ARM, answer([0.0] * 7, first))
    core.on_answer("policy", GRIP, answer([0.0], first))
    core.on_state(stamp_of(6.0))
    core.set_mode("policy")
    for source, value in (("policy", 3.0), ("expert", 4.0)):
        core.on_answer(source, ARM, answer([value] * 7, 6.0))
        core.on_answer(source, GRIP, answer([value], 6.0))
    assert [m.data[0] for _, m in core.ready()] == [3.0, 3.0]
    core.on_state(stamp_of(7.0))
    core.on_answer("policy", ARM, answer([5.0] * 7, 7.0))
    core.on_answer("policy", GRIP, answer([5.0], 7.0))
    assert core.unanswered() == ["expert"], "who a waiting mux names"


def test_sync_waits_for_each_state_s_status_once_statuses_come():
    """Which forward is an episode's first is known from the state's own status (the bridge
    publishes one with every state, stamped alike), not from when the status arrives: the
    action filter's reset and a per-episode draw are then the same on any machine."""
    core = MuxCore([ARM, GRIP], ["expert", "policy"], "mixture", beta=0.5, per="episode",
                   seed=4)

    def state(t, *, status=None, answers=True):
        core.on_state(stamp_of(t))
        if status is not None:
            core.on_status(stamp_of(t), status)
        if answers:
            for src, v in (("expert", 1.0), ("policy", 2.0)):
                core.on_answer(src, ARM, answer([v] * 7, t))
                core.on_answer(src, GRIP, answer([v], t))

    state(1.0)  # no status has come yet: forwarded on the answers alone
    assert core.ready() is not None and not core.episode_started
    state(2.0, status="3")
    assert core.ready() is not None and core.episode_started  # the first status: episode 3
    draws = []
    for k in range(3, 40):
        episode = str(3 + k // 5)
        state(float(k))  # every answer is in, the status not yet: it waits for it
        assert core.ready() is None and core.state_pending
        core.on_status(stamp_of(float(k)), episode)
        assert core.ready() is not None
        assert core.episode_started == (k % 5 == 0), k
        draws.append((episode, core.last_choice))
    per_episode = {}
    for episode, choice in draws:
        per_episode.setdefault(episode, set()).add(choice)
    assert all(len(c) == 1 for c in per_episode.values()), "one draw per episode"
    assert {c.pop() for c in per_episode.values()} == {"expert", "policy"}


def test_the_command_limiter_counts_from_the_last_command_or_after_a_reset_the_joints():
    spec = Spec.load("push")
    limiter = CommandLimiter(command_limits(spec, "panda"), spec)
    d = 2.175 / 20  # the first joint's velocity limit per tick of push's 20 Hz
    home = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 0.0, 0.785])
    measured = {"joint_pos": np.append(home, [0.04, 0.04])}
    # the first command after a reset counts from the measured joints (the arm is relative to
    # them); the gripper has no measured reference and no change limit: its bounds only
    np.testing.assert_allclose(limiter.part(0, home + 0.05, measured), home + 0.05)
    assert limiter.clamped_commands == 0
    out = limiter.part(0, home + 1.0)
    np.testing.assert_allclose(out[:4], home[:4] + 0.05 + d)
    assert list(limiter.part(1, [3.0])) == [1.0] and list(limiter.part(1, [-2.0])) == [0.0]
    assert limiter.clamped_commands == 3
    far = np.full(7, 10.0)  # beyond every joint's upper limit, and far from the last
    np.testing.assert_allclose(limiter.part(0, far)[0], out[0] + d)
    limiter.reset()
    stop = limiter(np.append(far, 0.5))  # no reference: clamped to the bounds only
    np.testing.assert_array_equal(stop[:7], limiter.filters[0].upper)
    assert stop[0] == pytest.approx(2.8973)  # (the model's joint range)
    assert stop[7] == 0.5
    limiter.reset()
    step = limiter(np.append(far, 0.5), measured)
    np.testing.assert_allclose(step[:4], home[:4] + d)
    # limits given replace that part of the robot's
    reach = Spec.load("reach")
    assert command_limits(reach, "panda", max_delta=[0.0]).max_delta[0] == np.inf
    with pytest.raises(LimitsError, match="bound nothing"):
        command_limits(spec, "", lower=[-np.inf], upper=[np.inf], max_delta=[0.0])
    assert command_limits(spec, "", lower=[-np.inf], upper=[np.inf], max_delta=[0.0],
                          allow_unlimited=True).unlimited


class Sources:
    def __init__(self, probe, names=("expert", "policy", "human")):
        self.pubs = {(s, t): probe.node.create_publisher(Float64MultiArray, f"/{s}{t}",
                                                         COMMAND_QOS)
                     for s in names for t in (ARM, GRIP)}

    def matched(self) -> bool:
        return all(p.get_subscription_count() > 0 for p in self.pubs.values())

    def send(self, source: str, value: float) -> None:
        self.pubs[(source, ARM)].publish(Float64MultiArray(data=[value] * 7))
        self.pubs[(source, GRIP)].publish(Float64MultiArray(data=[value]))


VALUE = {"expert": 1.0, "policy": 2.0, "human": 3.0}
# Limits that touch none of the values these tests tell the sources apart by (which source is
# forwarded is their subject; test_every_forward_passes_the_action_filter is the filter's)
WIDE = {"action_lower": [-1e6], "action_upper": [1e6], "max_delta": [0.0]}


def forwarded_during(sources, arm, names, seconds=0.5) -> set:
    """Values the mux forwards while every named source publishes (at 100 Hz)."""
    n = len(arm)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for s in names:
            sources.send(s, VALUE[s])
        time.sleep(0.01)
    time.sleep(0.1)
    return {m.data[0] for m in arm[n:]}


@pytest.mark.ros
def test_mux_modes_and_joy_intervention(procs, probe):
    arm = probe.record(Float64MultiArray, ARM, KEEP)
    executed = probe.record(String, "/command_mux/source", KEEP)
    joy = probe.node.create_publisher(Joy, "/joy", SENSOR_QOS)
    procs.start_node("command_mux", params={"mode": "policy", "intervention_button": 5, **WIDE})
    sources = Sources(probe)
    wait_for(lambda: sources.matched() and probe.node.count_publishers(ARM), 30,
             "the mux's subscriptions", procs=procs)
    everyone = ("expert", "policy", "human")
    assert forwarded_during(sources, arm, everyone) == {2.0}
    probe.set_params("command_mux", mode="expert")
    assert forwarded_during(sources, arm, everyone) == {1.0}
    # intervention: the policy drives until the button is held, then the person
    probe.set_params("command_mux", mode="intervention")
    assert forwarded_during(sources, arm, everyone) == {2.0}
    held = Joy(buttons=[0] * 5 + [1] + [0] * 6)
    for _ in range(5):
        joy.publish(held)
        time.sleep(0.02)
    assert forwarded_during(sources, arm, everyone) == {3.0}
    joy.publish(Joy(buttons=[0] * 12))
    time.sleep(0.1)
    assert forwarded_during(sources, arm, everyone) == {2.0}
    assert {m.data for m in executed} == {"policy", "expert", "human"}
    # a mixture forwards both (a new draw every 1/rate s)
    probe.set_params("command_mux", mode="mixture", beta=0.5)
    assert forwarded_during(sources, arm, ("expert", "policy"), seconds=1.5) == {1.0, 2.0}


def mux_connected(diag) -> bool:
    """Has the mux reported (on /diagnostics) that it hears every input it waits for?"""
    return any(st.name.startswith("command_mux") and
               {kv.key: kv.value for kv in st.values}.get("connected") == "true"
               for msg in list(diag) for st in msg.status)


@pytest.mark.ros
def test_mux_sync_forwards_once_every_source_answered(procs, probe):
    arm = probe.record(Float64MultiArray, ARM, KEEP)
    executed = probe.record(String, "/command_mux/source", KEEP)
    state = probe.node.create_publisher(JointState, "/joint_states", STATE_QOS)
    procs.start_node("command_mux", params={"mode": "mixture", "beta": 0.5, "sync": True,
                                            "seed": 3, "sync_timeout": 5.0, **WIDE})
    sources = Sources(probe)
    diag = probe.record(DiagnosticArray, "/diagnostics", 10)
    # connected from both sides: the mux itself hears every input (discovery is not symmetric)
    wait_for(lambda: sources.matched() and state.get_subscription_count()
             and probe.node.count_publishers(ARM) and mux_connected(diag), 30,
             "the mux's subscriptions", procs=procs)
    for k in range(1, 41):
        msg = JointState()
        msg.header.stamp.sec = k
        state.publish(msg)
        state.publish(msg)          # a republished state changes nothing
        sources.send("policy", 100.0 + k)
        time.sleep(0.01)
        assert len(arm) == k - 1, "forwarded before the expert labelled the state"
        sources.send("expert", 200.0 + k)
        wait_for(lambda: len(arm) == k, WAIT, f"the command for state {k}", procs=procs)
        assert arm[-1].data[0] in (100.0 + k, 200.0 + k)
    wait_for(lambda: len(executed) == 40, WAIT, "the executed sources")
    chosen = [m.data for m in executed]
    assert [("expert" if m.data[0] > 200 else "policy") for m in arm] == chosen
    assert 8 < chosen.count("expert") < 32


def synced_mux(procs, probe, state, names, wide=True, **params) -> "Sources":
    """A mux in `expert` mode syncing on ``state`` (the probe's JointState publisher), its
    sources ``names`` played by the probe; returns them once the mux hears everything.
    ``wide``: with limits that touch no value (WIDE), else the robot's."""
    procs.start_node("command_mux", params={"mode": "expert", "sync": True,
                                            **(WIDE if wide else {}), **params})
    sources = Sources(probe, names=names)
    diag = probe.record(DiagnosticArray, "/diagnostics", 10)
    wait_for(lambda: sources.matched() and state.get_subscription_count()
             and probe.node.count_publishers(ARM) and mux_connected(diag), 30,
             "the mux's subscriptions", procs=procs)
    return sources


@pytest.mark.ros
def test_a_waiting_mux_says_whose_answer_it_waits_for(procs, probe):
    """A state the chosen source never answers is not forwarded (the robot waits), and the mux
    says so past `sync_timeout`, naming the source (a stalled lockstep used to log nothing): a
    source that has not answered anything yet is still starting (said), one that stops
    answering is warned about."""
    arm = probe.record(Float64MultiArray, ARM, KEEP)
    state = probe.node.create_publisher(JointState, "/joint_states", STATE_QOS)
    sources = synced_mux(procs, probe, state, ("expert", "policy"), sync_timeout=0.3)
    msg = JointState()
    msg.header.stamp.sec = 7
    state.publish(msg)
    sources.send("policy", 1.0)

    def said(stamp: str) -> str:
        wait_for(lambda: f"state {stamp} s unanswered for" in procs.log("command_mux"), 10,
                 f"the mux's line on state {stamp}", procs=procs)
        return next(ln for ln in procs.log("command_mux").splitlines()
                    if f"state {stamp} s unanswered for" in ln)

    line = said("7.000")
    assert "no answer from expert (mode expert; none has answered yet)" in line, line
    assert line.startswith("[INFO]"), line
    assert len(arm) == 0, "nothing is forwarded without the chosen source's answer"
    sources.send("expert", 2.0)
    wait_for(lambda: len(arm) == 1, WAIT, "the forward once the expert answered", procs=procs)
    msg.header.stamp.sec = 8
    state.publish(msg)
    sources.send("policy", 1.0)
    line = said("8.000")
    assert "no answer from expert (mode expert): nothing forwarded" in line, line
    assert line.startswith("[WARN]"), line
    assert len(arm) == 1

    # the chosen source answered, past sync_timeout: forwarded, and the warning names what
    # was missing (it said "a sync source did not answer in time" even when every source had
    # answered and the state's own episode status was what never came)
    def warned(stamp: str) -> str:
        wait_for(lambda: f"state {stamp} s: no " in procs.log("command_mux"), 10,
                 f"the mux's warning on state {stamp}", procs=procs)
        return next(ln for ln in procs.log("command_mux").splitlines()
                    if f"state {stamp} s: no " in ln)

    sources.send("expert", 2.0)  # (every sync source has answered state 8: forwarded now)
    wait_for(lambda: len(arm) == 2, WAIT, "state 8's forward", procs=procs)
    msg.header.stamp.sec = 9
    state.publish(msg)
    sources.send("expert", 2.0)
    wait_for(lambda: len(arm) == 3, WAIT, "state 9's forward, past sync_timeout", procs=procs)
    assert "no answer from policy within sync_timeout (0.3 s): forwarded expert's answer" \
        in warned("9.000")
    status = probe.node.create_publisher(DiagnosticArray, "/episode/status", STATUS_QOS)
    wait_for(lambda: status.get_subscription_count(), 10, "the mux's status subscription")
    for sec, with_status in ((10, True), (11, False)):
        msg.header.stamp.sec = sec
        state.publish(msg)
        if with_status:  # (statuses come from here on: each state waits for its own)
            st = DiagnosticArray(status=[DiagnosticStatus(
                values=[KeyValue(key="episode", value="1")])])
            st.header.stamp.sec = sec
            status.publish(st)
        sources.send("policy", 1.0)
        sources.send("expert", 2.0)
        wait_for(lambda: len(arm) == sec - 7, WAIT, f"state {sec}'s forward", procs=procs)
    assert "state 10.000 s: no" not in procs.log("command_mux")
    assert "no episode status within sync_timeout (0.3 s): forwarded expert's answer" \
        in warned("11.000")
    # state 12's status unreadable (bytes that are no DiagnosticArray): dropped and said, once
    msg.header.stamp.sec = 12
    state.publish(msg)
    for _ in range(3):
        status.publish(b"\x00\x01\x00\x00" + b"\xff" * 8)
    sources.send("policy", 1.0)
    sources.send("expert", 2.0)
    # forwarded past sync_timeout, without its status (the warning's line was due 5 s later)
    wait_for(lambda: len(arm) == 5, WAIT, "state 12's forward", procs=procs)
    said = ("/episode/status: a message that cannot be deserialized as "
            "diagnostic_msgs/msg/DiagnosticArray (truncated, 12 bytes)")
    wait_for(lambda: said in procs.log("command_mux"), WAIT, "the line on the bad status",
             procs=procs)
    time.sleep(0.3)
    assert procs.log("command_mux").count(said) == 1, procs.log("command_mux")


@pytest.mark.ros
def test_a_synced_mux_forwards_again_a_state_published_again(procs, probe):
    """A lockstep bridge publishes a state again when no answer reached it. The mux ignored a
    republished state, so a forward the bridge did not get (lost, or sent before the bridge's
    subscription matched) stalled the simulation for ever. It now sends that forward again;
    a state not forwarded yet still waits for its sources."""
    arm = probe.record(Float64MultiArray, ARM, KEEP)
    executed = probe.record(String, "/command_mux/source", KEEP)
    state = probe.node.create_publisher(JointState, "/joint_states", STATE_QOS)
    sources = synced_mux(procs, probe, state, ("expert",), sync_sources=["expert"])
    msg = JointState()
    msg.header.stamp.sec = 7
    state.publish(msg)
    time.sleep(0.2)
    state.publish(msg)  # again before any answer: nothing to forward yet
    time.sleep(0.3)
    assert len(arm) == 0
    sources.send("expert", 4.0)
    wait_for(lambda: len(arm) == 1, WAIT, "the forward", procs=procs)
    state.publish(msg)  # again after the forward: the same forward again
    wait_for(lambda: len(arm) == 2, WAIT, "the forward again", procs=procs)
    assert list(arm[1].data) == list(arm[0].data) == [4.0] * 7
    wait_for(lambda: len(executed) == 2, WAIT, "the executed source, twice")
    assert [m.data for m in executed] == ["expert", "expert"]
    msg.header.stamp.sec = 8
    state.publish(msg)
    time.sleep(0.3)
    assert len(arm) == 2  # a new state waits for its answer
    assert "state 7.000 s published again: its forward sent again (1 in all)" in \
        procs.log("command_mux")


PANDA = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1",
                                                     "panda_finger_joint2"]


@pytest.mark.ros
def test_every_forward_passes_the_action_filter(procs, probe):
    """The mux forwarded each source's commands as they came: a hand-over from one source to
    another jumped, and nothing bounded a command before the robot. Each forward now passes
    the action filter (the task's robot by default): bounds, the change per tick counted from
    the last forward whoever sent it, and after a new episode from the measured joints. A
    command of the wrong size or with a NaN is not forwarded."""
    arm = probe.record(Float64MultiArray, ARM, KEEP)
    grip = probe.record(Float64MultiArray, GRIP, KEEP)
    diag = probe.record(DiagnosticArray, "/diagnostics", 10)
    state = probe.node.create_publisher(JointState, "/joint_states", STATE_QOS)
    procs.start_node("command_mux", params={"mode": "policy"})
    sources = Sources(probe)
    wait_for(lambda: sources.matched() and probe.node.count_publishers(ARM)
             and state.get_subscription_count(), 30, "the mux's subscriptions", procs=procs)
    d = 2.175 / 20   # panda_joint1's velocity limit per tick of push's 20 Hz
    # no arm command goes before a joint state (nothing to count its change from); the first
    # after one counts from the measured joints (the robot at 0.5)
    sources.send("policy", 0.5)
    wait_for(lambda: len(grip) == 1, WAIT, "the gripper's forward")
    wait_for(lambda: mux_value(diag, "no_reference_dropped") == "1", WAIT, "the arm's refusal")
    assert len(arm) == 0
    state.publish(JointState(name=PANDA, position=[0.5] * 7 + [0.04] * 2))
    wait_for(lambda: sources.send("policy", 0.5) or time.sleep(0.05) or len(arm), 5,
             "the first forward")
    time.sleep(0.2)
    arm.clear()
    assert grip[-1].data[0] == 0.5
    grip.clear()
    probe.set_params("command_mux", mode="expert")
    for k in range(0, 5):   # the expert takes over, far from the policy's last command
        time.sleep(1 / 20)  # (a control tick or more after the last forward: a whole tick)
        sources.send("expert", 2.5)
        wait_for(lambda: len(arm) == k + 1, WAIT, f"forward {k}")
        assert arm[-1].data[0] == pytest.approx(min(0.5 + (k + 1) * d, 2.5)), k
    sources.send("human", 9.0)  # not the chosen source: nothing
    sources.pubs[("expert", ARM)].publish(Float64MultiArray(data=[float("nan")] * 7))
    sources.pubs[("expert", ARM)].publish(Float64MultiArray(data=[1.0] * 3))
    sources.pubs[("expert", GRIP)].publish(Float64MultiArray(data=[7.0]))
    wait_for(lambda: "a command on /arm_controller/commands not forwarded: not finite [nan, "
             in procs.log("command_mux"), WAIT, "the refusal", procs=procs)
    wait_for(lambda: mux_value(diag, "refused_commands") == "2", WAIT, "both refusals counted")
    # (each of the expert's arm commands, and more: 0.5 is above panda_joint4's upper limit)
    assert int(mux_value(diag, "clamped_commands")) > 5
    wait_for(lambda: len(grip) == 6, WAIT, "the gripper's forward")
    assert grip[-1].data[0] == 1.0, "the gripper's opening is at most 1"
    assert len(arm) == 5

    # lockstep: after a new episode (the state's own status says so) the change counts from
    # the measured joints, not from the last forward
    procs.stop("command_mux")
    arm.clear()
    status = probe.node.create_publisher(DiagnosticArray, "/episode/status", STATUS_QOS)
    sources = synced_mux(procs, probe, state, ("expert",), wide=False, sync_sources=["expert"])
    for k, (episode, joint1) in enumerate([("1", 0.0), ("1", 0.0), ("2", 2.0)], start=1):
        msg = JointState(name=PANDA, position=[joint1] + [0.0] * 8)
        msg.header.stamp.sec = k
        state.publish(msg)
        done = DiagnosticArray(status=[DiagnosticStatus(
            values=[KeyValue(key="episode", value=episode)])])
        done.header.stamp.sec = k
        status.publish(done)
        sources.pubs[("expert", ARM)].publish(answer([1.5] + [0.0] * 6, float(k)))
        sources.pubs[("expert", GRIP)].publish(answer([0.5], float(k)))
        wait_for(lambda: len(arm) == k, WAIT, f"the forward of state {k}", procs=procs)
    assert [m.data[0] for m in arm] == pytest.approx([d, 2 * d, 2.0 - d])


@pytest.mark.ros
def test_without_sync_a_new_episode_is_known_before_a_command_of_it_is_forwarded(procs, probe):
    """Without sync (a robot at real time) the mux took the episode's status, the states and
    the commands as each came: a new episode's first command that came before the status
    saying the robot was put back was filtered from the last forward (the old episode's pose:
    a jump for the robot at its start pose), and one that came before the state of the new
    episode from the old state's joints. A command now waits while the newest state's status
    (or the state a command names, or after a new episode the state of its start) is not in;
    a command naming a state of an earlier episode is not forwarded."""
    arm = probe.record(Float64MultiArray, ARM, KEEP)
    diag = probe.record(DiagnosticArray, "/diagnostics", 10)
    state = probe.node.create_publisher(JointState, "/joint_states", STATE_QOS)
    status = probe.node.create_publisher(DiagnosticArray, "/episode/status", STATUS_QOS)
    procs.start_node("command_mux", params={"mode": "policy", "sync_timeout": 0.3})
    sources = Sources(probe, names=("policy",))
    wait_for(lambda: sources.matched() and probe.node.count_publishers(ARM)
             and state.get_subscription_count() and status.get_subscription_count(), 30,
             "the mux's subscriptions", procs=procs)

    def publish_state(k: int, joint1: float) -> None:
        msg = JointState(name=PANDA, position=[joint1] + [0.0] * 8)
        msg.header.stamp.sec = k
        state.publish(msg)

    def publish_status(k: int, episode: str) -> None:
        msg = DiagnosticArray(status=[DiagnosticStatus(
            values=[KeyValue(key="episode", value=episode)])])
        msg.header.stamp.sec = k
        status.publish(msg)

    def send(joint1: float, k: int) -> None:
        sources.pubs[("policy", ARM)].publish(answer([joint1] + [-1.0] * 6, float(k)))

    sent = [0]

    def first_forward() -> bool:
        """The first state, its status and the answer to it, again while every answer sent was
        dropped: on a loaded machine the mux's subscription to the states can match the probe's
        publisher after the first state went out (a volatile reader: lost to it), and its
        answer is then dropped (no state yet, counted), as the fresh-clone CI saw twice."""
        if arm:
            return True
        if int(mux_value(diag, "no_reference_dropped") or 0) >= sent[0]:
            publish_state(1, 1.0)
            publish_status(1, "1")
            time.sleep(0.2)
            send(1.0, 1)
            sent[0] += 1
        return False

    wait_for(first_forward, WAIT, "the first forward", procs=procs)
    assert len(arm) == 1
    # episode 2: its first state (the robot put back at 0), the policy's answer to it, and only
    # then (late) the state's status; the mux forwarded 0.89 (1.0 less a tick's change)
    publish_state(2, 0.0)
    send(0.0, 2)
    # held past sync_timeout, the mux says what it waits for (and forwards nothing before)
    wait_for(lambda: "commands wait for the episode status of state 2.000 s"
             in procs.log("command_mux"), 10, "the mux's line on the wait", procs=procs)
    assert len(arm) == 1
    publish_status(2, "2")
    wait_for(lambda: len(arm) == 2, WAIT, "the forward of episode 2's first command", procs=procs)
    # episode 3: the policy's answer before the state and its status come (a mux lagging
    # behind), then the status, then the state (the robot put back at 1)
    send(1.0, 3)
    time.sleep(0.2)
    publish_status(3, "3")
    time.sleep(0.2)
    publish_state(3, 1.0)
    wait_for(lambda: len(arm) == 3, WAIT, "the forward of episode 3's first command", procs=procs)
    send(0.0, 2)  # an answer to episode 2's state, late: not forwarded
    send(1.0, 3)
    wait_for(lambda: len(arm) == 4, WAIT, "the next forward", procs=procs)
    time.sleep(0.2)
    assert [m.data[0] for m in arm] == [1.0, 0.0, 1.0, 1.0]
    wait_for(lambda: mux_value(diag, "stale_dropped") == "1", WAIT, "the stale answer counted")
    assert int(mux_value(diag, "held_for_status")) >= 2


def test_the_status_gate_holds_a_command_until_its_episode_is_known():
    """``StatusGate`` (the mux without sync) on the orders the state, its status and the
    commands can come in: the node's test is
    ``test_without_sync_a_new_episode_is_known_before_a_command_of_it_is_forwarded``."""
    from robot_imitation.deploy.mux import StatusGate

    s = stamp_of
    gate = StatusGate()
    gate.on_state(s(1.0))
    assert not gate.waits() and not gate.waits(s(5.0)), "no status heard: nothing waits"
    gate.on_status(s(1.0), new_episode=True)
    assert gate.paired and not gate.waits() and not gate.waits(s(1.0))
    assert gate.waits(s(2.0)), "it names a state whose status is not in"
    gate.on_state(s(2.0))
    assert gate.waits(), "the newest state's status is not in"
    gate.hold("policy", ARM, "a", s(2.0), now=0.0)
    gate.hold("policy", GRIP, "g", None, now=0.1)
    gate.hold("policy", ARM, "b", s(2.0), now=0.2)  # the newer one of the topic replaces it
    assert gate.release() == [] and gate.held_since == 0.0
    gate.on_status(s(2.0), new_episode=True)
    assert gate.release() == [(GRIP, "policy", "g"), (ARM, "policy", "b")]
    assert gate.held_since is None and gate.held_total == 3
    # the status of a new episode before its state: its commands wait for the state (the
    # filter's reference), an answer to the old episode is dropped
    gate.on_status(s(3.0), new_episode=True)
    assert gate.waits() and gate.stale_answer(s(2.0)) and not gate.stale_answer(None)
    gate.hold("policy", ARM, "old", s(2.0), now=1.0)
    gate.hold("policy", GRIP, "new", s(3.0), now=1.0)
    assert gate.release() == [] and gate.stale == 1 and list(gate.held) == [GRIP]
    gate.on_state(s(3.0))
    assert gate.release() == [(GRIP, "policy", "new")] and gate.held == {}
    # without a relative action part the episode's state is not waited for
    gate = StatusGate(needs_state=False)
    gate.on_state(s(1.0))
    gate.on_status(s(1.0), new_episode=True)
    gate.on_status(s(2.0), new_episode=True)
    assert not gate.waits()
    # statuses that never share a state's stamp (one per episode, on another clock): nothing
    # waits for them, the robot never stalls
    gate = StatusGate()
    gate.on_status(s(1000.0), new_episode=True)
    for t in (1.0, 2.0, 3.0):
        gate.on_state(s(t))
        assert not gate.waits() and not gate.waits(s(t)) and not gate.stale_answer(s(t))
    gate.on_status(s(1000.5), new_episode=True)
    assert not gate.waits() and not gate.paired


@pytest.mark.ros
def test_a_malformed_command_or_joy_is_said_and_dropped(procs, probe):
    """Bytes that are no message on a source's command topic or on ``joy`` (a raw publisher's,
    a broken driver's) were lost in the middleware without a word; the mux now says so, one
    line naming the topic, the type and the size, and forwards the next command."""
    arm = probe.record(Float64MultiArray, ARM, KEEP)
    procs.start_node("command_mux", params={"mode": "policy", **WIDE})
    sources = Sources(probe, names=("policy",))
    joy = probe.node.create_publisher(Joy, "/joy", SENSOR_QOS)
    wait_for(lambda: sources.matched() and probe.node.count_publishers(ARM)
             and joy.get_subscription_count(), 30, "the mux's subscriptions", procs=procs)
    sources.pubs[("policy", ARM)].publish(b"\x00\x01\x00\x00" + b"\xff" * 8)
    wait_for(lambda: "/policy/arm_controller/commands: a message that cannot be deserialized "
             "as std_msgs/msg/Float64MultiArray (12 bytes): dropped" in procs.log("command_mux"),
             10, "the mux's line", procs=procs)
    sources.send("policy", 2.0)
    wait_for(lambda: len(arm) == 1, WAIT, "the next command's forward", procs=procs)
    assert arm[0].data[0] == 2.0
    time.sleep(5.1)  # (one line every 5 s at most)
    joy.publish(b"\x00\x01\x00\x00" + b"\xff" * 8)
    wait_for(lambda: "/joy: a message that cannot be deserialized as sensor_msgs/msg/Joy "
             "(12 bytes): dropped" in procs.log("command_mux"), 10, "the line on joy",
             procs=procs)
    procs.check()  # (raises naming a process that died)
    assert "Traceback" not in procs.log("command_mux")
