"""Chunk execution that does not block the tick: the next chunk is computed on a worker thread
while the current one executes (``PolicyController`` with ``prefetch``), and chunk_mode "auto".

The policy here is a real ``Policy`` module run by the eager backend, whose every action tells
where it came from: action i of the chunk computed from an observation whose first joint
position is s is ``base + 100 s + i`` (all action values alike). A gate makes its inference as
slow as a test needs: it waits until the test opens it."""
import threading
import time

import numpy as np
import pytest
import torch

from robot_imitation.deploy.runtime import (ActionFilter, PolicyController, make_controller,
                                            policy_from_module)
from robot_imitation.learning.trainer import TrainConfig
from robot_imitation.policies import PolicyConfig, make_policy
from robot_imitation.policies.base import Policy
from robot_imitation.policies.config import input_layout
from robot_imitation.spec import Spec

WORKER = "chunk-inference_0"


class Probe(Policy):
    """act: ``base + 100 s + i`` (s: the first joint position seen, i: the index in the
    chunk); s = -1 raises, s = -2 gives NaN. Logs (event, s, thread) of every call."""

    traceable = False
    gate = threading.Event()
    delay = 0.0   # seconds of every inference
    log: list = []

    def __init__(self, cfg, base=1000.0):
        super().__init__(cfg)
        self.base = base

    def act(self, obs):
        seen = obs["joint_pos"][:, :1].double()
        s = float(seen[0, 0])
        Probe.log.append(("run", s, threading.current_thread().name, torch.get_num_threads()))
        if not Probe.gate.wait(10):
            raise TimeoutError("the test never opened the gate")
        time.sleep(Probe.delay)
        if s == -1:
            raise RuntimeError("probe failure")
        steps = torch.arange(self.cfg.chunk, dtype=torch.float64)[None, :, None]
        out = (self.base + 100 * seen[:, :, None] + steps).expand(
            -1, self.cfg.chunk, self.cfg.action_dim)
        return out * float("nan") if s == -2 else out

    def reset(self):
        Probe.log.append(("reset", None, threading.current_thread().name, None))


SPEC = Spec.load("reach")


def probe(chunk=8, base=1000.0):
    Probe.gate.set()
    loaded = policy_from_module(Probe(PolicyConfig(**input_layout(SPEC, chunk)), base), SPEC,
                                {}, "eager")
    Probe.log.clear()   # loading ran it
    return loaded


def obs(s: float) -> dict:
    out = {f.key: np.zeros(f.shape[0]) for f in SPEC.low_dim_observations}
    out["joint_pos"][0] = s
    return out


def value(s, i, base=1000.0):
    return np.full(SPEC.action_dim, base + 100 * s + i)


def controller(loaded, **kw) -> PolicyController:
    f = ActionFilter(SPEC.action_dim, lower=kw.pop("lower", None))
    return PolicyController(SPEC, loaded, f, **{"chunk_mode": "chunk", **kw})


def runs(events=("run", "reset")):
    return [(e, s) for e, s, _, _ in Probe.log if e in events]


