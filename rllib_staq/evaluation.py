"""Greedy rollouts of an RL module on a plain gymnasium env, and an unbiased in-training evaluation.

Used by the main job's final evaluation and by the README's "Use a trained
policy" recipe: load the module with RLlib's ``RLModule.from_checkpoint`` and
act with ``forward_inference``, which returns the greedy (argmax) action of the
stack's logits.

``first_episode_evaluation`` is an RLlib ``custom_evaluation_function`` built on the
same rollouts. RLlib's own episode-count evaluation on an EnvRunner with several vector
envs returns the first episodes to *end*, so short episodes are over-represented and,
where the return grows with the episode's length, the mean reads low (Breakout with 10
episodes on 16 envs: 0.54x, ``benchmarks/evaluation_bias.py``). This function counts
the first episode of each env instead, on fixed env seeds, still stepping the episodes
side by side.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Mapping, Tuple

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.env.multi_agent_env import MultiAgentEnv
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    EPISODE_LEN_MAX,
    EPISODE_LEN_MEAN,
    EPISODE_LEN_MIN,
    EPISODE_RETURN_MAX,
    EPISODE_RETURN_MEAN,
    EPISODE_RETURN_MIN,
    EVALUATION_RESULTS,
    NUM_EPISODES,
)
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger
from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action
from ray.rllib.utils.torch_utils import convert_to_torch_tensor
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


def greedy_actions(
    module: RLModule,
    observations: np.ndarray,
    normalize_actions: bool = True,
    clip_actions: bool = False,
) -> np.ndarray:
    """``greedy_action`` for a batch: observations (B, *obs_shape) -> actions (B,) or (B, d).

    Any single-agent RLModule of RLlib's default connector pipelines (StaQ's, DQN's, PPO's,
    SAC's), as an EnvRunner with ``explore=False`` acts: ``NumpyToTensor`` (float64 becomes
    float32), ``forward_inference``, then ``GetActions`` (the module's ``ACTIONS``, else the
    deterministic sample of its inference distribution), then ``NormalizeAndClipActions`` for
    a Box (``normalize_actions``: from [-1, 1] to the bounds; else ``clip_actions``: clipped).
    """
    with torch.no_grad():
        batch = {Columns.OBS: convert_to_torch_tensor(np.asarray(observations))}
        outputs = module.forward_inference(batch)
        actions = outputs.get(Columns.ACTIONS)
        if actions is None:
            distribution = module.get_inference_action_dist_cls().from_logits(
                outputs[Columns.ACTION_DIST_INPUTS]
            )
            actions = distribution.to_deterministic().sample()
    actions = actions.numpy()
    if isinstance(module.action_space, gym.spaces.Box):
        # RLlib's unsquash_action and clip_action broadcast the bounds over the batch.
        if normalize_actions:
            return unsquash_action(actions, module.action_space)
        return clip_action(actions, module.action_space) if clip_actions else actions
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
    seeds = list(range(first_seed, first_seed + num_episodes))
    returns, _ = greedy_episodes(module, make_env, seeds, max_in_parallel)
    return returns


def greedy_episodes(
    module: RLModule,
    make_env: Callable[[], gym.Env],
    seeds: List[int],
    max_in_parallel: int = MAX_EPISODES_IN_PARALLEL,
    **action_settings: bool,
) -> Tuple[List[float], List[int]]:
    """(returns, lengths) of one greedy episode per seed, in the order of ``seeds``.

    ``action_settings``: ``normalize_actions`` and ``clip_actions`` of ``greedy_actions``.
    """
    returns: List[float] = []
    lengths: List[int] = []
    for start in range(0, len(seeds), max_in_parallel):
        chunk_returns, chunk_lengths = _first_episodes(
            module, make_env, seeds[start : start + max_in_parallel], action_settings
        )
        returns.extend(chunk_returns)
        lengths.extend(chunk_lengths)
    return returns, lengths


def _first_episodes(
    module: RLModule,
    make_env: Callable[[], gym.Env],
    seeds: List[int],
    action_settings: Dict[str, bool],
) -> Tuple[List[float], List[int]]:
    """The greedy return and length of one episode per seed, the episodes stepped side by side."""
    envs = gym.vector.SyncVectorEnv([make_env] * len(seeds))
    try:
        observations, _ = envs.reset(seed=seeds)
        episode_returns = np.zeros(len(seeds))
        episode_lengths = np.zeros(len(seeds), dtype=np.int64)
        running = np.ones(len(seeds), dtype=bool)
        while running.any():
            observations, rewards, terminated, truncated, _ = envs.step(
                greedy_actions(module, observations, **action_settings)
            )
            episode_returns += np.where(running, rewards, 0.0)
            episode_lengths += running
            running &= ~(terminated | truncated)
        return episode_returns.tolist(), episode_lengths.tolist()
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


# The in-training evaluations' episodes reset with env seeds from here on: the evaluation at
# iteration i plays [IN_TRAINING_EVAL_FIRST_SEED + i * n, ... + n) for n episodes, so no two
# evaluations of a run share a start, and runs of different seeds are evaluated on the same
# starts (paired). The main job's final evaluation (cli.FINAL_EVAL_FIRST_SEED) is above them.
IN_TRAINING_EVAL_FIRST_SEED = 1_000_000


def first_episode_evaluation(algorithm, eval_env_runner_group) -> Tuple[Dict, int, int]:
    """An RLlib ``custom_evaluation_function``: ``evaluation_duration`` greedy episodes, each
    the first episode of its env, on fixed env seeds.

    Set it with ``config.evaluation(custom_evaluation_function=first_episode_evaluation)``.
    It plays the episodes with ``greedy_episodes`` (side by side, up to
    ``MAX_EPISODES_IN_PARALLEL`` at a time) on the evaluation EnvRunners' modules (the local
    one, or the healthy remote ones, the episodes split between them), and logs RLlib's
    episode metrics (``episode_return_mean``, ``_min``, ``_max``, ``episode_len_*``,
    ``num_episodes``) under ``evaluation/env_runners`` like RLlib's own evaluation. The
    settings it cannot honour are refused (``first_episode_evaluation_errors``).
    """
    errors = first_episode_evaluation_errors(algorithm.config)
    if errors:
        raise ValueError(errors[0])
    num_episodes = algorithm.config.evaluation_duration
    first_seed = IN_TRAINING_EVAL_FIRST_SEED + algorithm.iteration * num_episodes
    seeds = list(range(first_seed, first_seed + num_episodes))
    # The evaluation EnvRunners' settings: `evaluation_config` may override these.
    evaluation_config = algorithm.evaluation_config
    play = functools.partial(
        _play_on_env_runner,
        make_env=functools.partial(algorithm.env_creator, dict(evaluation_config.env_config)),
        action_settings=dict(
            normalize_actions=evaluation_config.normalize_actions,
            clip_actions=evaluation_config.clip_actions,
        ),
    )
    if eval_env_runner_group.num_remote_env_runners() == 0:
        episodes = [play(eval_env_runner_group.local_env_runner, seeds=seeds)]
    else:
        runner_ids = eval_env_runner_group.healthy_worker_ids()
        if not runner_ids:
            raise RuntimeError("first_episode_evaluation: no healthy evaluation EnvRunner.")
        shares = np.array_split(np.asarray(seeds), len(runner_ids))
        episodes = eval_env_runner_group.foreach_env_runner(
            [functools.partial(play, seeds=share.tolist()) for share in shares],
            local_env_runner=False,
            remote_worker_ids=runner_ids,
        )
    returns = [ret for runner_returns, _ in episodes for ret in runner_returns]
    lengths = [length for _, runner_lengths in episodes for length in runner_lengths]
    algorithm.metrics.aggregate(
        [episode_metrics(returns, lengths)], key=(EVALUATION_RESULTS, ENV_RUNNER_RESULTS)
    )
    return {}, int(sum(lengths)), int(sum(lengths))


def _play_on_env_runner(
    env_runner, *, make_env: Callable[[], gym.Env], seeds: List[int], action_settings
) -> Tuple[List[float], List[int]]:
    module = env_runner.module
    if module.is_stateful():
        raise ValueError(
            "first_episode_evaluation: the RL module is stateful (a recurrent network); it "
            "supports stateless modules only. Use RLlib's own evaluation (no "
            "custom_evaluation_function)."
        )
    return greedy_episodes(module, make_env, seeds, **action_settings)


def episode_metrics(returns: List[float], lengths: List[int]) -> Dict[str, Any]:
    """RLlib's evaluation episode metrics of these episodes, reduced (one MetricsLogger result)."""
    metrics = MetricsLogger()
    window = len(returns)
    for episode_return, length in zip(returns, lengths):
        metrics.log_value(EPISODE_RETURN_MEAN, episode_return, window=window)
        metrics.log_value(EPISODE_RETURN_MIN, episode_return, reduce="min", window=window)
        metrics.log_value(EPISODE_RETURN_MAX, episode_return, reduce="max", window=window)
        metrics.log_value(EPISODE_LEN_MEAN, length, window=window)
        metrics.log_value(EPISODE_LEN_MIN, length, reduce="min", window=window)
        metrics.log_value(EPISODE_LEN_MAX, length, reduce="max", window=window)
    metrics.log_value(NUM_EPISODES, len(returns), reduce="sum")
    return metrics.reduce()


