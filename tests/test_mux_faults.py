"""The command mux with a person in the loop: a teleop's command forwarded for a state only when
it came after the state, parameters set at run time applied, the intervention button of the
joystick driver's layout (and a pad without it said), a joystick gone quiet while the button is
held said.

The core's rule is tested on ``deploy.mux.MuxCore`` alone; the others run the mux in its own
process over real DDS, the sources, states and joystick played by the test's node."""
import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import Float64MultiArray, String

from conftest import mux_value, wait_for
from robot_imitation.deploy.mux import MuxCore
from robot_imitation.nodes.common import COMMAND_QOS, SENSOR_QOS, STATE_QOS

ARM, GRIP = "/arm_controller/commands", "/gripper_controller/commands"
KEEP = QoSProfile(depth=1000, reliability=QoSReliabilityPolicy.RELIABLE,
                  history=QoSHistoryPolicy.KEEP_LAST)
# limits that touch none of the values the sources are told apart by (no reference needed)
WIDE = {"action_lower": [-1e6], "action_upper": [1e6], "max_delta": [0.0]}
RIGHTSHOULDER, GUIDE = 10, 5   # joy's game_controller_node (SDL) button indexes


def answer(core: MuxCore, source: str, tag) -> None:
    core.on_answer(source, ARM, f"{source}-arm-{tag}")
    core.on_answer(source, GRIP, f"{source}-grip-{tag}")


def forward(source: str, tag) -> list:
    return [(ARM, f"{source}-arm-{tag}"), (GRIP, f"{source}-grip-{tag}")]


# ====================================================================== core
def test_a_person_s_command_counts_for_a_state_only_when_it_came_after_it():
    """A synced mux (lockstep) in intervention mode with a person's teleop as the intervention
    source (not a sync source: it publishes at its own pace, naming no state). The teleop's
    newest command stood for ever: with the button held and the teleop silent, its one
    command from long ago was forwarded for every state, published as the person's (HG-DAgger
    trains on those). It now counts for a state only when it came after the state."""
    core = MuxCore([ARM, GRIP], ["expert", "policy", "human"], "intervention",
                   sync_sources=["expert", "policy"], intervention_source="human")
    answer(core, "human", "old")  # the person once intervened, long ago
    for k in range(1, 4):
        core.on_state(k)
        answer(core, "expert", k)
        answer(core, "policy", k)
        assert core.ready() == forward("policy", k)
    # the button held, the teleop silent: nothing to forward; the mux waits for the person
    core.on_joy(True)
    core.on_state(4)
    answer(core, "expert", 4)
    answer(core, "policy", 4)
    out = core.ready()
    assert out is None, f"forwarded {out} (a command from before the state) as the person's"
    assert core.force() is None, "a sync timeout forwards nothing older either"
    assert core.unanswered() == ["human"]
    answer(core, "human", 4)      # the person's next command: this state's
    assert core.ready() == forward("human", 4) and core.last_choice == "human"
    # the person at its own pace: each state waits for a command after it, and gets it
    for k in range(5, 25):
        core.on_state(k)
        answer(core, "expert", k)
        answer(core, "policy", k)
        assert core.ready() is None
        answer(core, "human", k)
        assert core.ready() == forward("human", k)
    assert core.forwarded["human"] == 21
    # a command between the final state's forward and the next episode's first state is not
    # the new episode's
    answer(core, "human", "between")
    core.on_state(100)
    core.on_status(100, "2")
    answer(core, "expert", 100)
    answer(core, "policy", 100)
    assert core.ready() is None
    answer(core, "human", 100)
    assert core.ready() == forward("human", 100)
    # one topic's command after the state and the other's before: not an answer yet
    core.on_state(101)
    core.on_status(101, "2")
    answer(core, "expert", 101)
    answer(core, "policy", 101)
    core.on_answer("human", ARM, "human-arm-101")
    assert core.ready() is None
    core.on_answer("human", GRIP, "human-grip-101")
    assert core.ready() == forward("human", 101)
    # handed back: the policy, whatever the person sent
    core.on_joy(False)
    core.on_state(102)
    core.on_status(102, "2")
    answer(core, "expert", 102)
    answer(core, "policy", 102)
    assert core.ready() == forward("policy", 102)
    # a person driving alone (mode human, not a sync source): the same rule
    core.set_mode("human")
    core.on_state(103)
    core.on_status(103, "2")
    answer(core, "expert", 103)
    answer(core, "policy", 103)
    assert core.ready() is None and core.unanswered() == ["human"]
    answer(core, "human", 103)
    assert core.ready() == forward("human", 103)