def wait_until(predicate, what):
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_prefetched_chunks_execute_from_the_index_of_their_tick():
    """prefetch 2, 6 of 8 actions per chunk, late_chunk wait: the first chunk executes its
    actions 0..5; every next one is computed when 2 actions are left, from that tick's
    observation, and executes its actions 2..5; a chunk late by a tick is waited for."""
    ctl = controller(probe(), chunk_execute=6, prefetch=2, late_chunk="wait")
    assert ctl.settings == {"chunk_mode": "chunk", "chunk_execute": 6, "prefetch": 2,
                            "auto": False, "late_chunk": "wait"}
    threads = torch.get_num_threads()
    got, took = [], {}
    try:
        torch.set_num_threads(1)
        for t in range(22):
            if t == 12:
                Probe.gate.clear()    # the chunk computed from tick 12 is late
            if t == 14:
                threading.Timer(0.3, Probe.gate.set).start()
            if t not in (13, 14):
                assert ctl.wait_inflight(10)
            start = time.perf_counter()
            r = ctl.tick(obs(t))
            took[t] = time.perf_counter() - start
            assert r.reason == "ok", (t, r)
            got.append(r.action)
            if t == 16:
                torch.set_num_threads(2)  # the worker follows the control thread's setting
    finally:
        torch.set_num_threads(threads)
    for t, action in enumerate(got):
        s = 0 if t < 6 else 4 * ((t - 6) // 4 + 1)   # the tick whose observation it answers
        np.testing.assert_array_equal(action, value(s, t - s), err_msg=f"tick {t}")
    assert runs() == [("run", s) for s in (0, 4, 8, 12, 16, 20)]
    assert {name for _, _, name, _ in Probe.log} == {WORKER}
    assert [n for _, _, _, n in Probe.log] == [1, 1, 1, 1, 1, 2]  # 16's before the change
    c = ctl.counters
    assert (c.chunks, c.inferences, c.waited_ticks, c.no_action_ticks, c.commands) == \
        (5, 5, 1, 0, 22)
    assert took[14] >= 0.2   # it waited for the gate
    timing = ctl.timing()
    assert ctl.inference_times.n == 5 and timing["max_ms"] >= 300 > timing["p50_ms"]
    ctl.close()


def test_waiting_makes_the_commands_independent_of_the_inference_time():
    """late_chunk wait in closed loop (each observation follows from the last command): the
    same commands whether inference is quick or slower than a tick, as lockstep needs."""
    def episode(delay):
        Probe.delay = delay
        ctl = controller(probe(), chunk_execute=5, prefetch=2)
        s, out = 0.0, []
        for _ in range(30):
            out.append(ctl.tick(obs(s)).action[0])
            s = out[-1] % 97
        ctl.close()
        return out, ctl.counters.waited_ticks

    try:
        quick, _ = episode(0.0)
        slow, waited = episode(0.005)
    finally:
        Probe.delay = 0.0
    assert slow == quick and waited > 0
    # the chunk computed at tick 3 (from 1002 % 97 = 32) takes over at tick 5, from index 2
    assert quick[:6] == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0, 1000 + 100 * 32 + 2]


def test_late_chunks_hold_the_safe_command_and_skip_the_ticks_gone_by():
    """late_chunk hold: a tick never waits for inference; while no chunk's action is there the
    safe command goes out through the filter (a lower limit of 1 here); a chunk that comes late
    executes from the index of the tick it is used at, one later than its chunk is dropped."""
    ctl = controller(probe(), prefetch=1, late_chunk="hold", safe_command="zero", lower=1.0)
    ones = np.ones(SPEC.action_dim)
    got, took = {}, {}

    def tick(t, safe="zero"):
        ctl.safe_command = safe
        start = time.perf_counter()
        got[t] = ctl.tick(obs(t))
        took[t] = time.perf_counter() - start
        return got[t]

    Probe.gate.clear()
    for t in range(3):   # the first chunk is being computed: zeros, limited to 1
        r = tick(t)
        assert r.reason == "late" and np.array_equal(r.action, ones), (t, r)
    Probe.gate.set()
    assert ctl.wait_inflight(10)
    for t in range(3, 8):   # computed from tick 0, used from tick 3: its actions 3..7
        assert tick(t).reason == "ok"
        np.testing.assert_array_equal(got[t].action, value(0, t), err_msg=f"tick {t}")
    assert ctl.wait_inflight(10)   # computed at tick 7 (one action left): on time
    for t in range(8, 14):
        np.testing.assert_array_equal(tick(t).action, value(7, t - 7), err_msg=f"tick {t}")
    Probe.gate.clear()
    np.testing.assert_array_equal(tick(14).action, value(7, 7))  # the next one from tick 14
    r = tick(15, safe="hold")                                      # is late: the last command
    assert r.reason == "late" and np.array_equal(r.action, value(7, 7))
    r = tick(16)
    assert r.reason == "late" and np.array_equal(r.action, ones)
    Probe.gate.set()
    assert ctl.wait_inflight(10)
    for t in range(17, 21):   # from index 3 on: ticks 14, 15, 16 are gone
        np.testing.assert_array_equal(tick(t).action, value(14, t - 14), err_msg=f"tick {t}")
    Probe.gate.clear()   # the chunk from tick 21 comes after all 8 of its ticks have passed
    np.testing.assert_array_equal(tick(21).action, value(14, 7))
    for t in range(22, 30):
        assert tick(t).reason == "late"
    Probe.gate.set()
    assert ctl.wait_inflight(10)
    assert tick(30).reason == "late"   # dropped; a new one from tick 30
    assert ctl.wait_inflight(10)
    np.testing.assert_array_equal(tick(31).action, value(30, 1))
    assert max(took[t] for t in took) < 2.0   # never the 10 s the gate would hold a waiting tick
    c = ctl.counters
    assert (c.no_action_ticks, c.waited_ticks, c.chunks, c.discarded_chunks) == (14, 0, 4, 1)
    assert runs() == [("run", s) for s in (0, 7, 14, 21, 30)]
    ctl.close()


