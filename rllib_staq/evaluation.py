"""Greedy rollouts of a StaQ RL module on a plain gymnasium env (no Ray needed).

Used by the main job's final evaluation and by the README's "Use a trained
policy" recipe: load the module with RLlib's ``RLModule.from_checkpoint`` and
act with ``forward_inference``, which returns the greedy (argmax) action of the
stack's logits.
"""

from __future__ import annotations

from typing import Callable, List, Mapping

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.env.multi_agent_env import MultiAgentEnv
from ray.rllib.utils.spaces.space_utils import unsquash_action
from ray.rllib.utils.typing import AgentID, ModuleID


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


def greedy_multi_agent_episode_returns(
    modules: Mapping[ModuleID, RLModule],
    module_of_agent: Callable[[AgentID], ModuleID],
    env: MultiAgentEnv,
    num_episodes: int,
    first_seed: int,
) -> List[float]:
    """Greedy returns of a multi-agent env, summed over its agents per episode.

    The sum is RLlib's multi-agent ``episode_return_mean``. Each agent acts with
    the module ``module_of_agent`` maps it to; episode i resets with seed first_seed+i.
    """
    returns = []
    for episode in range(num_episodes):
        observations, _ = env.reset(seed=first_seed + episode)
        episode_return, done = 0.0, False
        while not done:
            actions = {
                agent_id: greedy_action(modules[module_of_agent(agent_id)], obs)
                for agent_id, obs in observations.items()
            }
            observations, rewards, terminateds, truncateds, _ = env.step(actions)
            episode_return += float(sum(rewards.values()))
            done = terminateds.get("__all__", False) or truncateds.get("__all__", False)
        returns.append(episode_return)
    return returns