# ====================================================================== the node over DDS
class Rig:
    """The probe's publishers for the sources, the states and the joystick, and what the mux
    forwards."""

    def __init__(self, probe, names=("expert", "policy", "human")):
        node = probe.node
        self.node = node
        self.pubs = {(s, t): node.create_publisher(Float64MultiArray, f"/{s}{t}", COMMAND_QOS)
                     for s in names for t in (ARM, GRIP)}
        self.state = node.create_publisher(JointState, "/joint_states", STATE_QOS)
        self.joy = node.create_publisher(Joy, "/joy", SENSOR_QOS)
        self.arm = probe.record(Float64MultiArray, ARM, KEEP)
        self.source = probe.record(String, "/command_mux/source", KEEP)
        self.diag = probe.record(DiagnosticArray, "/diagnostics", 10)

    def matched(self) -> bool:
        return all(p.get_subscription_count() for p in self.pubs.values()) and \
            self.joy.get_subscription_count() and self.state.get_subscription_count() and \
            self.node.count_publishers(ARM) and mux_value(self.diag, "mode") is not None

    def send(self, source: str, value: float) -> None:
        self.pubs[(source, ARM)].publish(Float64MultiArray(data=[value] * 7))
        self.pubs[(source, GRIP)].publish(Float64MultiArray(data=[value]))

    def publish_state(self, sec: int) -> None:
        msg = JointState()
        msg.header.stamp.sec = sec
        self.state.publish(msg)

    def press(self, held: bool, button: int = RIGHTSHOULDER, count: int = 15) -> None:
        buttons = [0] * count
        if held:
            buttons[button] = 1
        self.joy.publish(Joy(buttons=buttons))

    def sources(self, since: int = 0) -> list:
        return [m.data for m in self.source[since:]]


def start(procs, probe, **params) -> Rig:
    procs.start_node("command_mux", params={**WIDE, **params})
    rig = Rig(probe)
    # (in sync, the mux itself hears every input it waits for: discovery is not symmetric)
    wait_for(lambda: rig.matched() and (not params.get("sync") or
                                        mux_value(rig.diag, "connected") == "true"),
             30, "the mux's subscriptions", procs=procs)
    return rig


def hold(rig, held: bool) -> None:
    """The button held (or released) until the mux says so in /diagnostics."""
    want = str(held).lower()
    wait_for(lambda: rig.press(held) or time.sleep(0.05) or
             mux_value(rig.diag, "intervening") == want, 10, f"intervening {want}")


def log_has(procs, text: str) -> bool:
    return text in procs.log("command_mux", tail=200_000)


@pytest.mark.ros
def test_a_synced_mux_waits_for_the_person_s_next_command(procs, probe):
    """The audit's set-up for a person in a lockstep run: a synced mux in intervention mode,
    the teleop as the intervention source (no joy_sync). With the button held and the teleop
    silent it forwarded the person's one command from long ago for every state, each published
    on ``~/source`` as the person's; it now waits for a command after the state (saying so
    past sync_timeout), and forwards each state once the person's next command comes."""
    rig = start(procs, probe, mode="intervention", sync=True, sync_timeout=0.3,
                intervention_button=RIGHTSHOULDER)
    rig.send("human", 3.0)   # the person once intervened, long ago
    time.sleep(0.2)
    for k in range(1, 4):
        rig.publish_state(k)
        rig.send("policy", 2.0)
        rig.send("expert", 1.0)
        wait_for(lambda: len(rig.arm) == k, 10, f"state {k}'s forward", procs=procs)
    assert rig.sources() == ["policy"] * 3
    # the button held, the teleop silent
    hold(rig, True)
    rig.publish_state(4)
    rig.send("policy", 2.0)
    rig.send("expert", 1.0)
    said = "state 4.000 s unanswered for"
    wait_for(lambda: len(rig.arm) > 3 or log_has(procs, said), 10, "state 4's forward or line",
             procs=procs)
    assert len(rig.arm) == 3, (f"forwarded {rig.arm[-1].data[0]} as {rig.sources()[-1]}'s: "
                               "a command from before the state")
    assert log_has(procs, "no answer from human since the state came (mode intervention)")
    # the person's teleop, at its own pace: each state forwarded once its next command came
    for k in range(4, 9):
        if k > 4:
            rig.publish_state(k)
            rig.send("policy", 2.0)
            rig.send("expert", 1.0)
        wait_for(lambda: rig.send("human", 3.0 + k) or time.sleep(0.05) or len(rig.arm) == k,
                 10, f"state {k}'s forward", procs=procs)
    assert rig.sources(3) == ["human"] * 5
    assert all(m.data[0] >= 7.0 for m in rig.arm[3:]), "only commands sent since state 4"