def first_episode_evaluation_errors(config) -> List[str]:
    """Why ``config`` cannot be evaluated by ``first_episode_evaluation`` (empty if it can).

    Its rollouts act as RLlib's default connector pipelines do, greedily, one env per
    episode; a setting that asks for something else is refused rather than ignored.
    """
    prefix = "first_episode_evaluation (custom_evaluation_function):"
    errors = []
    if config.is_multi_agent:
        errors.append(
            f"{prefix} single-agent configs only; a multi-agent config uses RLlib's own "
            "evaluation (no custom_evaluation_function)."
        )
    if config.evaluation_duration_unit != "episodes":
        errors.append(
            f"{prefix} `evaluation_duration_unit` must be 'episodes', got "
            f"{config.evaluation_duration_unit!r}."
        )
    if not isinstance(config.evaluation_duration, int) or config.evaluation_duration < 1:
        errors.append(
            f"{prefix} `evaluation_duration` must be an int >= 1 (episodes), got "
            f"{config.evaluation_duration!r}."
        )
    if config.evaluation_parallel_to_training:
        errors.append(f"{prefix} `evaluation_parallel_to_training` must be False, got True.")
    evaluation_config = config.get_evaluation_config_object()
    if evaluation_config.env != config.env:
        errors.append(
            f"{prefix} the evaluation env must be the training env ({config.env!r}), got "
            f"{evaluation_config.env!r} in `evaluation_config`; an `env_config` override is "
            "honoured."
        )
    if evaluation_config.explore is not False:
        errors.append(
            f"{prefix} its episodes are greedy: set `evaluation_config` explore=False, got "
            f"explore={evaluation_config.explore!r}."
        )
    for pipeline in ("env_to_module", "module_to_env"):
        setting = f"{pipeline}_connector"
        # AlgorithmConfig keeps `env_runners(<setting>=...)` in a private attribute.
        custom_connector = getattr(evaluation_config, f"_{setting}") is not None
        defaults = getattr(evaluation_config, f"add_default_connectors_to_{pipeline}_pipeline")
        if custom_connector or not defaults:
            errors.append(
                f"{prefix} `{setting}` must be None with the default pipeline (its rollouts "
                "apply RLlib's default connectors only); use RLlib's own evaluation with "
                "custom connectors."
            )
    return errors
