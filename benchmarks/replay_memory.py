"""Process RSS with a full replay on MinAtar-sized observations (10x10x4 float32).

Fills a replay of ``--capacity`` transitions (default 50,000) with a random-observation
env of MinAtar's shape, then prints the process RSS. Run it on two package versions
(e.g. with ``PYTHONPATH`` pointing at an older checkout) to compare their replay memory:

    python benchmarks/replay_memory.py --capacity 50000
"""

from __future__ import annotations

import argparse
import gc

import gymnasium as gym
import numpy as np
import ray

from rllib_staq import StaQConfig

OBS_SHAPE = (10, 10, 4)
EPISODE_LENGTH = 100


class RandomMinAtarShapedEnv(gym.Env):
    """Bool-like 0/1 observations of MinAtar's shape as float32; 3 actions."""

    observation_space = gym.spaces.Box(0.0, 1.0, OBS_SHAPE, np.float32)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, config=None):
        super().__init__()
        self._rng = np.random.default_rng(0)
        self._t = 0

    def _obs(self):
        return (self._rng.random(OBS_SHAPE) < 0.1).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        self._t += 1
        return self._obs(), float(action == 0), False, self._t >= EPISODE_LENGTH, {}


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--capacity", type=int, default=50_000)
    parser.add_argument("--steps-per-iteration", type=int, default=5000)
    parser.add_argument("--extra-iterations", type=int, default=2)
    args = parser.parse_args()

    ray.init(num_cpus=1, include_dashboard=False)
    config = (
        StaQConfig()
        .environment(RandomMinAtarShapedEnv)
        .env_runners(num_env_runners=0)
        .training(
            stack_size=5,
            env_steps_per_iteration=args.steps_per_iteration,
            grad_steps_per_iteration=1,
            train_batch_size_per_learner=32,
            replay_buffer_config={"capacity": args.capacity},
        )
        .debugging(seed=0)
    )
    algo = config.build_algo()
    print(f"after build: RSS {rss_mib():.0f} MiB")
    iterations = -(-args.capacity // args.steps_per_iteration) + args.extra_iterations
    for iteration in range(1, iterations + 1):
        algo.train()
        gc.collect()
        print(f"iteration {iteration:2d}: RSS {rss_mib():.0f} MiB", flush=True)
    table = algo.learner_group._learner._tables["default_policy"]
    table_mib = sum(c.numel() * c.element_size() for c in table.columns.values()) / 2**20
    rllib_buffer = algo.local_replay_buffer
    rllib_steps = rllib_buffer.get_num_timesteps() if rllib_buffer is not None else 0
    print(
        f"learner table: {table.size} transitions, {table_mib:.0f} MiB of tensors; "
        f"RLlib episode buffer: {rllib_steps} env steps; final RSS {rss_mib():.0f} MiB"
    )
    algo.stop()


if __name__ == "__main__":
    main()
