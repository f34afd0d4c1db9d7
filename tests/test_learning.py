"""StaQ learns on real environments.

The first test runs in the default suite (about a minute here); the full runs are
behind the `learning` marker: ``pytest -m learning``.
"""

import importlib.util
import pathlib

import pytest

from rllib_staq.progress import evaluated_this_iteration, metric_at

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "tuned_examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def greedy_return_within(config, env_steps, stop_return):
    """Best greedy evaluation return within ``env_steps`` (stops at ``stop_return``)."""
    algo = config.build_algo()
    best = float("-inf")
    try:
        for _ in range(-(-env_steps // config.env_steps_per_iteration)):
            result = algo.train()
            if not evaluated_this_iteration(algo, result):
                continue
            eval_return = metric_at(result, "evaluation", "env_runners", "episode_return_mean")
            best = max(best, eval_return)
            if eval_return >= stop_return:
                break
    finally:
        algo.stop()
    return best


def test_staq_learns_cartpole_quickly(ray_session):
    """Greedy return >= 195 within 12k env steps (measured: reached by 5k)."""
    config = load_example("cartpole_staq").build_config(seed=0)
    config.evaluation(evaluation_interval=1)  # stop at the first iteration that passes
    assert greedy_return_within(config, env_steps=12_000, stop_return=195.0) >= 195.0


@pytest.mark.learning
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cartpole_full(ray_session, seed):
    config = load_example("cartpole_staq").build_config(seed=seed)
    assert greedy_return_within(config, env_steps=100_000, stop_return=475.0) >= 475.0


@pytest.mark.learning
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_acrobot_full(ray_session, seed):
    config = load_example("acrobot_staq").build_config(seed=seed)
    assert greedy_return_within(config, env_steps=100_000, stop_return=-100.0) >= -100.0