def test_a_new_episode_a_swap_and_bad_inputs_drop_the_chunk_in_flight():
    """A chunk computed from a previous episode (or for the policy swapped out, or before a
    stale or non-finite input) is never executed; the policy's reset happens on the worker
    after the inference running, before the next one."""
    ctl = controller(probe(), chunk_execute=4, prefetch=1, max_age=0.1)
    for t in range(3):
        np.testing.assert_array_equal(ctl.tick(obs(t)).action, value(0, t))
    Probe.gate.clear()
    np.testing.assert_array_equal(ctl.tick(obs(3)).action, value(0, 3))  # computes from 3
    wait_until(lambda: runs()[-1:] == [("run", 3)], "the inference from tick 3")
    ctl.reset()   # a new episode
    Probe.gate.set()
    np.testing.assert_array_equal(ctl.tick(obs(50)).action, value(50, 0))
    assert runs() == [("run", 0), ("run", 3), ("reset", None), ("run", 50)]
    assert {name for _, _, name, _ in Probe.log} == {WORKER}
    assert ctl.counters.discarded_chunks == 1
    # a swap: the new policy's chunk from the tick it takes over at
    for t in (51, 52):
        np.testing.assert_array_equal(ctl.tick(obs(t)).action, value(50, t - 50))
    Probe.gate.clear()
    np.testing.assert_array_equal(ctl.tick(obs(53)).action, value(50, 3))
    wait_until(lambda: runs()[-1:] == [("run", 53)], "the inference from tick 53")
    ctl.offer(probe(base=9000.0))   # (loading it opens the gate: the dropped one ends)
    np.testing.assert_array_equal(ctl.tick(obs(54)).action, value(54, 0, base=9000.0))
    assert ctl.counters.swaps == 1 and ctl.counters.discarded_chunks == 2
    # a stale state and a non-finite one: the safe command, then nothing
    for t in (55, 56):
        np.testing.assert_array_equal(ctl.tick(obs(t)).action, value(54, t - 54, 9000.0))
    Probe.gate.clear()
    np.testing.assert_array_equal(ctl.tick(obs(57)).action, value(54, 3, 9000.0))
    r = ctl.tick(obs(58), age=1.0)
    assert r.reason == "stale" and np.array_equal(r.action, value(54, 3, 9000.0))
    Probe.gate.set()
    np.testing.assert_array_equal(ctl.tick(obs(59)).action, value(59, 0, 9000.0))
    for t in (60, 61):
        ctl.tick(obs(t))
    Probe.gate.clear()
    ctl.tick(obs(62))   # computes from 62
    assert ctl.tick(obs(float("nan"))).reason == "nonfinite_input"
    Probe.gate.set()
    np.testing.assert_array_equal(ctl.tick(obs(64)).action, value(64, 0, 9000.0))
    assert ctl.counters.discarded_chunks == 4 and ctl.counters.waited_ticks == 0
    ctl.close()


def test_a_chunk_dropped_before_it_started_is_never_computed():
    """hold: while the worker is busy, chunks queued behind it and dropped are skipped; the
    policy resets they carry are not."""
    ctl = controller(probe(), prefetch=1, late_chunk="hold")
    Probe.gate.clear()
    assert ctl.tick(obs(0)).reason == "late"
    wait_until(lambda: runs() == [("run", 0)], "the inference from tick 0")
    ctl.reset()
    assert ctl.tick(obs(1)).reason == "late"   # queued behind the one from tick 0
    ctl.reset()
    assert ctl.tick(obs(2)).reason == "late"
    Probe.gate.set()
    assert ctl.wait_inflight(10)
    np.testing.assert_array_equal(ctl.tick(obs(3)).action, value(2, 1))
    assert runs() == [("run", 0), ("reset", None), ("reset", None), ("run", 2)]
    assert ctl.counters.discarded_chunks == 2 and ctl.counters.no_action_ticks == 3
    ctl.close()


