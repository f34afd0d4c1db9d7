"""Same seed, num_env_runners=0: identical weights and metrics in two runs."""

import numpy as np

from conftest import tiny_config


def _run(seed):
    algo = tiny_config().debugging(seed=seed).build_algo()
    try:
        results = [algo.train() for _ in range(2)]
        state = algo.learner_group._learner.module["default_policy"].unwrapped().get_state()
        return state, results[-1]["learners"]["default_policy"]
    finally:
        algo.stop()


def test_same_seed_same_weights_and_metrics(ray_session):
    state_a, metrics_a = _run(seed=3)
    state_b, metrics_b = _run(seed=3)
    for key in state_a:
        np.testing.assert_array_equal(
            np.asarray(state_a[key]), np.asarray(state_b[key]), err_msg=key
        )
    for key in ("td_loss", "mean_q", "policy_entropy", "kl_pi_k_pi_k_plus_1"):
        assert metrics_a[key] == metrics_b[key], key
    state_c, _ = _run(seed=4)
    assert not np.array_equal(
        np.asarray(state_a["stack_head_weight"]), np.asarray(state_c["stack_head_weight"])
    )
