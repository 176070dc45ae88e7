"""DAgger through ROS 2 (``robot-imitation dagger``/``pipeline``, the DAgger node): the
algorithm of ``algorithms.dagger`` in the ROS world of ``rollouts.ros``, and closed-loop
evaluation of a checkpoint through ROS (``evaluate_ros``).

The names of the DAgger settings, the ROS rig and the data helpers are importable from here as
before.
"""
from __future__ import annotations

from .algorithms.dagger import (DATA_SEED, MIXTURE_PER, NAMES, SCHEDULES,  # noqa: F401
                                SEED_STRIDE, SUPERVISOR_LIMITS, VARIANTS, BetaSchedule,
                                DaggerConfig, Gated, Mixture, check_config)
from .paths import RunFolderError  # noqa: F401
from .rollouts.base import EVAL_SEED, ROLLOUT_BACKEND  # noqa: F401
from .rollouts.ros import (INTERVENTION_BUTTON, LABEL_PREFIX, RosRig, RosWorld,  # noqa: F401
                           aggregate, evaluate_ros, expert_share, label_spec)

__all__ = ["DATA_SEED", "EVAL_SEED", "INTERVENTION_BUTTON", "LABEL_PREFIX", "MIXTURE_PER",
           "NAMES", "ROLLOUT_BACKEND", "SCHEDULES", "SEED_STRIDE", "SUPERVISOR_LIMITS",
           "VARIANTS", "BetaSchedule", "DaggerConfig", "Gated", "Mixture", "RosRig", "RosWorld",
           "RunFolderError", "aggregate", "check_config", "evaluate_ros", "expert_share",
           "label_spec", "run_dagger"]


def run_dagger(out, cfg: DaggerConfig, log=print, on_iteration=None, should_stop=None,
               graph=None, overwrite: bool = False, abort=None, compose: bool = False) -> dict:
    """BC on expert demonstrations, then ``cfg.iterations`` DAgger iterations through ROS;
    returns (and writes to ``out``/dagger.json) the per-iteration results (see
    ``algorithms.dagger.run``). ``graph``: the ``SimGraph`` every process of the run talks on
    (default: a private one, closed when the run ends). ``out``: empty or new, unless
    ``overwrite``, which clears it (``RunFolderError`` otherwise). ``abort``: see ``run``.
    ``compose``: the bridge and its controllers in one process (``RosWorld``)."""
    from .algorithms.dagger import run, run_inputs
    from .paths import check_out
    from .ros.graph import SimGraph

    tcfg, spec = check_config(cfg)  # before anything starts or is written
    out = check_out(out, overwrite, run_inputs(cfg))  # (``run`` clears or makes it)
    own_graph = graph is None
    graph = graph or SimGraph()
    world = RosWorld(out, cfg, spec, graph, log=log, compose=compose)
    try:
        return run(world, cfg, tcfg, spec, out, log, on_iteration, should_stop, overwrite,
                   abort=abort)
    finally:
        world.close()
        if own_graph:
            graph.close()
