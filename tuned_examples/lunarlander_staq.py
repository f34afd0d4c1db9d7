"""StaQ on LunarLander-v3 (needs the box2d extra: ``pip install -e ".[box2d]"``).

Run with Tune (RLlib's example-script flags)::

    python tuned_examples/lunarlander_staq.py --as-test --stop-reward=200

or without Tune, with a progress line per iteration and a final greedy evaluation::

    python tuned_examples/lunarlander_staq.py --no-tune --stop-timesteps=300000

Settings: the paper's classic-control ones (MLP 2x256, reward scale 10, epsilon 0.05,
batch 256, one gradient step per env step) with CartPole's tuned lr (5e-4) and target
period (100), M = 50 and tau annealed over 150k env steps to fit a 300k-step budget, a 4x
larger mirror-descent step than the paper's (1/eta = 5 instead of 20), and 4 vector envs
(README "Performance", acting: 0.23 instead of 0.79 ms per env step at M=1). Greedy
evaluation of 10 episodes every 10k env steps.

Measured (docs/results_environments.md): 3 seeds to 300k env steps through
``python -m rllib_staq.compare`` (greedy evaluation of 10 episodes every 20k, each env's first
episode), 2026-12-07, 2-core AMD EPYC, one torch thread. All three seeds reached 200 (at 80k,
140k and 120k); last-3-evaluation mean 259.5 [258.2, 261.1] over seeds, the issue's target
(>= 200 on 3 seeds) met. RLlib's DQN on its CartPole settings: 222.2 [176.9, 251.2].
With the paper's kl_coeff=20 the same protocol gave 132.3 [-3.4, 210.8], one seed hovering
above the pad for the whole budget; M=300, a 300k replay, tau to 0.1 and n_step=3 were the
other changes tried (same page).
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
            # 1/eta = 20 (the paper) hovered above the pad on 1 seed of 3 at 300k.
            kl_coeff=5.0,
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