def set_result(probe, **params) -> list:
    """The SetParameters results of setting ``params`` on the mux."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                            for k, v in params.items()])
    return probe.call(SetParameters, "/command_mux/set_parameters", req).results


@pytest.mark.ros
def test_sync_timeout_set_at_run_time_is_applied(procs, probe):
    """``sync_timeout`` set at run time was accepted (successful) and ignored: the node kept
    the value of its start. It now acts from the set on (a value out of range is refused)."""
    rig = start(procs, probe, mode="expert", sync=True, sync_timeout=60.0)
    probe.set_params("command_mux", sync_timeout=0.3)
    refused = set_result(probe, sync_timeout=-1.0)
    assert not refused[0].successful
    # the policy (a sync source) never answers: the expert's answer goes past sync_timeout
    rig.publish_state(1)
    rig.send("expert", 1.0)
    wait_for(lambda: len(rig.arm) == 1, 20, "the forward past the sync_timeout set (0.3 s), "
             "not the start's 60 s", procs=procs)
    wait_for(lambda: log_has(procs, "state 1.000 s: no answer from policy within sync_timeout "
                             "(0.3 s): forwarded expert's answer"), 10, "the warning")
    # mode and beta: checked, then applied (a mode the mux cannot forward is refused)
    bad = set_result(probe, mode="autopilot")
    assert not bad[0].successful and "autopilot" in bad[0].reason
    probe.set_params("command_mux", mode="policy")
    wait_for(lambda: mux_value(rig.diag, "mode") == "policy", 10, "the mode set")


def driver(rig, held: bool, button: int, count: int = 15) -> str:
    """Who drives while the joystick says so and the policy and the person publish (once the
    joystick's word is in)."""
    n = None
    start = time.monotonic()
    while time.monotonic() < start + 0.8:
        if n is None and time.monotonic() > start + 0.4:
            n = len(rig.source)
        rig.press(held, button, count)
        for s, v in (("policy", 2.0), ("human", 3.0)):
            rig.send(s, v)
        time.sleep(0.02)
    executed = set(rig.sources(n))
    return executed.pop() if len(executed) == 1 else str(rig.sources(n))


@pytest.mark.ros
def test_the_default_intervention_button_is_right_shoulder(procs, probe):
    """The default ``intervention_button`` was 5, "right shoulder on SDL pads": in joy's
    game_controller_node (SDL) layout, the one config/teleop.yaml names, 5 is GUIDE and
    RIGHTSHOULDER 10."""
    rig = start(procs, probe, mode="intervention")
    assert driver(rig, True, GUIDE) == "policy", "GUIDE is not the intervention button"
    assert driver(rig, True, RIGHTSHOULDER) == "human"
    assert driver(rig, False, RIGHTSHOULDER) == "policy"


@pytest.mark.ros
def test_a_joy_without_the_intervention_button_is_said(procs, probe):
    """A Joy with fewer buttons than the button's index made no intervention without a word (a
    pad, or a driver's layout, without that button); it is said once for each button count,
    naming the index and the count."""
    rig = start(procs, probe, mode="intervention", intervention_button=RIGHTSHOULDER)
    said = ("a Joy with 5 buttons: intervention_button 10 is not among them, so it counts as "
            "released (no intervention)")
    assert driver(rig, True, 4, count=5) == "policy"   # every button of a 5-button pad held
    wait_for(lambda: log_has(procs, said), 10, "the line on the short Joy", procs=procs)
    driver(rig, True, 4, count=5)
    assert driver(rig, True, RIGHTSHOULDER) == "human"
    assert procs.log("command_mux", tail=200_000).count("a Joy with 5 buttons") == 1


@pytest.mark.ros
def test_a_joystick_gone_quiet_while_the_button_is_held_is_said(procs, probe):
    """Without sync, a joystick that stops publishing while the button is held (unplugged, its
    driver gone) kept the intervention source driving with nothing said. It still does (the
    robot is not handed back to the policy without the person), and the mux now warns once
    ``joy_timeout`` passed, and says so in /diagnostics (``joy_silent``, level WARN)."""
    # (joy_timeout: the default 0.5 s, the teleop's)
    rig = start(procs, probe, mode="intervention", intervention_button=RIGHTSHOULDER)
    hold(rig, True)
    # the joystick quiet; the policy publishes at 20 Hz, the person not: nothing is forwarded
    n = len(rig.arm)
    warned = "intervening, but no Joy for"
    wait_for(lambda: rig.send("policy", 2.0) or time.sleep(0.05) or log_has(procs, warned),
             10, "the warning on the quiet joystick", procs=procs)
    assert log_has(procs, "(joy_timeout 0.5 s): the last Joy held intervention_button 10, so "
                   "human still drives")
    wait_for(lambda: mux_value(rig.diag, "joy_silent") == "true", 10, "joy_silent")
    assert any(st.level == DiagnosticStatus.WARN for msg in rig.diag for st in msg.status
               if st.name.startswith("command_mux") and
               {kv.key: kv.value for kv in st.values}.get("joy_silent") == "true")
    rig.send("human", 3.0)
    wait_for(lambda: len(rig.arm) > n, 10, "the person's command", procs=procs)
    assert {m.data[0] for m in rig.arm[n:]} == {3.0}, "the policy never took over by itself"
    # the joystick back, the button released: the policy drives, the silence is over
    hold(rig, False)
    wait_for(lambda: log_has(procs, "a Joy again"), 10, "the line on the Joy back")
    wait_for(lambda: mux_value(rig.diag, "joy_silent") == "false", 10, "joy_silent over")
    n = len(rig.arm)
    wait_for(lambda: rig.send("policy", 2.0) or time.sleep(0.05) or len(rig.arm) > n, 10,
             "the policy's forward", procs=procs)
    assert rig.arm[-1].data[0] == 2.0
    # joy_timeout set at run time acts from then on
    probe.set_params("command_mux", joy_timeout=0.2)
    hold(rig, True)
    wait_for(lambda: log_has(procs, "(joy_timeout 0.2 s)"), 10, "the warning with 0.2 s",
             procs=procs)
