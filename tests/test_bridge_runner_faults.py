"""Faults of the bridge's run-time parameters and seeds, and of the episode_runner executable:
each process its own, over real DDS."""
import json
import os
import re
import signal

import pytest
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from conftest import wait_for
from robot_imitation.nodes.common import STATE_QOS

BRIDGE = "mujoco_bridge"
RUNNER = "episode_runner"
# how long a process that should stop at once may take (start-up on a loaded machine included)
EXITS_WITHIN = 120


def start_bridge(procs, probe, **params):
    """Start the bridge; returns the joint states the probe receives from then on (the first
    state may be missed: it is published once the bridge is up, when no reader may be matched
    yet), once its reset and parameter services answer."""
    from rcl_interfaces.srv import SetParameters

    params.setdefault("cameras", [""])
    procs.start_node(BRIDGE, params=params)
    joints = probe.record(JointState, "joint_states", STATE_QOS)
    for srv, name in ((Trigger, "reset"), (SetParameters, "set_parameters")):
        wait_for(lambda: probe.caller.ready(srv, f"/{BRIDGE}/{name}", 0.2), 60,
                 f"the bridge's {name} service", procs=procs)
    return joints


def set_param(probe, name, value):
    """The bridge's answer to setting ``name`` (SetParametersResult)."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    req = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
    return probe.call(SetParameters, f"/{BRIDGE}/set_parameters", req).results[0]


def test_every_bridge_parameter_settable_at_run_time_is_applied():
    """Each bridge parameter that is not read-only is one the bridge applies at run time (its
    value read where it acts, or applied in its post-set callback). ``start_paused`` was
    settable and did nothing (``~/set_pause`` pauses at run time): read-only now. A parameter
    made settable later must be added here once it takes effect at run time."""
    from robot_imitation.nodes.bridge_node import MujocoBridge

    settable = {p.name for p in MujocoBridge.PARAMETERS if not p.read_only}
    assert settable == {"real_time_factor", "command_timeout", "lockstep_republish", "seed",
                        "auto_reset", "step_ticks", "camera_rate"}


@pytest.mark.ros
def test_lockstep_republish_set_at_run_time_is_applied(procs, probe):
    """`lockstep_republish` set at run time was accepted (successful=True) and ignored: the
    simulation thread had read it once at start, so an unanswered state kept coming at the
    start value's pace. Now the loop reads the new value (and its current wait is measured
    again). `start_paused`, which did nothing at run time, is refused as read-only."""
    # a state comes again only after 60 s (the longest allowed): no controller answers
    joints = start_bridge(procs, probe, task="reach", mode="lockstep", lockstep_republish=60.0)
    result = set_param(probe, "lockstep_republish", 0.1)
    assert result.successful, result.reason
    # With the start value, three copies would take three minutes; with the new one, a few
    # tenths of a second. (They are the unanswered first state again: the same stamp.)
    wait_for(lambda: len(joints) >= 3, 60, "the state published again", procs=procs)
    assert {(m.header.stamp.sec, m.header.stamp.nanosec) for m in joints} == \
        {(joints[0].header.stamp.sec, joints[0].header.stamp.nanosec)}

    result = set_param(probe, "start_paused", True)
    assert not result.successful
    assert "read-only" in result.reason or "read only" in result.reason, result.reason


@pytest.mark.ros
def test_the_bridge_hands_out_only_seeds_its_seed_parameter_accepts(procs, probe):
    """Episode k after a change of `seed` uses seed + k: from seed 2**63 - 1 (the largest the
    parameter accepts) the next reset handed out 2**63, which cannot be given back through
    `seed` to replay that episode. Seeds now count on modulo 2**63 (2**63 - 1, then 0), and
    the seed a reset names is accepted by `seed`, which replays it."""
    top = 2**63 - 1
    start_bridge(procs, probe, task="reach", mode="lockstep", seed=top)
    answers = [probe.call(Trigger, f"/{BRIDGE}/reset").message for _ in range(2)]
    seeds = [int(re.fullmatch(r"episode \d+ seed (\d+)", a).group(1)) for a in answers]
    assert seeds == [0, 1], answers  # episode 0 (at start) took seed 2**63 - 1
    for seed in seeds:
        result = set_param(probe, "seed", seed)
        assert result.successful, (seed, result.reason)
    assert probe.call(Trigger, f"/{BRIDGE}/reset").message.endswith(f"seed {seeds[-1]}")


def start_runner(procs, params):
    """Start episode_runner (its own process) with ``params`` (as -p arguments: a parameter
    file for ``episode_runner`` would not reach the node that reads them)."""
    return procs.start_node(RUNNER, extra_args=[a for k, v in params.items()
                                                for a in ("-p", f"{k}:={v}")])


def run_runner(procs, params, timeout=EXITS_WITHIN):
    """Start episode_runner; its exit code and output once it has ended."""
    proc = start_runner(procs, params)
    proc.wait(timeout)
    return proc.returncode, procs.log(RUNNER, tail=100_000)


def fatal_lines(out):
    assert "Traceback" not in out, out
    return [line for line in out.splitlines() if "fatal" in line]


@pytest.mark.ros
def test_the_runner_checks_its_output_at_start(procs, tmp_path):
    """An `output` in a folder that does not exist was found only when the outcomes were
    written, after every episode had run: a FileNotFoundError traceback, the outcomes lost.
    Now it is checked at start (no bridge is running here: it never gets as far as waiting for
    one): one line naming it, exit 1. The same for a folder given as the file, a path under a
    file, and an `output` from a parameter file (the runner read its values on a node named
    episode_runner_params: a file's `episode_runner:` section was ignored without a word)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x", encoding="utf-8")
    cases = [(tmp_path / "nodir" / "out.json", "does not exist"),
             (tmp_path, "is a folder"),
             (a_file / "out.json", "is not a folder")]
    for out, says in cases:
        code, log = run_runner(procs, {"episodes": 1, "output": str(out)})
        procs.stop(RUNNER)
        fatal = fatal_lines(log)
        assert code == 1, (out, log)
        assert len(fatal) == 1 and str(out) in fatal[0] and says in fatal[0], (out, log)
        assert not re.search(r"^episode \d+", log, re.M), (out, log)  # nothing ran
    assert not (tmp_path / "nodir").exists()

    # the same from a parameter file (its section named after the executable was not read)
    params = tmp_path / "runner.yaml"
    params.write_text(f"episode_runner:\n  ros__parameters:\n    output: {cases[0][0]}\n",
                      encoding="utf-8")
    proc = procs.start_node(RUNNER, extra_args=["--params-file", str(params)])
    proc.wait(EXITS_WITHIN)
    log = procs.log(RUNNER)
    fatal = fatal_lines(log)
    assert proc.returncode == 1 and len(fatal) == 1 and "does not exist" in fatal[0], log


@pytest.mark.ros
@pytest.mark.slow
def test_the_runner_names_a_bridge_that_does_not_answer(procs):
    """A bridge name with no bridge: a TimeoutError traceback after the 30 s wait for it. Now
    one line naming the bridge, exit 1."""
    bridge = f"no_bridge_{os.getpid()}"
    code, log = run_runner(procs, {"episodes": 1, "bridge": bridge})
    fatal = fatal_lines(log)
    assert code == 1, log
    assert len(fatal) == 1 and f"bridge '{bridge}'" in fatal[0] and "is the bridge running" \
        in fatal[0], log


@pytest.mark.ros
def test_the_runner_stopped_by_a_signal_keeps_the_outcomes(procs, probe, tmp_path):
    """SIGINT in the middle of a run ended it with "interrupted" (exit 130), and the outcomes
    of the episodes already run were lost: `output` was written only after the last episode.
    Now the runner stops at its next short wait and writes them; one line says so (exit 130,
    as an interruption at start-up): the file holds each episode it printed."""
    start_bridge(procs, probe, task="reach", mode="lockstep")
    procs.start_node("scripted_expert", params={"task": "reach", "trigger": "state"})
    out = tmp_path / "outcomes.json"
    proc = start_runner(procs, {"episodes": 100_000, "output": out})
    wait_for(lambda: len(re.findall(r"^episode \d+ seed", procs.log(RUNNER), re.M)) >= 2, 120,
             "two episodes run", procs=procs)
    os.kill(proc.pid, signal.SIGINT)
    proc.wait(EXITS_WITHIN)
    log = procs.log(RUNNER, tail=1_000_000)
    assert "Traceback" not in log, log
    printed = [int(s) for s in re.findall(r"^episode \d+ seed (\d+)", log, re.M)]
    said = [line for line in log.splitlines() if "stopped by a signal" in line]
    assert proc.returncode == 130, log
    assert len(said) == 1 and str(out) in said[0] and "of 100000 episodes" in said[0], log
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["episodes"] == len(printed) >= 2
    assert [e["seed"] for e in saved["per_episode"]] == printed
