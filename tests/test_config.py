"""Config validation: bad input raises a ValueError naming the setting."""

import gymnasium as gym
import pytest

from rllib_staq import StaQ, StaQConfig

from conftest import tiny_config


@pytest.mark.parametrize(
    "settings,match",
    [
        (dict(stack_size=0), "stack_size"),
        (dict(epsilon=1.5), "epsilon"),
        (dict(epsilon=[[0, 0.5], [100, -0.1]]), "epsilon"),
        (dict(kl_coeff=0.0), "kl_coeff"),
        (dict(entropy_coeff=-1.0), "entropy_coeff"),
        (dict(entropy_coeff=[[0, 1.0], [10, 0.0]]), "entropy_coeff"),
        (dict(reward_scale=-2.0), "reward_scale"),
        (dict(lr=0.0), "lr"),
        (dict(ensemble_target="median"), "ensemble_target"),
        (dict(num_q_networks=0), "num_q_networks"),
        (dict(tau=0.0), "tau"),
        (dict(train_batch_size_per_learner=2000), "train_batch_size_per_learner"),
        (dict(replay_buffer_config={"capacity": 0}), "capacity"),
    ],
)
def test_invalid_settings_raise(settings, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**settings).validate()


def test_tune_search_spaces_are_checked_value_by_value():
    from ray import tune

    config = StaQConfig().training(
        stack_size=tune.grid_search([1, 50]),
        kl_coeff=tune.uniform(1.0, 20.0),  # sampled per trial, checked there by validate()
        ensemble_target=tune.choice(["mean", "min"]),
    )
    assert config.stack_size == {"grid_search": [1, 50]}
    with pytest.raises(ValueError, match=r"`stack_size` \(a value of its Tune search space\)"):
        StaQConfig().training(stack_size=tune.grid_search([1, 0]))
    with pytest.raises(ValueError, match="got 'max'"):
        StaQConfig().training(ensemble_target=tune.choice(["mean", "max"]))
    with pytest.raises(ValueError, match="stack_size"):  # unresolved, it is no value
        tiny_config(stack_size=tune.grid_search([1, 2])).validate()


def test_error_lists_allowed_values():
    with pytest.raises(ValueError, match=r"one of \('mean', 'min'\)"):
        tiny_config(ensemble_target="max").validate()


def test_defaults_are_the_official_ones():
    config = StaQConfig()
    assert config.stack_size == 300
    assert config.kl_coeff == 20.0
    assert config.entropy_coeff == [[0, 2.0], [500_000, 0.4]]
    assert config.epsilon == 0.05
    assert (config.env_steps_per_iteration, config.grad_steps_per_iteration) == (5000, 5000)
    assert (config.train_batch_size_per_learner, config.lr, config.gamma) == (256, 1e-4, 0.99)
    assert (config.target_network_update_freq, config.tau) == (200, 1.0)
    assert (config.num_q_networks, config.ensemble_target) == (2, "mean")
    assert config.reward_scale == 10.0
    assert config.replay_buffer_config["capacity"] == 50_000
    config.validate()


def test_config_round_trips_as_dict():
    config = tiny_config(stack_size=7, entropy_coeff=[[0, 1.0], [10, 0.5]])
    restored = StaQConfig.from_dict(config.to_dict())
    assert restored.stack_size == 7
    assert restored.entropy_coeff == [[0, 1.0], [10, 0.5]]


def test_rollout_fragments_add_up_to_env_steps_per_iteration():
    config = tiny_config(env_steps_per_iteration=1001).env_runners(
        num_env_runners=3, num_envs_per_env_runner=2
    )
    total = sum(config.get_rollout_fragment_length(worker_index=i) * 2 for i in range(1, 4))
    # Exact up to the granularity of one step per env of a runner.
    assert 1001 <= total < 1001 + 6
    assert tiny_config(env_steps_per_iteration=500).get_rollout_fragment_length() == 500


class _MatrixActionEnv(gym.Env):
    """A Box action space StaQ refuses: not 1-D (issue 15 takes shape (d,) only)."""

    observation_space = gym.spaces.Box(-1, 1, (3,))
    action_space = gym.spaces.Box(-1, 1, (1, 2))

    def __init__(self, config=None):
        super().__init__()

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def test_unsupported_action_space_rejected_before_building(ray_session):
    with pytest.raises(ValueError, match="1-D Box"):
        tiny_config().environment(_MatrixActionEnv).build_algo()
    with pytest.raises(ValueError, match="Discrete"):
        tiny_config().environment(
            observation_space=gym.spaces.Box(-1, 1, (3,)),
            action_space=gym.spaces.MultiDiscrete([2, 2]),
        ).validate()
    assert StaQ.get_default_config().algo_class is StaQ
