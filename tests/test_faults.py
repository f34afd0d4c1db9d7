"""A broken env: NaN/inf observations or rewards stop training clearly (issue 14, item 4).

The stack never holds a NaN: the learner refuses the transitions before its table,
FQI or the push see them, and the policy refuses a non-finite observation it
would otherwise sample from.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import tiny_config

MODULE_ID = "default_policy"


class BrokenEnv(gym.Env):
    """CartPole-shaped env returning a bad value in one field at global step ``bad_step``."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, config=None):
        super().__init__()
        config = config or {}
        self.bad_step = config.get("bad_step", 50)
        self.field = config.get("field", "reward")  # "reward" or "obs"
        self.bad_value = config.get("bad_value", float("nan"))
        self.steps = 0
        self.episode_steps = 0

    def reset(self, *, seed=None, options=None):
        self.episode_steps = 0
        return np.zeros(4, np.float32), {}

    def step(self, action):
        self.steps += 1
        self.episode_steps += 1
        obs, reward = np.full(4, 0.1 * action, np.float32), 1.0
        bad_now = self.steps == self.bad_step
        terminated = self.episode_steps >= 10
        if bad_now and self.field == "reward":
            reward = self.bad_value
        if bad_now and self.field == "obs":
            obs[1] = self.bad_value
        return obs, reward, terminated, False, {}


def _algo(**env_config):
    return tiny_config().environment(BrokenEnv, env_config=env_config).build_algo()


def _assert_stack_finite(algo, num_pushes):
    module = algo.learner_group._learner.module[MODULE_ID].unwrapped()
    assert int(module.num_pushes) == num_pushes
    for name in module.param_names:
        assert torch.isfinite(module.stack_buffer(name)).all(), name
    for param in module.q_nets.parameters():
        assert torch.isfinite(param).all()


def test_nan_reward_stops_training_naming_env_and_field(ray_session):
    algo = _algo(bad_step=150, field="reward")
    try:
        algo.train()  # steps 1-100 are fine
        with pytest.raises(ValueError, match=r"env 'BrokenEnv'.*NaN or inf `rewards`"):
            algo.train()
        _assert_stack_finite(algo, num_pushes=1)
    finally:
        algo.stop()


def test_inf_observation_refused_by_the_policy_before_sampling(ray_session):
    algo = _algo(bad_step=150, field="obs", bad_value=float("inf"))
    try:
        algo.train()
        with pytest.raises(ValueError, match="NaN or inf reached the policy.*`obs`"):
            algo.train()
        _assert_stack_finite(algo, num_pushes=1)
    finally:
        algo.stop()
