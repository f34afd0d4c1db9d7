"""The loop of the reference runs beside StaQ (``pendulum_sac.py``, ``hopper_ppo.py``): train
an RLlib algorithm to an env-step budget, one CSV row per iteration with its greedy return."""

import argparse
import csv
import os
import time

import ray
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    EPISODE_RETURN_MEAN,
    EVALUATION_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
)


def train_and_log(algo, run_dir: str, stop_timesteps: int) -> None:
    """Trains ``algo`` to ``stop_timesteps`` env steps, one CSV row per iteration in
    ``run_dir/progress.csv`` (the greedy return where the iteration evaluated), then stops it."""
    start = time.perf_counter()
    try:
        with open(os.path.join(run_dir, "progress.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["iteration", "env_steps", "time_s", "greedy_return"])
            env_steps, iteration = 0, 0
            while env_steps < stop_timesteps:
                result = algo.train()
                iteration += 1
                env_steps = result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME]
                greedy = (
                    result.get(EVALUATION_RESULTS, {})
                    .get(ENV_RUNNER_RESULTS, {})
                    .get(EPISODE_RETURN_MEAN, "")
                )
                elapsed = time.perf_counter() - start
                writer.writerow([iteration, env_steps, elapsed, greedy])
                f.flush()
                print(f"iter {iteration} env steps {env_steps} {elapsed:.0f}s greedy {greedy}")
    finally:
        algo.stop()


def reference_main(build_config, default_stop_timesteps: int) -> None:
    """Command line: ``--run-dir DIR --seed N --stop-timesteps T``; ``build_config(seed)``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-timesteps", type=int, default=default_stop_timesteps)
    args = parser.parse_args()
    os.makedirs(args.run_dir, exist_ok=True)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        train_and_log(build_config(args.seed).build_algo(), args.run_dir, args.stop_timesteps)
    finally:
        ray.shutdown()
