"""How much RLlib's episode-count evaluation with vector envs favours short episodes.

RLlib's ``SingleAgentEnvRunner.sample(num_episodes=N)`` steps all of its vector envs and
returns the first N episodes to end. With more envs than N (the MinAtar example evaluates 10
episodes on 16 envs) those are the N shortest of the episodes running, and where the return
grows with the episode's length (Breakout, Seaquest, SpaceInvaders, a robot that stays up),
their mean is biased low. This script replays that rule outside RLlib on a trained
checkpoint, next to the unbiased mean of each env's first episode (what the ``--no-tune``
final evaluation counts, and the in-training ``rllib_staq.first_episode_evaluation`` that the
vector-env examples use since 9d939f4), on the same episodes:

    python benchmarks/evaluation_bias.py --checkpoint RUN_DIR/checkpoint \\
        --env StaQ/MinAtar-Breakout-v1 --num-envs 16 --episodes 10 --rounds 3
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def first_completions_and_first_episodes(module, make_env, seeds, episodes):
    """Steps one env per seed greedily, in lockstep, each reset on its own after an episode ends.

    Returns (the returns of the first ``episodes`` episodes to end, in RLlib's order:
    by step, then by env index; the return of each env's first episode).
    """
    from rllib_staq.evaluation import greedy_actions

    envs = [make_env() for _ in seeds]
    observations = np.stack([env.reset(seed=seed)[0] for env, seed in zip(envs, seeds)])
    running_returns = np.zeros(len(envs))
    first_episode = [None] * len(envs)
    completed = []
    while len(completed) < episodes or any(ret is None for ret in first_episode):
        actions = greedy_actions(module, observations)
        for index, env in enumerate(envs):
            obs, reward, terminated, truncated, _ = env.step(actions[index])
            running_returns[index] += reward
            if terminated or truncated:
                completed.append(running_returns[index])
                if first_episode[index] is None:
                    first_episode[index] = running_returns[index]
                running_returns[index] = 0.0
                obs, _ = env.reset()
            observations[index] = obs
    for env in envs:
        env.close()
    return completed[:episodes], first_episode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a --no-tune run's checkpoint folder")
    parser.add_argument("--env", required=True, help="a registered name or gymnasium id")
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--episodes", type=int, default=10, help="RLlib's evaluation_duration")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=500_000)
    args = parser.parse_args()

    import torch
    from ray.rllib.core.rl_module.rl_module import RLModule

    from rllib_staq.compare import make_env

    torch.set_num_threads(1)
    module_path = os.path.join(
        args.checkpoint, "learner_group", "learner", "rl_module", "default_policy"
    )
    module = RLModule.from_checkpoint(module_path)
    first_n_means, first_episode_means = [], []
    for round_index in range(args.rounds):
        seeds = [args.first_seed + round_index * args.num_envs + i for i in range(args.num_envs)]
        first_n, first_episodes = first_completions_and_first_episodes(
            module, lambda: make_env(args.env), seeds, args.episodes
        )
        first_n_means.append(np.mean(first_n))
        first_episode_means.append(np.mean(first_episodes))
        print(
            f"round {round_index}: first {args.episodes} of {args.num_envs} to end "
            f"{np.mean(first_n):.2f} | each env's first episode {np.mean(first_episodes):.2f} "
            f"(min {np.min(first_episodes):.0f}, max {np.max(first_episodes):.0f})",
            flush=True,
        )
    print(
        f"mean over {args.rounds} rounds: RLlib's rule {np.mean(first_n_means):.2f}, "
        f"first episodes {np.mean(first_episode_means):.2f}, ratio "
        f"{np.mean(first_n_means) / np.mean(first_episode_means):.2f}"
    )


if __name__ == "__main__":
    main()
