"""MountainCar-v0 with a fixed, small tau: does approximation error become exploration?

    python benchmarks/mountaincar_low_tau.py [--entropy-coeff 0.02] [--iterations 80]

The tuned example (``tuned_examples/mountaincar_staq.py``) stays at -200 with a uniform
policy (docs/results_environments.md). With a much smaller tau, the softmax over the
nearly equal Q-values turns their approximation error into a nearly deterministic policy,
and such a policy can repeat one action for many steps in a row. This probe runs the tuned
example's config with ``entropy_coeff`` fixed to a small value and prints, per iteration, the
mean and max training-episode return, the greedy return (where evaluated) and the policy
entropy.
"""

import argparse
import os
import sys
import time

import ray

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tuned_examples"))
from mountaincar_staq import build_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entropy-coeff", type=float, default=0.02)
    parser.add_argument("--iterations", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ray.init(num_cpus=1, include_dashboard=False)
    algo = build_config(seed=args.seed).training(entropy_coeff=args.entropy_coeff).build_algo()
    start = time.perf_counter()
    print("iteration | train return mean | train return max | greedy | entropy | seconds")
    try:
        for iteration in range(1, args.iterations + 1):
            result = algo.train()
            runners = result["env_runners"]
            learner = result["learners"]["default_policy"]
            greedy = result.get("evaluation", {}).get("env_runners", {}).get("episode_return_mean")
            print(
                f"{iteration} | {runners.get('episode_return_mean')} | "
                f"{runners.get('episode_return_max')} | {greedy} | "
                f"{learner['policy_entropy']:.4f} | {time.perf_counter() - start:.0f}",
                flush=True,
            )
    finally:
        algo.stop()
        ray.shutdown()


if __name__ == "__main__":
    main()
