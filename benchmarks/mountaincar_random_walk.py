"""How often a uniform random policy reaches MountainCar-v0's flag within its 200 steps.

    python benchmarks/mountaincar_random_walk.py [--episodes 10000]

StaQ starts from the uniform policy (pi_0) and its softmax behaviour policy stays near
uniform while every return is -200: with the same reward (-1) at every step and time-limit
truncation (no terminal state), fitted-Q evaluation has no signal that separates the
actions. Whether StaQ can leave MountainCar's -200 floor therefore hinges on a near-uniform
policy reaching the flag by chance. This script measures that chance and the highest
position any episode reaches (the flag is at 0.5). docs/results_environments.md quotes it.
"""

import argparse

import gymnasium as gym
import numpy as np


def random_walk_episodes(num_episodes: int, num_envs: int = 100, seed: int = 0):
    """Returns (episodes that reached the flag, highest position reached)."""
    envs = gym.make_vec("MountainCar-v0", num_envs=num_envs, vectorization_mode="sync")
    rng = np.random.default_rng(seed)
    successes, highest = 0, -np.inf
    for batch in range(num_episodes // num_envs):
        obs, _ = envs.reset(seed=seed + batch * num_envs)
        finished = np.zeros(num_envs, dtype=bool)
        while not finished.all():
            obs, _, terminated, truncated, _ = envs.step(rng.integers(0, 3, num_envs))
            # The vector env resets a finished sub-env on its next step: count only the
            # steps of episodes still running.
            running = ~finished
            highest = max(highest, float(obs[running, 0].max()))
            successes += int((terminated & running).sum())
            finished |= terminated | truncated
    envs.close()
    return successes, highest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.episodes < 100 or args.episodes % 100:
        parser.error(f"--episodes must be a positive multiple of 100, got {args.episodes}")
    successes, highest = random_walk_episodes(args.episodes, seed=args.seed)
    print(
        f"uniform random policy, {args.episodes} episodes of MountainCar-v0: {successes} reached "
        f"the flag ({successes / args.episodes:.4%}); highest position {highest:.3f} (flag 0.5)"
    )


if __name__ == "__main__":
    main()
