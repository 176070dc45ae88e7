"""One learning loop over two worlds: the gymnasium learning world (``rollouts.gym``) gives the
training data the ROS world (``rollouts.ros``: bridge in lockstep, expert node, mux,
supervisor, policy node and recorder in their own processes, bags read back) records, step for
step: the same steps, the same observations and labels (the float32 numbers the gymnasium world
keeps), the same executed sources; each episode's final state labelled in both."""
import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def assert_same_data(ros: list, gym: list, executed: bool) -> None:
    """``ros`` (built from the bags, float64) and ``gym`` (float32) episodes are the same data;
    ``executed``: with the same executed source at every step (else neither has any)."""
    assert [e.seed for e in ros] == [e.seed for e in gym]
    assert [len(e) for e in ros] == [len(e) for e in gym]  # (the final state labelled in both)
    for r, g in zip(ros, gym):
        assert r.success == g.success, r.seed
        for key in g.obs:
            # the lockstep is exact: the very numbers, once kept as float32 as the gym world's
            np.testing.assert_array_equal(np.asarray(r.obs[key]).astype(np.float32), g.obs[key],
                                          err_msg=f"seed {r.seed}: {key}")
        np.testing.assert_array_equal(np.asarray(r.actions).astype(np.float32), g.actions,
                                      err_msg=f"seed {r.seed}: labels")
        if executed:
            assert list(r.executed) == list(g.executed), r.seed
        else:
            assert r.executed is None and g.executed is None, r.seed


@pytest.mark.parametrize("compose", [False, True], ids=["processes", "composed"])
def test_reach_demonstrations_through_ros_are_the_gymnasium_world_s(tmp_path, compose):
    """Two reach demonstrations recorded as ``RosWorld.demonstrations`` records them (bridge,
    expert node, recorder; the data built as ``RosWorld.dataset`` builds it) are
    ``GymLearningWorld.demonstrations`` of the same seeds: the recorder also keeps the expert's
    answer to the final state (sent, never executed), which the gymnasium world labels too.
    The same with the bridge and the expert in one process (``compose``)."""
    from robot_imitation.rollouts.gym import GymLearningWorld
    from robot_imitation.rollouts.ros import aggregate
    from robot_imitation.ros.graph import SimGraph
    from robot_imitation.ros.pipelines import record_demonstrations
    from robot_imitation.spec import Spec

    spec = Spec.load("reach")
    seeds = range(0, 2)
    with SimGraph(join=True) as graph:  # (the session's domain, conftest.py)
        entries = record_demonstrations(tmp_path / "expert", task="reach", spec="reach",
                                        episodes=len(seeds), seed=seeds.start,
                                        log_dir=tmp_path / "logs", graph=graph,
                                        compose=compose)
    assert [e["status"] for e in entries] == ["ok", "ok"]
    assert (tmp_path / "logs" / "mujoco_bridge+scripted_expert.log").is_file() == compose
    ros = aggregate([(tmp_path / "expert", spec, None)], spec, val_fraction=0.0).episodes
    world = GymLearningWorld("reach", spec, seed=0)
    try:
        gym, sources = world.demonstrations(seeds)
    finally:
        world.close()
    assert sources is None
    assert_same_data(ros, gym, executed=False)


def wait_forwarded(rig, count: int, timeout: float = 60.0) -> int:
    """Wait until the mux has forwarded ``count`` answers since it came up (its diagnostics):
    an episode's final state is answered, and forwarded (drawn for, in a mixture), once its
    sources' answers are in, which the next episode's reset does not wait for; a first state
    of the next episode that came before them would take the final state's place, unforwarded
    (no draw: every later draw would be the gymnasium world's next)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        diag = rig.diagnostics("command_mux", fresh=True)
        done = sum(int(v) for k, v in diag.items() if k.startswith("forwarded_"))
        if done >= count or time.monotonic() > deadline:
            assert done == count, (done, count)
            return done
        rig.group.check()


@pytest.mark.parametrize("variant,compose", [("mixture", False), ("gated", False),
                                             ("gated", True)],
                         ids=["mixture", "gated", "gated-composed"])
def test_a_dagger_part_through_ros_is_the_gymnasium_world_s(variant, compose, tmp_path):
    """Two episodes of a DAgger part (a mixture with beta 0.5 drawn per step, or the gated
    variant with the scripted supervisor) with an untrained policy, collected on a ``RosRig``
    as ``RosWorld.collect`` collects them and read with the labels' spec, are
    ``GymLearningWorld.collect``'s: the same states, labels (the expert's plans) and sources,
    the mux's draw (or the supervisor's button) for the final state included. The same with
    the bridge, the expert, the mux, the supervisor and the policy node in one process
    (``compose``; the expert's and the policy's commands remapped per node)."""
    from conftest import untrained_checkpoint
    from robot_imitation.algorithms.dagger import Gated, Mixture
    from robot_imitation.rollouts.gym import GymLearningWorld
    from robot_imitation.rollouts.ros import RosRig, aggregate, label_spec
    from robot_imitation.ros.graph import SimGraph
    from robot_imitation.ros.pipelines import wait_recorded
    from robot_imitation.spec import Spec

    spec = Spec.load("reach")
    seed, seeds = 3, range(10_000, 10_002)  # (the run's seed: the mux's and the world's rng)
    checkpoint = untrained_checkpoint(tmp_path / "ckpt", "reach")
    # a gate that takes over soon and often, and hands back soon: both sources drive
    supervisor = {"stall_steps": 5, "patience": 8, "hold": 4} if variant == "gated" else None
    driver = Gated(supervisor) if variant == "gated" else Mixture(0.5, "step")
    folder = tmp_path / "dagger"
    with SimGraph(join=True) as graph:
        rig = RosRig(tmp_path / "logs", "reach", "reach", checkpoint, with_expert=True,
                     dataset=folder, mixture_per="step", seed=seed, supervisor=supervisor,
                     graph=graph, compose=compose)
        assert (len(rig.group.procs) == 2) == compose  # (the container and the recorder)
        try:
            # the episode the bridge began when it came up (the policy drives it, in the mux's
            # first mode): over, its final state forwarded, before the mixture draws (as in a
            # run, where evaluations come first; switched while it ran, the mixture would
            # draw for its states, as many as came before its end)
            assert rig.node.wait_settled(120.0, alive=rig.group.check)
            forwarded = wait_forwarded(rig, int(rig.node.status["tick"]) + 1)
            if variant == "gated":
                rig.set_params("command_mux", mode="intervention")
            else:
                rig.set_params("command_mux", mode="mixture", beta=0.5)
            outcomes = []
            for s in seeds:  # RosWorld.collect's episodes, one at a time: see wait_forwarded
                outcomes += rig.episodes(1, s, record=True)
                forwarded = wait_forwarded(rig, forwarded + outcomes[-1].ticks + 1)
            entries = wait_recorded(folder)
        finally:
            rig.close()
    assert [e["status"] for e in entries] == ["ok", "ok"]
    ros = aggregate([(folder, label_spec(spec), None)], spec, val_fraction=0.0).episodes
    world = GymLearningWorld("reach", spec, seed=seed)
    try:
        world.deploy(checkpoint)
        (gym, _), share = world.collect(seeds, driver)
    finally:
        world.close()
    # the same episodes, each with one step more than its ticks: its final state
    assert [len(e) for e in gym] == [o.ticks + 1 for o in outcomes]
    assert_same_data(ros, gym, executed=True)
    assert {"expert", "policy"} <= {s for e in gym for s in e.executed}
    steps = sum(len(e) for e in ros)
    assert share == sum(int((e.executed == "expert").sum()) for e in ros) / steps
