"""A hot reload beside a running control loop: the ONNX export of the checkpoint loaded (for a
diffusion U-Net, passes that hold the interpreter's lock for up to 0.6 s at a time) runs in a
child process of the policy node, not on a thread of the node's process, where it stopped the
ticks as long (1.2 s between two commands during a 4 s load)."""
import threading
import time
from pathlib import Path

import pytest

from conftest import untrained_checkpoint, wait_for
from test_chunk_async import diffusion_checkpoint
from test_policy_node import NODE, newest, start_policy, timed

pytestmark = pytest.mark.ros


def descendants(pid: int) -> dict:
    """{pid: command line} of the processes below ``pid`` (Linux /proc)."""
    out, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                try:
                    cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                if cmd:   # (empty: not exec'd yet, or exited)
                    out[child] = cmd.decode(errors="replace")
                todo.append(child)
    return out


def test_a_reload_exports_the_new_policy_in_a_child_process(procs, probe, tmp_path):
    """An MLP on ONNX Runtime, then a diffusion checkpoint set: its export runs in a child
    process of the node (seen while the reload runs), the reload succeeds and the policy runs
    on ONNX Runtime from the exported model."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    mlp = str(untrained_checkpoint(tmp_path / "mlp", "reach"))
    diffusion = str(diffusion_checkpoint(tmp_path / "diffusion"))
    diags = timed(probe, DiagnosticArray, "/diagnostics", 10, "diag")
    start_policy(procs, probe, checkpoint=mlp, backend="onnxruntime", trigger="timer",
                 diagnostics_period=0.2)
    wait_for(lambda: newest(diags), 60, "diagnostics", procs=procs)
    node = procs.procs[NODE].pid
    req = SetParameters.Request()
    req.parameters = [Parameter("checkpoint", value=diffusion).to_parameter_msg()]
    result = probe.call(SetParameters, f"/{NODE}/set_parameters", req).results[0]
    assert result.successful, result.reason
    seen: dict = {}
    done = threading.Event()

    def watch():   # the node's processes, every few milliseconds while the reload runs
        while not done.is_set():
            seen.update(descendants(node))
            time.sleep(0.005)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def reloaded():
        v = newest(diags, time.monotonic() - 0.1)
        return v is not None and v[0]["reloads"] == "1" and v[0]
    try:
        v = wait_for(reloaded, 120, "the reload", procs=procs)
    finally:
        done.set()
        watcher.join()
    assert v["model_version"] != "" and v["backend"] == "onnxruntime", v
    assert v.get("reload_error", "") == "" and v["reload_failures"] == "0", v
    log = procs.log(NODE, tail=100_000)
    assert f"loaded {diffusion}" in log, log
    exporters = [cmd for cmd in seen.values() if "child_process_main" in cmd]
    assert exporters, f"no child process exported the policy: {seen}"
