"""Short end-to-end runs: local and remote EnvRunners, vector envs, Tune by name."""

import math

import pytest
from ray import tune
from ray.rllib.utils.test_utils import check_train_results_new_api_stack

from conftest import tiny_config


def test_local_runner_train_results(ray_session):
    algo = tiny_config().build_algo()
    try:
        result = algo.train()
        check_train_results_new_api_stack(result)
        assert result["env_runners"]["num_env_steps_sampled_lifetime"] == 100
        for timer in ("env_runner_sampling_timer", "learner_update_timer", "synch_weights"):
            assert timer in result["timers"]
    finally:
        algo.stop()


def test_remote_runners_with_vector_envs(ray_session):
    config = tiny_config(env_steps_per_iteration=120).env_runners(
        num_env_runners=1, num_envs_per_env_runner=3
    )
    algo = config.build_algo()
    try:
        for _ in range(2):
            result = algo.train()
        # Vector envs may overshoot by at most one step per env and iteration.
        assert 240 <= result["env_runners"]["num_env_steps_sampled_lifetime"] <= 240 + 2 * 3
        assert result["learners"]["default_policy"]["stack_fill"] == 2
        assert math.isfinite(result["learners"]["default_policy"]["td_loss"])
    finally:
        algo.stop()


def test_tune_by_registered_name(ray_session, tmp_path):
    import rllib_staq  # noqa: F401  (registers "StaQ")

    tuner = tune.Tuner(
        "StaQ",
        param_space=tiny_config(),
        run_config=tune.RunConfig(
            stop={"training_iteration": 1}, verbose=0, storage_path=str(tmp_path)
        ),
    )
    results = tuner.fit()
    assert not results.errors
    assert results[0].metrics["training_iteration"] == 1


def test_tune_search_spaces_over_staq_settings(ray_session, tmp_path):
    """A grid over a StaQ setting (as over RLlib's lr) reaches each trial's module."""
    import rllib_staq  # noqa: F401  (registers "StaQ")

    tuner = tune.Tuner(
        "StaQ",
        param_space=tiny_config(stack_size=tune.grid_search([1, 2]), kl_coeff=tune.choice([5.0])),
        run_config=tune.RunConfig(
            stop={"training_iteration": 2}, verbose=0, storage_path=str(tmp_path)
        ),
    )
    results = tuner.fit()
    assert not results.errors
    fills = sorted(r.metrics["learners"]["default_policy"]["stack_fill"] for r in results)
    assert fills == [1, 2]  # M=1 keeps one of its two pushes, M=2 both


@pytest.mark.slow
def test_two_learners_keep_identical_stacks(ray_session):
    import numpy as np

    config = tiny_config().learners(num_learners=2)
    algo = config.build_algo()
    try:
        algo.train()
        algo.train()
        stacks = [
            result.get()
            for result in algo.learner_group.foreach_learner(
                lambda learner: learner.module["default_policy"].unwrapped().get_state()
            )
        ]
        assert len(stacks) == 2
        for key in stacks[0]:
            np.testing.assert_allclose(
                np.asarray(stacks[0][key]), np.asarray(stacks[1][key]), err_msg=key
            )
    finally:
        algo.stop()
