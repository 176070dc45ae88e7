"""The policy node's core without ROS: inference backends, chunk execution, safety filter."""
import copy
import io
import warnings

import numpy as np
import pytest
import torch

from robot_imitation.deploy.backends import (KINDS, BackendError, EagerBackend, fill_example,
                                             make_backend, select_backend)
from robot_imitation.deploy.runtime import (ActionFilter, ChunkScheduler, LoadedPolicy,
                                            PolicyController)
from robot_imitation.learning.policies import Policy, PolicyConfig
from robot_imitation.spec import Spec


def random_policy(head="mse", chunk=1, images=False, seed=0, **more) -> Policy:
    torch.manual_seed(seed)
    cfg = PolicyConfig(**more, low_dim_keys=["joint_pos", "ee_pose"], low_dim_sizes=[9, 7],
                       image_keys=["cam"] if images else [],
                       image_shapes=[[48, 64, 3]] if images else [], action_dim=8, chunk=chunk,
                       head=head, num_classes=3 if head == "categorical" else 0,
                       relative=[] if head == "categorical" else [[0, 7, "joint_pos"]],
                       image_channels=[16, 16], keypoints=8,
                       derived=[{"key": "ee_from_joints", "op": "difference",
                                 "inputs": ["ee_pose", "joint_pos"], "size": 3}])
    policy = Policy(cfg)
    for m in policy.net:
        if isinstance(m, torch.nn.Linear):  # larger weights than the default: outputs that
            torch.nn.init.normal_(m.weight, std=0.3)  # differ visibly between inputs
    policy.obs_norm.set(torch.randn(cfg.input_dim), torch.rand(cfg.input_dim) + 0.5)
    policy.act_norm.set(torch.randn(cfg.action_dim), torch.rand(cfg.action_dim) + 0.5)
    return policy.eval()


def act64(policy: Policy, low: torch.Tensor) -> np.ndarray:
    """``act`` in float64 (the network's output rounded to float32 once, as ``act`` does)."""
    exact = copy.deepcopy(policy).double()
    return exact.act({"joint_pos": low[:, :9].double(), "ee_pose": low[:, 9:].double()}
                     )[0].double().numpy()


@pytest.mark.parametrize("head", ["mse", "gaussian", "gmm", "categorical"])
def test_every_backend_computes_policy_act(head):
    """Each backend's output equals Policy.act on the same observation (several inputs),
    derived features included: to 1e-5 where the backend runs act's own arithmetic; where it
    runs the policy's folded ``inference_module`` (the compiled backends of an mse or gaussian
    mlp), to float32 rounding of act computed in float64 (2e-6 of the outputs' scale), the
    accuracy of act itself in float32."""
    policy = random_policy(head, chunk=3)
    folded = policy.inference_module() is not None
    assert folded == (head in ("mse", "gaussian"))
    ran = 0
    for kind in KINDS:
        try:
            backend = make_backend(policy, kind)
        except BackendError as exc:
            assert kind == "numpy" and head == "categorical", exc
            continue
        for seed in range(3):
            fill_example(backend, policy, seed)
            low = torch.from_numpy(backend.low.copy())
            obs = {"joint_pos": low[:, :9], "ee_pose": low[:, 9:]}
            expected = policy.act(obs)[0].double().numpy()
            if folded and kind in ("onnxruntime", "torchscript"):
                exact = act64(policy, low)
                np.testing.assert_allclose(backend.run(), exact, rtol=0,
                                           atol=2e-6 * np.abs(exact).max(),
                                           err_msg=f"{kind} {head}")
                assert np.abs(expected - exact).max() < 2e-6 * np.abs(exact).max()
            else:
                np.testing.assert_allclose(backend.run(), expected, rtol=1e-5, atol=1e-5,
                                           err_msg=f"{kind} {head}")
        ran += 1
    assert ran == (3 if head == "categorical" else 4)


