"""The in-training evaluation that counts each env's first episode (first_episode_evaluation)."""

import functools
import logging

import gymnasium as gym
import numpy as np
import pytest

from rllib_staq import evaluation, first_episode_evaluation

from conftest import one_by_one_greedy_returns, tiny_config


class SeededLengthEnv(gym.Env):
    """Reward 1 per step; the episode lasts 1 + (reset seed) % 23 steps: return = length.

    The return of an episode is known from its seed alone, whatever the policy does. On
    RLlib's own evaluation the short episodes end first, which is what the bias is about.
    """

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, config=None):
        self._extra_steps = (config or {}).get("extra_steps", 0)
        self._steps_left = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        seed = seed if seed is not None else int(self.np_random.integers(23))
        self._steps_left = 1 + seed % 23 + self._extra_steps
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self._steps_left -= 1
        return np.zeros(2, np.float32), 1.0, self._steps_left == 0, False, {}


def evaluated(config, episodes, **evaluation_settings):
    settings = dict(
        evaluation_interval=1,
        evaluation_duration=episodes,
        evaluation_duration_unit="episodes",
        evaluation_config={"explore": False},
        custom_evaluation_function=first_episode_evaluation,
    )
    settings.update(evaluation_settings)
    return config.evaluation(**settings)


def seeds_of_evaluation(iteration, episodes):
    first = evaluation.IN_TRAINING_EVAL_FIRST_SEED + iteration * episodes
    return list(range(first, first + episodes))


def eval_metrics(result):
    return result["evaluation"]["env_runners"]


def test_each_env_counts_its_first_episode_on_the_evaluations_seeds(ray_session):
    config = evaluated(
        tiny_config().environment(SeededLengthEnv).env_runners(num_envs_per_env_runner=4),
        6,
        # The evaluation EnvRunners' env_config (here: 5 steps longer) is the one played.
        evaluation_config={"explore": False, "env_config": {"extra_steps": 5}},
    )
    algo = config.build_algo()
    try:
        for iteration in range(2):
            metrics = eval_metrics(algo.train())
            lengths = [6 + seed % 23 for seed in seeds_of_evaluation(iteration, 6)]
            assert metrics["episode_return_mean"] == pytest.approx(np.mean(lengths))
            assert metrics["episode_return_min"] == min(lengths)
            assert metrics["episode_return_max"] == max(lengths)
            assert metrics["episode_len_mean"] == pytest.approx(np.mean(lengths))
            assert metrics["num_episodes"] == 6
    finally:
        algo.stop()


def test_the_reported_mean_is_that_of_the_greedy_episodes_of_the_synced_module(ray_session):
    """CartPole, a learning module: the mean equals episodes played one by one afterwards."""
    config = evaluated(tiny_config().env_runners(num_envs_per_env_runner=2), 3)
    algo = config.build_algo()
    try:
        for iteration in range(3):
            metrics = eval_metrics(algo.train())
            expected = one_by_one_greedy_returns(
                algo.eval_env_runner.module,
                functools.partial(gym.make, "CartPole-v1"),
                seeds_of_evaluation(iteration, 3),
            )
            assert metrics["episode_return_mean"] == pytest.approx(np.mean(expected))
    finally:
        algo.stop()


def test_remote_evaluation_env_runners_share_the_episodes(ray_session):
    import sys

    from ray import cloudpickle

    # The remote EnvRunners cannot import this test module: its env class travels by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    config = evaluated(tiny_config().environment(SeededLengthEnv), 5, evaluation_num_env_runners=2)
    algo = config.build_algo()
    try:
        metrics = eval_metrics(algo.train())
        lengths = [1 + seed % 23 for seed in seeds_of_evaluation(0, 5)]
        assert metrics["episode_return_mean"] == pytest.approx(np.mean(lengths))
        assert metrics["num_episodes"] == 5
    finally:
        algo.stop()


@pytest.mark.parametrize(
    "settings, named",
    [
        (dict(evaluation_config={"explore": True}), "explore"),
        (dict(evaluation_duration_unit="timesteps"), "evaluation_duration_unit"),
        (dict(evaluation_duration="auto"), "evaluation_duration"),
        (dict(evaluation_parallel_to_training=True), "evaluation_parallel_to_training"),
        (dict(evaluation_config={"explore": False, "env": "Acrobot-v1"}), "evaluation env"),
    ],
)
def test_settings_it_cannot_honour_are_refused_at_validation(settings, named):
    config = evaluated(tiny_config(), 3, **settings)
    with pytest.raises(ValueError, match=named):
        config.validate()


@pytest.mark.parametrize("setting", ["env_to_module_connector", "module_to_env_connector"])
def test_custom_connectors_are_refused_at_validation(setting):
    config = evaluated(tiny_config().env_runners(**{setting: lambda *args: []}), 3)
    with pytest.raises(ValueError, match=setting):
        config.validate()


def test_multi_agent_configs_are_refused():
    from ray.rllib.examples.envs.classes.multi_agent import MultiAgentCartPole

    config = evaluated(
        tiny_config()
        .environment(MultiAgentCartPole, env_config={"num_agents": 2})
        .multi_agent(policies={"p0"}, policy_mapping_fn=lambda agent_id, episode, **kw: "p0"),
        3,
    )
    with pytest.raises(ValueError, match="single-agent"):
        config.validate()


@pytest.mark.parametrize("algo_name", ["DQN", "PPO", "SAC"])
def test_greedy_actions_of_rllibs_modules_are_their_argmax(algo_name):
    """DQN returns actions; PPO and SAC return logits, whose deterministic sample is the argmax."""
    import torch
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.algorithms.sac import SACConfig
    from ray.rllib.core.columns import Columns

    configs = {"DQN": DQNConfig, "PPO": PPOConfig, "SAC": SACConfig}
    config = configs[algo_name]().environment("CartPole-v1")
    module = config.get_rl_module_spec(env=gym.make("CartPole-v1")).build()
    # float64, as gymnasium's robots emit: converted to float32 as RLlib's NumpyToTensor does.
    observations = np.random.default_rng(0).normal(size=(64, 4))
    actions = evaluation.greedy_actions(module, observations)
    batch = {Columns.OBS: torch.as_tensor(observations, dtype=torch.float32)}
    with torch.no_grad():
        if algo_name == "DQN":
            scores = module.compute_q_values(batch)["qf_preds"]
        else:
            scores = module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS]
    assert actions.dtype == np.int64
    np.testing.assert_array_equal(actions, scores.argmax(-1).numpy())


def test_rllibs_biased_episode_evaluation_is_reported_once(caplog):
    from ray.util.debug import reset_log_once

    reset_log_once("staq_biased_episode_evaluation")
    config = (
        tiny_config()
        .env_runners(num_envs_per_env_runner=4)
        .evaluation(
            evaluation_interval=1, evaluation_duration=10, evaluation_config={"explore": False}
        )
    )
    with caplog.at_level(logging.WARNING, logger="rllib_staq.staq"):
        config.validate()
        config.validate()
    warnings = [record for record in caplog.records if "first_episode_evaluation" in record.message]
    assert len(warnings) == 1
