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
    action = greedy_actions(module, np.asarray(obs)[None])[0]
    return action if isinstance(module.action_space, gym.spaces.Box) else int(action)


# Episodes stepped side by side in one gymnasium vector env: one batched forward reads every
# stack member's weights once for all of them: 20 Freeway episodes at M = 50 ran 2.1x faster
# this way than one after another (README, Performance: "Final evaluation").
MAX_EPISODES_IN_PARALLEL = 20


def greedy_actions(module: RLModule, observations: np.ndarray) -> np.ndarray:
    """``greedy_action`` for a batch: observations (B, *obs_shape) -> actions (B,) or (B, d)."""
    with torch.no_grad():
        batch = {Columns.OBS: torch.as_tensor(np.asarray(observations))}
        actions = module.forward_inference(batch)[Columns.ACTIONS].numpy()
    if isinstance(module.action_space, gym.spaces.Box):
        # RLlib's unsquash_action broadcasts the box's bounds over the batch dimension.
        return unsquash_action(actions, module.action_space)
    return actions.astype(np.int64)


def greedy_episode_returns(
    module: RLModule,
    make_env: Callable[[], gym.Env],
    num_episodes: int,
    first_seed: int,
    max_in_parallel: int = MAX_EPISODES_IN_PARALLEL,
) -> List[float]:
    """Returns of ``num_episodes`` greedy episodes; episode i resets with seed first_seed+i.

    Up to ``max_in_parallel`` episodes run in a ``SyncVectorEnv`` of ``make_env()``
    copies, one batched forward per step; each keeps the return of its first episode
    (the vector env's automatic resets after it are not counted). The returns are those
    of running the episodes one by one (``max_in_parallel=1``).
    """
    returns: List[float] = []
    while len(returns) < num_episodes:
        num_parallel = min(max_in_parallel, num_episodes - len(returns))
        seeds = [first_seed + len(returns) + i for i in range(num_parallel)]
        returns.extend(_first_episode_returns(module, make_env, seeds))
    return returns


def _first_episode_returns(
    module: RLModule, make_env: Callable[[], gym.Env], seeds: List[int]
) -> List[float]:
    """The greedy return of one episode per seed, the episodes stepped side by side."""
    envs = gym.vector.SyncVectorEnv([make_env] * len(seeds))
    try:
        observations, _ = envs.reset(seed=seeds)
        episode_returns = np.zeros(len(seeds))
        running = np.ones(len(seeds), dtype=bool)
        while running.any():
            observations, rewards, terminated, truncated, _ = envs.step(
                greedy_actions(module, observations)
            )
            episode_returns += np.where(running, rewards, 0.0)
            running &= ~(terminated | truncated)
        return episode_returns.tolist()
    finally:
        envs.close()


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
