"""Chunked policies answering states faster than the control rate (trigger state: each tick
says its state's time). A chunk's action i is for the control period i after its observation's,
so a driver at five times the control rate must run the same chunk actions, and compute the same
chunks, as one at the control rate: the periods come from the states' times, not their count.

The policy is a real ``Policy`` run by the eager backend whose every action tells where it came
from: action i of the chunk computed from an observation whose first joint position is s is
``1000 + 100 s + i`` (all action values alike)."""
import numpy as np
import pytest
import torch

from robot_imitation.deploy.runtime import ActionFilter, PolicyController, policy_from_module
from robot_imitation.policies import PolicyConfig
from robot_imitation.policies.base import Policy
from robot_imitation.policies.config import input_layout
from robot_imitation.spec import Spec

SPEC = Spec.load("reach")
PERIOD = 1.0 / SPEC.control_rate
CHUNK = 8


class Tell(Policy):
    """act: ``1000 + 100 s + i`` (s: the first joint position seen, i: the index in the chunk)."""

    traceable = False

    def act(self, obs):
        seen = obs["joint_pos"][:, :1].double()
        steps = torch.arange(self.cfg.chunk, dtype=torch.float64)[None, :, None]
        return (1000.0 + 100 * seen[:, :, None] + steps).expand(
            -1, self.cfg.chunk, self.cfg.action_dim)


def value(s, i):
    return 1000.0 + 100 * s + i


def obs(s: float) -> dict:
    out = {f.key: np.zeros(f.shape[0]) for f in SPEC.low_dim_observations}
    out["joint_pos"][0] = s
    return out


def controller(max_delta=None, **kw) -> PolicyController:
    loaded = policy_from_module(Tell(PolicyConfig(**input_layout(SPEC, CHUNK))), SPEC, {},
                                "eager")
    return PolicyController(SPEC, loaded, ActionFilter(SPEC.action_dim, max_delta=max_delta),
                            **kw)


def run(ctl, periods: int, per_period: int, start: float = 100.0) -> np.ndarray:
    """``per_period`` states a control period, stamped evenly; the observation of period k
    (s = k) in all of its states. The first action value of each command, (periods,
    per_period)."""
    out = np.zeros((periods, per_period))
    for k in range(periods):
        for j in range(per_period):
            result = ctl.tick(obs(k), age=0.0, when=start + (k + j / per_period) * PERIOD)
            assert result.reason == "ok", result
            out[k, j] = result.action[0]
    ctl.close()
    return out


@pytest.mark.parametrize("settings", [
    {"chunk_mode": "chunk", "chunk_execute": 2},
    {"chunk_mode": "chunk"},
    {"chunk_mode": "chunk", "chunk_execute": 4, "prefetch": 1},
    {"chunk_mode": "ensemble"},
], ids=["chunk-2", "chunk-whole", "prefetch", "ensemble"])
def test_states_at_five_times_the_control_rate_run_the_chunks_of_the_control_rate(settings):
    """The same chunk action for every state of a period, the same chunks computed from the
    same observations: the commands of states at the control rate, each five times."""
    slow_ctl, fast_ctl = controller(**settings), controller(**settings)
    slow = run(slow_ctl, 24, 1)[:, 0]
    fast = run(fast_ctl, 24, 5)
    np.testing.assert_array_equal(fast, np.repeat(slow[:, None], 5, axis=1))
    assert fast_ctl.counters.inferences == slow_ctl.counters.inferences
    assert fast_ctl.counters.chunks == slow_ctl.counters.chunks
    assert fast_ctl.counters.same_period_ticks == 24 * 4
    assert slow_ctl.counters.same_period_ticks == 0
    # and they are the chunk actions of their periods: action i of the chunk of period k - i
    if settings["chunk_mode"] == "chunk" and "prefetch" not in settings:
        n = settings.get("chunk_execute", CHUNK)
        np.testing.assert_array_equal(slow, [value(k - k % n, k % n) for k in range(24)])


def test_the_ensemble_averages_the_predictions_made_for_the_same_period():
    """Temporal ensembling at 5x the control rate: period p's action averages chunk_q[p - q]
    over the chunks of the periods q (one a period, the oldest weighted most), not the chunks of
    the last states (predictions for periods up to 7 ahead)."""
    decay = 0.3
    fast = run(controller(chunk_mode="ensemble", ensemble_decay=decay), 12, 5)
    for p in range(12):
        preds = [value(q, p - q) for q in range(max(0, p - CHUNK + 1), p + 1)]
        w = np.exp(-decay * np.arange(len(preds)))
        np.testing.assert_allclose(fast[p], np.dot(w / w.sum(), preds), rtol=0, atol=1e-9)


def test_the_periods_come_from_the_states_times_whatever_the_drivers_rate():
    """States at 30 Hz against 20: 20 periods a second begin (on the first state at or after
    each period's start), each running its chunk action; a state further apart than a period
    passes the actions of the periods gone by; a driver at the control rate whose stamps are a
    few percent off the period runs one action a state, as states exactly a period apart."""
    ctl = controller(chunk_mode="chunk")
    got = []
    for n in range(60):                      # 2 s at 30 Hz
        t = n / 30.0
        got.append(ctl.tick(obs(0), age=0.0, when=t).action[0])
    period = [int(n / 30.0 * SPEC.control_rate + 1e-9) for n in range(60)]
    np.testing.assert_array_equal(got, [value(0, p % 8) for p in period])
    assert ctl.counters.inferences == 5      # 40 periods, chunks of 8
    # a driver at half the control rate: every other action of a chunk
    ctl = controller(chunk_mode="chunk")
    got = [ctl.tick(obs(0), age=0.0, when=n * 2 * PERIOD).action[0] for n in range(8)]
    np.testing.assert_array_equal(got, [value(0, i) for i in (0, 2, 4, 6)] * 2)
    # a driver at the control rate, with jitter
    rng = np.random.default_rng(0)
    times = np.arange(40) * PERIOD + rng.uniform(-0.04, 0.04, 40) * PERIOD
    exact, jitter = controller(chunk_mode="chunk"), controller(chunk_mode="chunk")
    a = [exact.tick(obs(k), age=0.0, when=k * PERIOD).action for k in range(40)]
    b = [jitter.tick(obs(k), age=0.0, when=t).action for k, t in enumerate(times)]
    np.testing.assert_array_equal(a, b)
