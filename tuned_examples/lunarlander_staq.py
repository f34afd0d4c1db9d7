"""StaQ on LunarLander-v3 (needs the box2d extra: ``pip install -e ".[box2d]"``).

Run with Tune (RLlib's example-script flags)::

    python tuned_examples/lunarlander_staq.py --as-test --stop-reward=200

or without Tune, with a progress line per iteration and a final greedy evaluation::

    python tuned_examples/lunarlander_staq.py --no-tune --stop-timesteps=300000

Settings: the paper's classic-control ones (MLP 2x256, reward scale 10, 1/eta = 20,
epsilon 0.05, batch 256, one gradient step per env step) with CartPole's tuned lr (5e-4)
and target period (100), M = 50 and tau annealed over 150k env steps to fit a 300k-step
budget, and 4 vector envs (README "Performance", acting: 0.23 instead of 0.79 ms per env
step at M=1). Greedy evaluation of 10 episodes every 10k env steps.

Measured (docs/results_environments.md): 3 seeds to 300k env steps through
``python -m rllib_staq.compare`` (greedy evaluation of 10 episodes every 20k, each env's first
episode), 2026-12-07. Seed 1 reached 200 at 140k and ended at 257; seed 0 left the hovering
plateau at 220k and reached 199 at 260k; seed 2 hovered throughout (-57 to 6). Last-3-evaluation
mean 132.3 [-3.4, 210.8] over seeds: the issue's target (>= 200 on 3 seeds) is not met. RLlib's
DQN on its CartPole settings, beside it: 222.2 [176.9, 251.2], 200 on all 3 seeds.
Tried and not adopted (same page): M=300 or a 300k replay on the hovering seed 2 (it still
hovered), and tau annealed to 0.1: seeds 0 and 2 reached 200, seed 1 hovered instead
(153.8 [-6.7, 243.2], not established against 0.4).
"""

from rllib_staq import StaQConfig, first_episode_evaluation
from rllib_staq.cli import example_parser
from rllib_staq.envs import require_extra

parser = example_parser(default_reward=200.0, default_timesteps=300_000)


def build_config(num_env_runners: int = 0, seed: int = 0) -> StaQConfig:
    """The tuned LunarLander config (importable by tests without parsing argv)."""
    # gymnasium's own message for a missing Box2D suggests gymnasium[box2d], which fails
    # to build on a fresh machine; the box2d extra installs a wheel.
    require_extra("Box2D", "box2d")
    return (
        StaQConfig()
        .environment("LunarLander-v3")
        .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=4)
        .training(
            stack_size=50,
            kl_coeff=20.0,
            entropy_coeff=[[0, 2.0], [150_000, 0.4]],
            epsilon=0.05,
            reward_scale=10.0,
            env_steps_per_iteration=1000,
            grad_steps_per_iteration=1000,
            train_batch_size_per_learner=256,
            lr=5e-4,
            target_network_update_freq=100,
            replay_buffer_config={"capacity": 50_000},
        )
        .evaluation(
            # Up to 10 x 1000 greedy steps per evaluation: every 10k env steps.
            evaluation_interval=10,
            evaluation_duration=10,
            evaluation_duration_unit="episodes",
            evaluation_config=StaQConfig.overrides(explore=False),
            # Each vector env's first episode (RLlib's own rule counts the first to end).
            custom_evaluation_function=first_episode_evaluation,
        )
        .debugging(seed=seed)
    )


if __name__ == "__main__":
    from rllib_staq.cli import main

    main(parser, build_config)