def test_an_exception_or_nan_in_the_worker_is_reported_and_nothing_runs_from_it():
    ctl = controller(probe(chunk=4), prefetch=1)
    for t in range(3):
        np.testing.assert_array_equal(ctl.tick(obs(t)).action, value(0, t))
    np.testing.assert_array_equal(ctl.tick(obs(-1)).action, value(0, 3))  # computes from -1
    r = ctl.tick(obs(4))
    assert r.reason == "inference_error" and r.error == "RuntimeError: probe failure"
    np.testing.assert_array_equal(r.action, value(0, 3))   # the safe command: hold
    assert ctl.counters.inference_errors == 1
    np.testing.assert_array_equal(ctl.tick(obs(5)).action, value(5, 0))  # the worker lives on
    for t in (6, 7):
        ctl.tick(obs(t))
    np.testing.assert_array_equal(ctl.tick(obs(-2)).action, value(5, 3))  # computes from -2
    r = ctl.tick(obs(9))
    assert r.reason == "nonfinite_output" and r.action is None
    assert ctl.counters.nonfinite_outputs == 1
    np.testing.assert_array_equal(ctl.tick(obs(10)).action, value(10, 0))
    assert (ctl.counters.chunks, ctl.counters.commands) == (3, 10)
    ctl.close()


def test_prefetch_must_leave_actions_to_execute():
    with pytest.raises(ValueError, match=r"^prefetch 4 leaves no action of a chunk to execute: "
                       r"it must be below chunk_execute \(4 of a chunk of 8\)$"):
        controller(probe(), chunk_execute=4, prefetch=4)
    with pytest.raises(ValueError, match=r"chunk_execute \(8 of a chunk of 8\)"):
        controller(probe(), prefetch=8)
    with pytest.raises(ValueError, match="late_chunk must be one of .* not 'later'"):
        controller(probe(), prefetch=1, late_chunk="later")
    ctl = controller(probe(), prefetch=3)
    with pytest.raises(ValueError, match=r"prefetch 3 .* \(2 of a chunk of 2\)"):
        ctl.offer(probe(chunk=2))   # refused: the running policy stays
    assert ctl.tick(obs(0)).reason == "ok" and ctl.counters.swaps == 0
    ctl.close()


@pytest.mark.parametrize("family, chunk, expected", [
    ("act", 8, ("chunk", 2, 0)), ("act", 1, ("chunk", 1, 0)), ("diffusion", 8, ("chunk", 4, 1)),
    ("diffusion", 2, ("chunk", 1, 0)), ("mlp", 8, ("first", 8, 0))])
def test_auto_is_the_policy_familys_own_chunk_execution(family, chunk, expected):
    loaded = policy_from_module(make_policy(SPEC, TrainConfig(policy=family, chunk=chunk)),
                                SPEC, {})
    ctl, _ = make_controller(loaded, SPEC, allow_unlimited=True)
    assert ctl.settings == {"chunk_mode": expected[0], "chunk_execute": expected[1],
                            "prefetch": expected[2], "auto": True, "late_chunk": "wait"}
    if (family, chunk) == ("diffusion", 8):
        assert ctl.describe() == ("chunk_mode chunk (auto: diffusion's default), chunk_execute "
                                  "4 of 8, prefetch 1, late_chunk wait")
        for t in range(5):   # the second chunk: computed at tick 3, used from tick 4
            assert ctl.tick(obs(t)).reason == "ok"
        assert (ctl.counters.chunks, ctl.counters.inferences) == (2, 2)
    if (family, chunk) == ("act", 8):
        for t in range(5):   # chunks at ticks 0, 2 and 4, each from that tick's observation
            assert ctl.tick(obs(t)).reason == "ok"
        assert (ctl.counters.chunks, ctl.counters.inferences) == (3, 3)
    ctl.close()
    # a module of a class no registry knows: the base's default
    assert controller(probe(), chunk_mode="auto").settings["chunk_mode"] == "first"


# ====================================================================== the policy node
def diffusion_checkpoint(path):
    """An untrained diffusion checkpoint (chunks of 8; its default execution: half of each
    chunk, the next computed a tick ahead) carrying the panda's limits."""
    from robot_imitation.deploy.limits import robot_limits
    from robot_imitation.learning.checkpoint import save_checkpoint

    torch.manual_seed(0)
    policy = make_policy(SPEC, TrainConfig(policy="diffusion", chunk=8, task="reach"))
    return save_checkpoint(path, policy, SPEC, extra={
        "action_limits": robot_limits("panda", SPEC).to_dict(), "task": "reach"})


