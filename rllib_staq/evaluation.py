"""Greedy rollouts of a StaQ RL module on a plain gymnasium env (no Ray needed).

Used by the main job's final evaluation and by the README's "Use a trained
policy" recipe: load the module with RLlib's ``RLModule.from_checkpoint`` and
act with ``forward_inference``, which returns the greedy (argmax) action of the
stack's logits.
"""

from __future__ import annotations

from typing import List

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule


def greedy_action(module: RLModule, obs: np.ndarray) -> int:
    """argmax of the stack's logits at one observation."""
    batch = {Columns.OBS: torch.as_tensor(np.asarray(obs)[None])}
    with torch.no_grad():
        return int(module.forward_inference(batch)[Columns.ACTIONS][0])


def greedy_episode_returns(
    module: RLModule, env: gym.Env, num_episodes: int, first_seed: int
) -> List[float]:
    """Returns of ``num_episodes`` greedy episodes; episode i resets with seed first_seed+i."""
    returns = []
    for episode in range(num_episodes):
        obs, _ = env.reset(seed=first_seed + episode)
        episode_return, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(greedy_action(module, obs))
            episode_return += float(reward)
            done = terminated or truncated
        returns.append(episode_return)
    return returns
