"""Every StaQ setting reaches the algorithm or is refused, naming it (issue 14, item 3).

RLlib's ``AlgorithmConfig.get_state()`` drops attributes equal to -1 (its
``DEPRECATED_VALUE``) and ``build_algo()`` rebuilds the config from that state:
without StaQ's own ``get_state`` a setting of -1 silently became the default.
"""

import math

import pytest
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

from rllib_staq import StaQConfig
from rllib_staq.continuous import BOX_ONLY_DEFAULTS
from rllib_staq.settings import SETTING_CHECKS

from conftest import tiny_config

# StaQ's own fields, and the RLlib ones whose values StaQ restricts.
STAQ_FIELDS = sorted(set(vars(StaQConfig())) - set(vars(AlgorithmConfig())))
CHECKED_RLLIB_FIELDS = ["gamma", "lr", "train_batch_size_per_learner"]
ALL_FIELDS = STAQ_FIELDS + CHECKED_RLLIB_FIELDS

# A valid non-default value per field, to show each one survives the round trip.
NON_DEFAULTS = {
    "stack_size": 4,
    "kl_coeff": 3.5,
    "entropy_coeff": 0.7,
    "scale_entropy_by_log_actions": False,
    "weight_correction": False,
    "epsilon": [[0, 0.3], [500, 0.1]],
    "env_steps_per_iteration": 90,
    "grad_steps_per_iteration": 7,
    "train_batch_size_per_learner": 16,
    "lr": 3e-4,
    "gamma": 0.95,
    "target_network_update_freq": 3,
    "tau": 0.5,
    "num_q_networks": 3,
    "ensemble_target": "min",
    "reward_scale": 2.0,
    "expected_next_value": True,
    "n_step": 3,
    "replay_buffer_config": {"type": "EpisodeReplayBuffer", "capacity": 900},
    "store_buffer_in_checkpoints": True,
    "exact_refresh_interval": 11,
    "intra_op_threads": 1,
    "stack_dtype": "bfloat16",
    "fqi_matmul_dtype": "bfloat16",
    # Box action spaces only (refused for CartPole: the build test leaves them out).
    "actor_lr": 1e-3,
    "actor_steps_per_iteration": 7,
    "actor_fit": "weighted_ml",
    "weighted_ml_states": 512,
    "weighted_ml_actions": 8,
    "weighted_ml_uniform_fraction": 0.25,
}


def test_every_staq_field_is_checked():
    # A new field without a check would escape this file's tests.
    assert set(STAQ_FIELDS) <= set(SETTING_CHECKS), set(STAQ_FIELDS) - set(SETTING_CHECKS)
    assert set(ALL_FIELDS) <= set(NON_DEFAULTS), set(ALL_FIELDS) - set(NON_DEFAULTS)