@pytest.mark.ros
def test_the_policy_node_runs_chunks_ahead_and_reports_them(procs, probe, tmp_path):
    """Started with nothing but a diffusion checkpoint: its own chunk execution (half the chunk,
    the next one a tick ahead, waited for), in the start log and in /diagnostics with the
    chunk counters and inference times. A prefetch the chunk cannot run is one line."""
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import Float64MultiArray

    from conftest import wait_for
    from test_policy_node import ARM, KEEP, NODE, StateFeed, newest, start_policy, timed

    ckpt = str(diffusion_checkpoint(tmp_path / "diffusion"))
    procs.start_node(NODE, name="refused", params={"checkpoint": ckpt, "chunk_prefetch": 8})
    assert procs.procs["refused"].wait(timeout=60) != 0
    log = procs.log("refused")
    assert "Traceback" not in log and ("prefetch 8 leaves no action of a chunk to execute: it "
                                       "must be below chunk_execute (4 of a chunk of 8)") in log
    procs.stop("refused")

    feed = StateFeed(probe)
    arm = timed(probe, Float64MultiArray, ARM, KEEP, "arm")
    diags = timed(probe, DiagnosticArray, "/diagnostics", 10, "diag")
    # (no stale check: the timer gives no safe commands once the states stop)
    # the backend named: choosing one by measurement (tested apart) takes 20 s of a U-Net
    start_policy(procs, probe, checkpoint=ckpt, diagnostics_period=0.2, max_age_periods=0.0,
                 backend="torchscript")
    wait_for(feed.matched, 120, "the node's subscriptions", procs=procs)
    try:
        feed.stream()
        wait_for(lambda: len(arm) >= 20, 30, "commands", procs=procs)
    finally:
        feed.stop()
    assert ("chunk 8; chunk_mode chunk (auto: diffusion's default), chunk_execute 4 of 8, "
            "prefetch 1, late_chunk wait") in procs.log(NODE)
    after = time.monotonic() + 0.3
    v = wait_for(lambda: newest(diags, after), 5, "diagnostics")[0]
    assert (v["chunk_mode"], v["chunk_execute"], v["chunk_prefetch"], v["late_chunk"]) == \
        ("chunk (auto)", "4", "1", "wait")
    # the feed's 50 Hz states against 20: a chunk action a control period (states of a period
    # begun get its action again, same_period_ticks)
    n = int(v["commands"]) - int(v["same_period_ticks"])
    # the first chunk executes its actions 0..3, every next one 1..3
    assert n >= 6 and int(v["chunks"]) == 1 + -(-(n - 4) // 3) == int(v["inferences"]), v
    assert (v["no_action_ticks"], v["inference_errors"], v["discarded_chunks"]) == \
        ("0", "0", "0"), v
    assert int(v["waited_ticks"]) < int(v["chunks"])
    assert 0 < float(v["chunk_inference_p50_ms"]) <= float(v["chunk_inference_max_ms"])


@pytest.mark.ros
@pytest.mark.slow
def test_chunks_computed_ahead_are_the_same_through_ros_in_lockstep(tmp_path):
    """The node's defaults (auto: prefetch 1, late_chunk wait) keep lockstep exact: a diffusion
    policy's episodes through ROS (bridge in lockstep, policy node) equal its episodes in the
    gymnasium world, command for command."""
    from robot_imitation.dagger import evaluate_ros
    from robot_imitation.deploy.runtime import load_policy
    from robot_imitation.learning.evaluation import evaluate_loaded

    ckpt = diffusion_checkpoint(tmp_path / "diffusion")
    gym = evaluate_loaded(load_policy(ckpt, None, "eager", threads=1), "reach", 2, 5,
                          keep_commands=True)
    assert gym["policy"]["chunking"] == ("chunk_mode chunk (auto: diffusion's default), "
                                         "chunk_execute 4 of 8, prefetch 1, late_chunk wait")
    # each episode: its first chunk's actions 0..3, every next one's 1..3
    assert gym["policy"]["counters"]["chunks"] == sum(
        1 + -(-(len(r.commands) - 4) // 3) for r in gym["results"])
    ros = evaluate_ros(str(ckpt), "reach", 2, log_dir=tmp_path / "logs", seed=5,
                       keep_commands=True)
    for g, r in zip(gym["results"], ros["results"], strict=True):
        assert r.commands.shape == g.commands.shape, g.seed
        np.testing.assert_array_equal(r.commands, g.commands, err_msg=f"seed {g.seed}")
