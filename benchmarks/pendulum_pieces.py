"""Continuous StaQ on Pendulum-v1 in pieces of bounded wall time (shared 2-core CPU).

    python benchmarks/pendulum_pieces.py --run-dir DIR --seed 0 --stack-size 50 \\
        [--stop-timesteps 30000] [--piece-minutes 9]

Trains ``tuned_examples/pendulum_staq.py``'s config (with ``--stack-size`` as M)
until ``--piece-minutes`` have passed or ``--stop-timesteps`` env steps are done,
then saves a checkpoint (with the replay table: ``store_buffer_in_checkpoints``)
and exits; run the same command again to continue from it. Each iteration
appends a row to ``DIR/progress.csv``: env steps, seconds, the greedy (tanh(mean))
evaluation return where one ran (10 episodes every 2000 env steps).
"""

import argparse
import csv
import json
import os
import sys
import time

import ray
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    EPISODE_RETURN_MEAN,
    EVALUATION_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tuned_examples"))
import pendulum_staq  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stack-size", type=int, default=10)
    parser.add_argument("--stop-timesteps", type=int, default=30_000)
    parser.add_argument("--piece-minutes", type=float, default=9.0)
    args = parser.parse_args()
    os.makedirs(args.run_dir, exist_ok=True)
    checkpoint = os.path.join(args.run_dir, "checkpoint")
    progress_path = os.path.join(args.run_dir, "progress.json")
    progress = {"iteration": 0, "env_steps": 0, "time_s": 0.0}
    if os.path.exists(progress_path):
        with open(progress_path) as f:
            progress = json.load(f)
    if progress["env_steps"] >= args.stop_timesteps:
        print(f"done: {progress}")
        return
    config = pendulum_staq.build_config(seed=args.seed, stack_size=args.stack_size)
    config.training(store_buffer_in_checkpoints=True)
    ray.init(num_cpus=2, include_dashboard=False)
    algo = config.build_algo()
    try:
        if os.path.exists(checkpoint):
            algo.restore_from_path(checkpoint)
        start = time.perf_counter()
        csv_path = os.path.join(args.run_dir, "progress.csv")
        new_file = not os.path.exists(csv_path)
        with open(csv_path, "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(["iteration", "env_steps", "time_s", "greedy_return"])
            while progress["env_steps"] < args.stop_timesteps:
                iteration_start = time.perf_counter()
                result = algo.train()
                progress["iteration"] += 1
                progress["env_steps"] += config.env_steps_per_iteration
                progress["time_s"] += time.perf_counter() - iteration_start
                greedy = (
                    result.get(EVALUATION_RESULTS, {})
                    .get(ENV_RUNNER_RESULTS, {})
                    .get(EPISODE_RETURN_MEAN, "")
                )
                writer.writerow(
                    [progress["iteration"], progress["env_steps"], progress["time_s"], greedy]
                )
                f.flush()
                print(
                    f"iter {progress['iteration']} env steps {progress['env_steps']} "
                    f"(RLlib count {result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME]})"
                    f" {progress['time_s']:.0f}s greedy {greedy}",
                    flush=True,
                )
                if time.perf_counter() - start > 60 * args.piece_minutes:
                    break
        algo.save_to_path(checkpoint)
        with open(progress_path, "w") as f:
            json.dump(progress, f)
    finally:
        algo.stop()
        ray.shutdown()


if __name__ == "__main__":
    main()
