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
from ray.rllib.utils.spaces.space_utils import unsquash_action


def greedy_action(module: RLModule, obs: np.ndarray):
    """argmax of the stack's logits at one observation (an int).

    For a Box action space (the continuous module): tanh(mean) of the actor,
    mapped from RLlib's normalised [-1, 1] box to the env's bounds, as RLlib's
    ``NormalizeAndClipActions`` connector does.
    """
    batch = {Columns.OBS: torch.as_tensor(np.asarray(obs)[None])}
    with torch.no_grad():
        action = module.forward_inference(batch)[Columns.ACTIONS][0]
    if isinstance(module.action_space, gym.spaces.Box):
        return unsquash_action(action.numpy(), module.action_space)
    return int(action)


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
