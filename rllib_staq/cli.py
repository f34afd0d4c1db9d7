"""Entry point shared by the tuned examples (RLlib example-script conventions)."""

from __future__ import annotations

import argparse
import os
from typing import Callable

from rllib_staq.progress import evaluate_greedy, train_with_progress
from rllib_staq.staq import StaQ, StaQConfig


def run_example(args: argparse.Namespace, build_config: Callable[..., StaQConfig]):
    """``--no-tune``: plain loop with progress and a final greedy evaluation;
    otherwise RLlib's ``run_rllib_example_script_experiment`` (Tune).

    The plain loop stops at ``--stop-timesteps`` env steps, or earlier once a
    greedy evaluation reaches ``--stop-reward``.
    """
    import ray

    config = build_config(num_env_runners=args.num_env_runners or 0)
    if args.num_envs_per_env_runner:
        config.env_runners(num_envs_per_env_runner=args.num_envs_per_env_runner)
    if config.num_env_runners:
        # Remote runners on a small machine: avoid torch thread oversubscription.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not args.no_tune:
        from ray.rllib.examples.utils import run_rllib_example_script_experiment

        return run_rllib_example_script_experiment(config, args, trainable=StaQ)

    ray.init(num_cpus=args.num_cpus or None, include_dashboard=False)
    try:
        algo = config.build_algo()
        train_with_progress(
            algo, stop_timesteps=args.stop_timesteps, stop_reward=args.stop_reward
        )
        final_return = evaluate_greedy(algo)
        if args.as_test and final_return < args.stop_reward:
            raise SystemExit(
                f"--as-test failed: greedy return {final_return:.1f} < {args.stop_reward}"
            )
        algo.stop()
    finally:
        ray.shutdown()