def onnx_operators(onnx, module, inputs: tuple) -> list:
    """The operators (constants aside) of ``module`` exported to ONNX as the backends export."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, buf, dynamo=False, opset_version=17)
    return [n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node
            if n.op_type != "Constant"]


@pytest.mark.parametrize("hidden", [[64, 64], [32]])
def test_the_low_dim_mlp_exports_with_its_constants_folded(hidden):
    """The compiled backends export the mlp's ``inference_module``: the slices, derived
    features, normalization and action scaling folded into its linear layers, a graph of a
    few operators (``act`` exported as it is: over a hundred, most of them constants and
    slicing, which ONNX Runtime dispatches one by one). Its output is act's to float32
    rounding, also for an input that had no spread in training (scale clamped to 1e-6: the
    shift is subtracted before the division is folded, nothing cancels)."""
    onnx = pytest.importorskip("onnx")
    policy = random_policy("mse", chunk=2, hidden=hidden)
    shift = policy.obs_norm.shift.clone()
    scale = policy.obs_norm.scale.clone()
    scale[3] = 0.0  # a joint that never moved in training: clamped to 1e-6
    policy.obs_norm.set(shift, scale)
    module = policy.inference_module()
    for seed in range(3):
        backend = make_backend(policy, "eager")
        fill_example(backend, policy, seed)
        low = torch.from_numpy(backend.low.copy())
        low[0, 3] = shift[3]  # where it always was
        exact = act64(policy, low)
        with torch.no_grad():
            got = module(low).double().numpy()
        np.testing.assert_allclose(got, exact, rtol=0, atol=2e-6 * np.abs(exact).max())
    ops = onnx_operators(onnx, module, (low,))
    # select, first layer, per hidden layer a GELU (5 operators before fusing) and a layer;
    # the base of the relative actions, its addition, the reshape to (chunk, action_dim)
    assert len(ops) <= 2 + 6 * len(hidden) + 3, ops


def test_a_camera_mlp_exports_its_split_head_folded():
    """With cameras the split head is folded (the camera encoders run apart as they are): its
    inputs are the flat low-dimensional input and each camera's features, and the compiled
    backends that run it agree with act on whole observations."""
    onnx = pytest.importorskip("onnx")
    policy = random_policy(images=True)
    reference = EagerBackend(policy, split=False)
    fill_example(reference, policy, 2)
    expected = reference.run()
    for kind in ("onnxruntime", "torchscript"):
        backend = make_backend(policy, kind)
        assert backend.split
        fill_example(backend, policy, 2)
        np.testing.assert_allclose(backend.run(), expected, rtol=1e-4, atol=1e-4, err_msg=kind)
    module = policy.inference_module()
    inputs = EagerBackend(policy).inputs()  # low, then the camera's features
    ops = onnx_operators(onnx, module, tuple(inputs))
    assert len(ops) <= 2 + 1 + 6 * len(policy.cfg.hidden) + 3, ops  # + the concatenation


def test_image_policy_backends_agree_and_numpy_declines():
    policy = random_policy(images=True)
    reference = EagerBackend(policy)
    fill_example(reference, policy, 1)
    expected = reference.run()
    for kind in ("onnxruntime", "torchscript"):
        backend = make_backend(policy, kind)
        fill_example(backend, policy, 1)
        np.testing.assert_allclose(backend.run(), expected, rtol=1e-4, atol=1e-4, err_msg=kind)
    with pytest.raises(BackendError, match="MLP policies only"):
        make_backend(policy, "numpy")


def test_auto_selection_measures_every_candidate_and_keeps_the_fastest():
    policy = random_policy()
    backend, rows = select_backend(policy, "auto", calls=50)
    timed = {r["backend"]: r["median_us"] for r in rows if "median_us" in r}
    assert set(timed) == set(KINDS)
    assert backend.kind == min(timed, key=timed.get)


def test_chunk_scheduler_modes():
    chunks = [np.arange(4 * 2, dtype=float).reshape(4, 2) + 100 * k for k in range(6)]
    first = ChunkScheduler(4, "first")
    out = []
    for c in chunks:
        assert first.needs_prediction()
        first.add(c)
        out.append(first.next())
    np.testing.assert_array_equal(out, [c[0] for c in chunks])

    whole = ChunkScheduler(4, "chunk", execute=3)
    out, predicted = [], 0
    for _ in range(6):
        if whole.needs_prediction():
            whole.add(chunks[predicted])
            predicted += 1
        out.append(whole.next())
    assert predicted == 2
    np.testing.assert_array_equal(out, [*chunks[0][:3], *chunks[1][:3]])

    ens = ChunkScheduler(4, "ensemble", decay=0.5)
    for t, c in enumerate(chunks[:3]):
        ens.add(c)
        action = ens.next()
    # tick 2: chunk 0's third, chunk 1's second and chunk 2's first prediction, oldest weighted
    # most: weights exp(-0.5 * [0, 1, 2])
    w = np.exp(-0.5 * np.arange(3))
    expected = (w[0] * chunks[0][2] + w[1] * chunks[1][1] + w[2] * chunks[2][0]) / w.sum()
    np.testing.assert_allclose(action, expected)


def test_action_filter_limits_and_max_change():
    f = ActionFilter(3, lower=[-1, -1, 0], upper=[1, 1, 1], max_delta=[0.1, 0, 0.5])
    out, n = f(np.array([5.0, -5.0, 0.5]), None)
    np.testing.assert_array_equal(out, [1, -1, 0.5])
    assert n == 2
    out, n = f(np.array([0.5, 0.9, 0.9]), np.array([0.0, 0.0, 0.0]))
    np.testing.assert_allclose(out, [0.1, 0.9, 0.5])  # max_delta 0: unlimited
    assert n == 2
    with pytest.raises(ValueError, match="1 or 3 values"):
        ActionFilter(3, lower=[0, 0])
    # only a maximum change: the values themselves unbounded
    f = ActionFilter(3, max_delta=[0.1, 0, 0.5])
    out, n = f(np.array([5.0, -5.0, 0.2]), np.array([0.0, 0.0, 0.0]))
    np.testing.assert_allclose(out, [0.1, -5.0, 0.2])
    assert n == 1
    # nothing bounds it: the same values, in an array of its own (the caller keeps it as the
    # last command while the action's buffer is reused)
    f = ActionFilter(3)
    action = np.array([5.0, -5.0, 0.2])
    out, n = f(action, np.zeros(3))
    np.testing.assert_array_equal(out, action)
    assert n == 0 and out is not action and not np.shares_memory(out, action)



def test_a_reference_outside_the_bounds_is_a_jump_said_never_a_command_outside():
    """From a previous command (or a measured joint) outside the bounds the filter cannot keep
    both promises: the bounds hold (a command is never outside them: wild states, joints at
    50 rad, never give a wild command), and the change beyond max_delta is counted (``jumps``)
    and said by the node (it went by with "command clamped" only: a robot outside limits
    narrowed below it moved 0.517 rad in a tick against max_delta 0.1305)."""
    f = ActionFilter(2, lower=[-1.0, -1.0], upper=[0.3, 1.0], max_delta=0.1305)
    out, n = f(np.array([0.9, 0.2]), np.array([0.8, 0.0]))
    np.testing.assert_allclose(out, [0.3, 0.1305])
    assert n == 2 and f.jumps == 1
    assert f.describe_outside() == "value 0 at 0.8, limits -1..0.3"
    rng = np.random.default_rng(0)
    for _ in range(200):  # inside the bounds: no jump
        prev = rng.uniform([-1, -1], [0.3, 1.0])
        out, _ = f(rng.normal(size=2) * 2, prev)
        assert np.all(np.abs(out - prev) <= 0.1305 + 1e-12)
    assert f.jumps == 1


def loaded(policy: Policy, version="a") -> LoadedPolicy:
    return LoadedPolicy("mem", Spec.load("reach"), {}, make_backend(policy, "numpy"), [],
                        version, 0.0)


def reach_obs(rng) -> dict:
    return {"joint_pos": rng.normal(size=9), "joint_vel": rng.normal(size=9),
            "ee_pose": rng.normal(size=7), "target_pose": rng.normal(size=7)}


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_controller_stale_nonfinite_clamp_and_swap():
    spec = Spec.load("reach")
    policy = random_policy()
    cfg = policy.cfg
    assert cfg.low_dim_keys == ["joint_pos", "ee_pose"]
    ctl = PolicyController(spec, loaded(policy), ActionFilter(8, lower=-0.5, upper=0.5),
                           max_age=0.15, safe_command="hold")
    rng = np.random.default_rng(0)
    obs = reach_obs(rng)
    r = ctl.tick(obs, age=0.01)
    assert r.reason == "ok" and np.all(np.abs(r.action) <= 0.5)
    low = torch.from_numpy(np.concatenate([obs["joint_pos"], obs["ee_pose"]])[None]).float()
    raw = policy.act({"joint_pos": low[:, :9], "ee_pose": low[:, 9:]})[0, 0].double().numpy()
    np.testing.assert_allclose(r.action, np.clip(raw, -0.5, 0.5), atol=1e-5)
    assert r.clamped == int(np.sum(np.abs(raw) > 0.5)) and ctl.counters.clamped_ticks == 1
    held = r.action
    r = ctl.tick(obs, age=0.2)                       # stale: hold the last command
    assert r.reason == "stale" and np.array_equal(r.action, held)
    ctl.safe_command = "zero"
    assert np.array_equal(ctl.tick(obs, age=1.0).action, np.zeros(8))
    bad = dict(obs, joint_pos=np.full(9, np.nan))
    r = ctl.tick(bad, age=0.0)
    assert r.reason == "nonfinite_input" and r.action is None
    assert ctl.counters.nonfinite_inputs == 1 and ctl.counters.stale == 2
    # a policy whose weights overflow gives a non-finite output: no command
    broken = random_policy(seed=1)
    with torch.no_grad():
        broken.net[-1].weight.fill_(float("inf"))
    ctl.offer(loaded(broken, "b"))
    r = ctl.tick(obs, age=0.0)
    assert r.reason == "nonfinite_output" and r.action is None
    assert ctl.counters.swaps == 1 and ctl.policy.version == "b"


def test_first_tick_max_change_counts_from_the_measured_joints():
    """Relative arm actions: the first command may not jump further than max_delta from the
    measured joint positions."""
    spec = Spec.load("reach")
    policy = random_policy()
    ctl = PolicyController(spec, loaded(policy), ActionFilter(8, max_delta=0.01))
    obs = reach_obs(np.random.default_rng(3))
    r = ctl.tick(obs)
    assert np.all(np.abs(r.action[:7] - obs["joint_pos"][:7]) <= 0.01 + 1e-12)
    second = ctl.tick(obs).action
    assert np.all(np.abs(second - r.action) <= 0.01 + 1e-12)


# ====================================================================== action limits
def test_safe_zero_command_passes_the_same_filter():
    """`safe_command: zero` is no raw zeros: it moves toward zero no faster than max_delta from
    the last command, within the joint limits (joint4's upper limit is below 0); with no
    reference for a rate-limited value (before any command), nothing is published."""
    spec = Spec.load("reach")
    lower, upper = np.full(8, -3.0), np.full(8, 3.0)
    upper[3] = -0.07
    lower[7], upper[7] = 0.0, 1.0
    ctl = PolicyController(spec, loaded(random_policy()),
                           ActionFilter(8, lower, upper, max_delta=0.1), max_age=0.15,
                           safe_command="zero")
    obs = reach_obs(np.random.default_rng(5))
    obs["joint_pos"][:7] = [0.0, 0.2, 0.0, -2.0, 0.0, 2.2, 0.8]
    assert ctl.tick(obs, age=1.0).action is None  # stale first: no reference for the gripper
    assert ctl.counters.commands == 0
    last = ctl.tick(obs, age=0.0).action
    for _ in range(3):
        r = ctl.tick(obs, age=1.0)
        assert r.reason == "stale" and r.action is not None
        assert np.all(np.abs(r.action - last) <= 0.1 + 1e-12), (r.action, last)
        assert np.all(r.action <= upper) and np.all(r.action >= lower)
        assert np.all(np.abs(r.action) <= np.abs(last) + 1e-12)  # toward zero
        last = r.action
    assert last[3] < -1.5  # joint4 far from its 0 target after three ticks: no jump
    # a robot's limits leave the gripper's change unlimited: before any command, the arm's
    # reference is the measured joints and the gripper needs none (no NaN from a missing one)
    ctl = PolicyController(spec, loaded(random_policy()),
                           ActionFilter(8, lower, upper, max_delta=[0.1] * 7 + [0.0]),
                           max_age=0.15, safe_command="zero")
    first = ctl.tick(obs, age=1.0).action
    assert first is not None and np.all(np.isfinite(first)), first
    # measured [0, 0.2, 0, -2.0, 0, 2.2, 0.8]: 0.1 toward zero at most
    np.testing.assert_allclose(first[:7], [0.0, 0.1, 0.0, -1.9, 0.0, 2.1, 0.7])
    assert first[7] == 0.0



def test_a_robot_outside_narrower_limits_gets_commands_within_them_and_the_jump_counted():
    """A policy node whose limits were narrowed (``action_upper``) below where the robot
    stands, or a checkpoint of narrower limits swapped in (``hold`` then passes the filter
    too): every command within the bounds, and each jump counted for the node to say."""
    spec = Spec.load("reach")
    lower, upper = np.full(8, -3.0), np.full(8, 3.0)
    upper[6] = 0.3
    ctl = PolicyController(spec, loaded(random_policy()),
                           ActionFilter(8, lower, upper, max_delta=0.1305), max_age=0.15,
                           safe_command="hold")
    obs = reach_obs(np.random.default_rng(7))
    obs["joint_pos"][6] = 0.817
    first = ctl.tick(obs, age=0.0).action
    assert first[6] <= 0.3 and ctl.filter.jumps == 1, first
    # wide limits, then narrower ones swapped in: the held command is brought within them
    wide = PolicyController(spec, loaded(random_policy()),
                            ActionFilter(8, np.full(8, -3.0), np.full(8, 3.0), max_delta=0.1305),
                            max_age=0.15, safe_command="hold")
    obs["joint_pos"][6] = 0.8
    wide.tick(obs, age=0.0)
    wide.offer(loaded(random_policy(), "b"), ActionFilter(8, lower, upper, max_delta=0.1305))
    r = wide.tick(obs, age=1.0)  # stale: hold, through the new limits
    assert r.reason == "stale" and np.all(r.action <= upper) and np.all(r.action >= lower)
    assert wide.filter.jumps == 1


def test_action_limits_from_the_checkpoint_parameters_or_nothing():
    from robot_imitation.deploy.limits import (ActionLimits, LimitsError, data_limits,
                                               robot_limits, runtime_limits, training_limits)

    spec = Spec.load("reach")
    panda = robot_limits("panda", spec)
    assert panda.source == "robot panda" and panda.upper[7] == 1.0 and panda.lower[7] == 0.0
    assert np.all(np.isfinite(panda.max_delta[:7])) and np.isinf(panda.max_delta[7])
    stored = panda.to_dict()
    assert stored["max_delta"][7] is None  # JSON: unlimited as null
    # stored limits round-trip; parameters replace parts of them
    got = runtime_limits(spec, stored)
    np.testing.assert_array_equal(got.lower, panda.lower)
    np.testing.assert_array_equal(got.max_delta, panda.max_delta)
    got = runtime_limits(spec, stored, max_delta=[0.01])
    np.testing.assert_array_equal(got.max_delta, np.full(8, 0.01))
    np.testing.assert_array_equal(got.upper, panda.upper)
    assert "max_delta from parameters" in got.source
    # nothing stored, nothing given: refused unless running without limits is asked for
    with pytest.raises(LimitsError, match="carries none"):
        runtime_limits(spec, None)
    assert runtime_limits(spec, None, allow_unlimited=True) is None
    with pytest.raises(LimitsError, match="needs 8 values"):
        ActionLimits.from_dict({**stored, "lower": stored["lower"][:3]}, 8)
    with pytest.raises(LimitsError, match="above upper"):
        runtime_limits(spec, stored, lower=[5.0])
    # a NaN or negative change per tick is refused, not taken as "no limit" (as 0 is)
    with pytest.raises(LimitsError, match="max_delta nan for action value 0: not a number"):
        runtime_limits(spec, stored, max_delta=[float("nan")])
    with pytest.raises(LimitsError, match="max_delta -1 for action value 3: negative"):
        runtime_limits(spec, stored, max_delta=[0.1] * 3 + [-1.0] + [0.1] * 4)
    with pytest.raises(LimitsError, match="action_upper nan for action value 0"):
        runtime_limits(spec, None, upper=[float("nan")])
    with pytest.raises(LimitsError, match="max_delta is NaN for action value 2"):
        ActionLimits.from_dict({**stored, "max_delta": [0.1, 0.1, float("nan")] + [None] * 5}, 8)
    with pytest.raises(LimitsError, match="max_delta -0.5 for action value 0 is negative"):
        ActionLimits.from_dict({**stored, "max_delta": [-0.5] + [None] * 7}, 8)
    # limits that bound nothing are running without limits: asked for, or refused
    with pytest.raises(LimitsError, match=r"given \(max_delta\) bound nothing"):
        runtime_limits(spec, None, max_delta=[0.0])
    assert runtime_limits(spec, None, max_delta=[0.0], allow_unlimited=True).unlimited
    np.testing.assert_array_equal(runtime_limits(spec, stored, max_delta=[0.0]).max_delta,
                                  np.full(8, np.inf))  # the stored bounds stay
    # at training time: the task's robot, else the recorded range
    actions = np.array([[0.0] * 7 + [0.0], [0.1] * 7 + [1.0], [0.3] * 7 + [1.0]])
    arrays = {"actions": actions, "episode": np.array([0, 0, 1])}
    assert training_limits(spec, arrays, task="reach").source == "robot panda"
    data = training_limits(spec, arrays)
    assert data.source.startswith("data")
    np.testing.assert_allclose(data.lower[0], -0.03)  # range 0.3 widened by 10% each side
    np.testing.assert_allclose(data.upper[0], 0.33)
    np.testing.assert_allclose(data.max_delta[0], 0.15)  # 1.5 x 0.1 (no step across episodes)
    assert data_limits(actions, np.array([0, 0, 1])).max_delta[7] == 1.5


def test_states_faster_than_the_control_rate_share_one_periods_change():
    """trigger state on a robot whose driver publishes at 100 Hz (reach's control rate is
    20 Hz): each state's answer may move max_delta from the last command, five times the
    velocity limit. With the states' times the change allowed counts the control periods
    since the last answered state (at most one), so the commands move no faster than
    max_delta per period; states a period apart (lockstep) give exactly what they gave."""
    spec = Spec.load("reach")
    period = 1.0 / spec.control_rate
    obs = reach_obs(np.random.default_rng(3))
    policy = random_policy()

    def run(times, delta=0.01):
        ctl = PolicyController(spec, loaded(policy), ActionFilter(8, max_delta=delta))
        return np.array([ctl.tick(obs, when=t).action for t in times])

    fast = run([k * 0.01 for k in range(41)])                # 100 Hz for 0.4 s
    moved = np.abs(fast[-1, :7] - fast[0, :7])
    assert np.all(moved <= 0.4 / period * 0.01 + 1e-9), moved   # 8 periods: 0.08 at most
    assert np.any(moved > 0.07), moved                            # (the target is far)
    steps = np.abs(np.diff(fast[:, :7], axis=0))
    assert np.all(steps <= 0.2 * 0.01 + 1e-9), steps.max()        # a fifth of max_delta
    # a period apart (stamps in seconds, rounded): the same commands as without times
    lock = run([1000.0 + k * period for k in range(10)])
    ctl = PolicyController(spec, loaded(policy), ActionFilter(8, max_delta=0.01))
    assert np.array_equal(lock, np.array([ctl.tick(obs).action for _ in range(10)]))
    # a state older than the last answered one (a clock put back) changes nothing
    back = run([5.0, 4.0])
    assert np.array_equal(back[1], back[0])


def test_a_value_without_a_reference_is_clamped_to_its_bounds():
    """A value with no reference yet (a joint measured NaN: its reference is the action
    itself) ends within its bounds and is no jump to them: the mux's limiter and the policy
    controller substitute the clamped value (the raw one, outside the bounds, counted a jump
    the node would report as the robot being outside its limits)."""
    from robot_imitation.deploy.limits import ActionLimits, CommandLimiter

    spec = Spec.load("reach")
    limits = ActionLimits(lower=np.array([-3.0] * 7 + [0.0]), upper=np.array([3.0] * 7 + [1.0]),
                          max_delta=np.full(8, 0.1), source="test")
    limiter = CommandLimiter(limits, spec)
    out = limiter(np.array([0.0] * 7 + [14.5]), {"joint_pos": np.zeros(9)})
    assert out[7] == 1.0 and np.all(np.abs(out[:7]) <= 0.1), out
    # an arm joint measured NaN (no reference for it) and commanded beyond its bound
    limiter.reset()
    measured = np.zeros(9)
    measured[0] = np.nan
    arm = limiter.part(0, np.array([5.0] + [0.05] * 6), {"joint_pos": measured})
    np.testing.assert_array_equal(arm, [3.0] + [0.05] * 6)
    assert limiter.filters[0].jumps == 0
