import os
import sys

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def tiny_config(**training):
    """A fast CartPole config for functional tests (not for learning)."""
    from rllib_staq import StaQConfig

    settings = dict(
        stack_size=3,
        env_steps_per_iteration=100,
        grad_steps_per_iteration=10,
        train_batch_size_per_learner=32,
        replay_buffer_config={"capacity": 1000},
    )
    settings.update(training)
    return (
        StaQConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0)
        .rl_module(model_config={"fcnet_hiddens": [16, 16]})
        .training(**settings)
        .debugging(seed=0)
    )


def tiny_evaluated_config():
    """tiny_config with a greedy evaluation of one episode every 2 iterations."""
    return tiny_config().evaluation(
        evaluation_interval=2, evaluation_duration=1, evaluation_config={"explore": False}
    )


def cartpole_example():
    """The CartPole tuned example as a module (its parser and build_config)."""
    tuned_examples = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tuned_examples")
    if tuned_examples not in sys.path:
        sys.path.insert(0, tuned_examples)
    import cartpole_staq

    return cartpole_staq


def parse_example_flags(*argv):
    return cartpole_example().parser.parse_args(list(argv))


def one_by_one_greedy_returns(module, make_env, seeds):
    """The reference for the batched evaluation: each episode alone, one observation a step."""
    from rllib_staq.evaluation import greedy_action

    returns = []
    for seed in seeds:
        env = make_env()
        obs, _ = env.reset(seed=seed)
        episode_return, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(greedy_action(module, obs))
            episode_return += float(reward)
            done = terminated or truncated
        returns.append(episode_return)
        env.close()
    return returns