@pytest.mark.parametrize("name", ALL_FIELDS)
def test_minus_one_refused_by_training(name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        tiny_config(**{name: -1})


@pytest.mark.parametrize("name", ALL_FIELDS)
def test_minus_one_set_as_attribute_refused_by_build_algo(name):
    """The config's state round trip keeps -1, so validate() sees and refuses it."""
    config = tiny_config()
    setattr(config, name, -1)
    with pytest.raises(ValueError, match=f"`{name}`"):
        config.build_algo()


@pytest.mark.parametrize("name", ALL_FIELDS)
def test_minus_one_survives_the_config_state_round_trip(name):
    config = tiny_config()
    setattr(config, name, -1)
    assert getattr(StaQConfig.from_state(config.get_state()), name) == -1


def test_rllib_deprecated_fields_still_dropped_from_state():
    # Only values that differ from -1 by default are kept; RLlib's own
    # deprecated markers (default -1) stay out of the state as RLlib wants.
    state = tiny_config().get_state()
    assert "buffer_size" not in state and "learning_starts" not in state


@pytest.mark.parametrize(
    "name,value",
    [
        ("stack_size", 2.5),
        ("stack_size", True),
        ("stack_size", "3"),
        ("num_q_networks", 0),
        ("kl_coeff", math.inf),
        ("kl_coeff", "20"),
        ("reward_scale", math.nan),
        ("entropy_coeff", [[10, 1.0], [20, 0.5]]),  # schedule must start at 0
        ("entropy_coeff", [[0, 1.0], [0, 0.5]]),  # steps must increase
        ("entropy_coeff", [[0]]),
        ("epsilon", math.nan),
        ("epsilon", [[0, 0.1], [10, 1.5]]),
        ("tau", 1.5),
        ("gamma", "0.99"),
        ("gamma", 1.01),
        ("lr", [[0, 1e-3], [100, 1e-4]]),  # FQI's Adam takes one fixed lr
        ("weight_correction", "yes"),
        ("scale_entropy_by_log_actions", 1),
        ("expected_next_value", None),
        ("n_step", 0),
        ("n_step", (2, 5)),  # RLlib's DQN samples n per batch; StaQ takes one n
        ("store_buffer_in_checkpoints", "False"),
        ("ensemble_target", "max"),
        ("exact_refresh_interval", 0),
        ("grad_steps_per_iteration", 10.0),
        ("replay_buffer_config", 5000),
        ("intra_op_threads", 0),
    ],
)
def test_wrong_values_refused_naming_the_setting(name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        tiny_config(**{name: value})
    config = tiny_config()
    setattr(config, name, value)
    with pytest.raises(ValueError, match=f"`{name}`"):
        config.validate()


@pytest.mark.parametrize(
    "replay_buffer_config,match",
    [
        ({"type": "PrioritizedEpisodeReplayBuffer"}, "EpisodeReplayBuffer"),
        ({"capacity": -1}, r"replay_buffer_config\['capacity'\]"),
        ({"capacity": 10.5}, r"replay_buffer_config\['capacity'\]"),
        ({"alpha": 0.6}, "alpha"),
    ],
)
def test_replay_buffer_config_staq_cannot_honour_is_refused(replay_buffer_config, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(replay_buffer_config=replay_buffer_config)


def test_prioritized_buffer_error_names_the_allowed_types():
    with pytest.raises(ValueError, match=r"one of \('EpisodeReplayBuffer', 'MultiAgentEpisode"):
        tiny_config(replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer"})


def _non_default_config(left_out=()):
    left_out = {"intra_op_threads", *left_out}
    config = tiny_config(**{k: v for k, v in NON_DEFAULTS.items() if k not in left_out})
    config.intra_op_threads = NON_DEFAULTS["intra_op_threads"]
    return config


def test_non_default_values_survive_state_and_dict_round_trips():
    config = _non_default_config()
    from_state = StaQConfig.from_state(config.get_state())
    from_dict = StaQConfig.from_dict(config.to_dict())
    for name, value in NON_DEFAULTS.items():
        assert getattr(from_state, name) == value, name
        assert getattr(from_dict, name) == value, name


def test_non_default_values_reach_the_built_algorithm(ray_session):
    algo = _non_default_config(left_out=BOX_ONLY_DEFAULTS).build_algo()
    try:
        for name, value in NON_DEFAULTS.items():
            if name not in BOX_ONLY_DEFAULTS:
                assert getattr(algo.config, name) == value, name
        module = algo.learner_group._learner.module["default_policy"].unwrapped()
        assert (module.stack_size, module.num_q_networks) == (4, 3)
        assert module.current_epsilon(500) == pytest.approx(0.1)
    finally:
        algo.stop()


def test_per_module_override_refused_naming_setting_and_module():
    config = tiny_config().multi_agent(
        policies={"p0", "p1"}, policy_mapping_fn=lambda agent_id, episode, **kw: "p0"
    )
    bad = config.copy().rl_module(
        algorithm_config_overrides_per_module={"p1": StaQConfig.overrides(kl_coeff=-1)}
    )
    with pytest.raises(ValueError, match=r"`kl_coeff` \(module 'p1'\)"):
        bad.validate()
    wide = config.copy().rl_module(
        algorithm_config_overrides_per_module={
            "p1": StaQConfig.overrides(env_steps_per_iteration=50)
        }
    )
    with pytest.raises(ValueError, match="env_steps_per_iteration.*whole algorithm"):
        wide.validate()


def test_evaluation_override_of_minus_one_refused():
    config = tiny_config().evaluation(
        evaluation_interval=1, evaluation_config=StaQConfig.overrides(epsilon=-1)
    )
    with pytest.raises(ValueError, match="`epsilon`"):
        config.get_evaluation_config_object().validate()
