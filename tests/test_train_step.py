"""The trainer's step (``learning.step``): the learning-rate schedule in closed form, the moving
average's graph form, a step taken in two halves, the compile setting off the GPU, and each
family's loss traced once for compiling. Their CUDA-graph and compiled forms are tested on a GPU
in ``test_cuda.py``."""
import numpy as np
import pytest
import torch

from robot_imitation.learning.step import EmaWeights, TrainStep, cosine_lr
from robot_imitation.learning.trainer import DeviceData, TrainConfig
from robot_imitation.policies import make_policy
from robot_imitation.spec import Spec


def test_the_schedule_is_cosine_annealing():
    """Step k of a run uses what torch's CosineAnnealingLR gives after k - 1 scheduler steps."""
    steps, base = 37, 3e-3
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for k in range(1, steps + 1):
        assert abs(cosine_lr(base, k, steps) - sched.get_last_lr()[0]) < 1e-12 * base, k
        opt.step()
        sched.step()
    assert cosine_lr(base, 1, steps) == base and cosine_lr(base, steps + 1, steps) < 1e-18


def test_the_average_with_a_tensor_weight_is_the_average_with_a_number():
    spec = Spec.load("push")
    policies = [make_policy(spec, TrainConfig(policy="act")) for _ in range(2)]
    policies[1].load_state_dict(policies[0].state_dict())
    averages = [EmaWeights(p, 0.99) for p in policies]
    weight = torch.zeros(())
    for step in range(1, 6):
        for p in policies:
            with torch.no_grad():
                for w in p.parameters():
                    w.add_(0.01 * step)
        averages[0].update(step)
        weight.fill_(averages[1].weight(step))
        averages[1].update(step, weight)
    for a, b in zip(averages[0].model.parameters(), averages[1].model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert averages[0].weight(1000) == 1.0 - 0.99


def synthetic(spec: Spec, n: int = 400):
    rng = np.random.default_rng(0)
    return {"obs": {f.key: rng.standard_normal((n, *f.shape)) for f in spec.observations},
            "actions": rng.uniform(-1, 1, (n, spec.action_dim)),
            "episode": np.arange(n) // 50}


def test_a_step_in_two_halves_is_the_step_on_the_drawn_batch():
    """draw() gives the batch the generator names; update() on an outside batch (as the
    benchmark's DataLoader gives) trains on that batch; both halves on the CPU are eager
    whatever ``graph`` says."""
    spec = Spec.load("push")
    data = DeviceData(synthetic(spec), spec, 1, torch.device("cpu"))
    torch.manual_seed(0)
    policy = make_policy(spec, TrainConfig())
    gen = torch.Generator().manual_seed(5)
    taker = TrainStep(policy, data, batch_size=32, lr=1e-3, weight_decay=0.0, steps=10,
                      generator=gen, graph=True)
    index, obs, actions, mask = taker.draw()
    assert torch.equal(index, torch.randint(data.n, (32,), generator=torch.Generator()
                                            .manual_seed(5)))
    torch.testing.assert_close(actions, data.actions[data.chunk_index[index]])
    before = [p.detach().clone() for p in policy.parameters()]
    loss, metrics = taker.update((index, obs, actions, mask), 1)
    assert torch.isfinite(loss) and not loss.requires_grad and metrics == {}
    assert any(not torch.equal(a, p) for a, p in zip(before, policy.parameters()))
    assert not taker.captured and taker.why_eager == "" and taker.last_lr == 1e-3


def test_compiling_is_for_one_cuda_gpu_and_the_cpu_says_it_took_none():
    """``compile`` on the CPU: the log says the steps are uncompiled, and they train (torch's
    compiled form is tested on a GPU in ``test_cuda.py``)."""
    spec = Spec.load("push")
    data = DeviceData(synthetic(spec), spec, 1, torch.device("cpu"))
    torch.manual_seed(0)
    policy = make_policy(spec, TrainConfig())
    logged = []
    taker = TrainStep(policy, data, batch_size=32, lr=1e-3, weight_decay=0.0, steps=10,
                      compile="default", log=logged.append)
    assert len(logged) == 1 and "compile default" in logged[0] and "device cpu" in logged[0]
    before = [p.detach().clone() for p in policy.parameters()]
    loss, _, _ = taker.take(1)
    assert torch.isfinite(loss) and not taker.compiled and taker.why_uncompiled == ""
    assert any(not torch.equal(a, p) for a, p in zip(before, policy.parameters()))


@pytest.mark.parametrize("family", ["mlp", "act", "diffusion"])
def test_a_policys_loss_is_traced_once_for_compiling(family):
    """``torch.compile`` traces the loss at its first step and replays it after: nothing the
    loss does changes what the trace guards on (the diffusion loss once filled a per-device
    cache of its noise schedule at its first call, and compiled training traced it again at
    the second). Dynamo with a backend that only counts the graphs: no compiler needed."""
    from robot_imitation.learning.step import PolicyLoss
    from robot_imitation.policies import policy_class

    spec = Spec.load("push")
    chunk = policy_class(family).config_class.default_chunk if family != "mlp" else 1
    data = DeviceData(synthetic(spec), spec, chunk, torch.device("cpu"))
    torch.manual_seed(0)
    policy = make_policy(spec, TrainConfig(policy=family))
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    loss = torch.compile(PolicyLoss(policy), backend=counting, dynamic=False)
    traced = []
    for step in range(3):
        obs, actions, mask = data.batch(torch.arange(step, step + 16))
        value, _ = loss(obs, actions, mask)
        value.backward()
        traced.append(len(graphs))
    torch._dynamo.reset()
    assert traced[0] >= 1 and traced[1] == traced[2] == traced[0], traced


def test_where_torch_cannot_compile_at_all_the_reason_is_given(monkeypatch):
    """``torch.compile`` itself raising (as on a Python it does not support) gives no compiled
    loss and the reason, not a traceback."""
    from robot_imitation.learning import step

    def unsupported(*args, **kwargs):
        raise RuntimeError("torch.compile is not supported on this Python")

    model = torch.nn.Linear(2, 2)
    compiled, why = step.compiled_loss(model, "default")
    assert compiled is not None and why == ""
    monkeypatch.setattr(torch, "compile", unsupported)
    compiled, why = step.compiled_loss(model, "default")
    assert compiled is None and why == "RuntimeError: torch.compile is not supported on this Python"
