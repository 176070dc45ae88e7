"""Hot reloads of the policy node under a backend asked for by name (``backend:=numpy``): a
checkpoint that backend cannot run is refused, as at start, and the running policy stays. The
reload used to fall back to the automatic choice without a word (act ran on ONNX Runtime under
`backend:=numpy`, which refused the same checkpoint at start)."""
import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from std_srvs.srv import SetBool

from conftest import untrained_checkpoint, wait_for

pytestmark = pytest.mark.ros

NODE = "policy_node"


def act_checkpoint(path):
    import torch

    from robot_imitation.deploy.limits import robot_limits
    from robot_imitation.learning.checkpoint import save_checkpoint
    from robot_imitation.learning.config import TrainConfig
    from robot_imitation.policies import make_policy
    from robot_imitation.spec import Spec

    torch.manual_seed(0)
    spec = Spec.load("reach")
    policy = make_policy(spec, TrainConfig(policy="act", policy_config={
        "dim_model": 32, "encoder_layers": 1, "feedforward": 64}))
    limits = robot_limits("panda", spec)
    return save_checkpoint(path, policy, spec,
                           extra={"action_limits": limits.to_dict(), "task": "reach"})


def test_a_backend_asked_for_by_name_is_kept_at_a_reload(procs, probe, tmp_path):
    mlp = untrained_checkpoint(tmp_path / "mlp", "reach")
    act = act_checkpoint(tmp_path / "act")
    diags = []
    probe.node.create_subscription(DiagnosticArray, "/diagnostics",
                                   lambda m: diags.append((m, time.monotonic())), 10)
    procs.start_node(NODE, params={"checkpoint": str(mlp), "backend": "numpy",
                                   "diagnostics_period": 0.2})
    client = probe.node.create_client(SetBool, f"/{NODE}/enable")
    wait_for(client.service_is_ready, 60, "the policy node's services", procs=procs)

    def newest(after: float):
        for msg, when in reversed(diags):
            if when < after:
                break
            for st in msg.status:
                if st.name.startswith(NODE):
                    return {kv.key: kv.value for kv in st.values}
        return None

    v = wait_for(lambda: newest(0.0), 30, "the node's diagnostics", procs=procs)
    assert v["backend"] == "numpy", v
    req = SetParameters.Request()
    req.parameters = [Parameter("checkpoint", value=str(act)).to_parameter_msg()]
    probe.call(SetParameters, f"/{NODE}/set_parameters", req)
    t = time.monotonic()
    v = wait_for(lambda: (v := newest(t)) and int(v["reload_failures"]) >= 1 and v, 60,
                 "the refused reload in /diagnostics", procs=procs)
    assert v["backend"] == "numpy" and v["checkpoint"] == str(mlp), v
    assert "numpy" in v["reload_error"] and int(v["reloads"]) == 0, v
    log = procs.log(NODE)
    assert "reload of" in log and "the running policy" in log, log
