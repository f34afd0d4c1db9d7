"""Continuous-action StaQ on the five MuJoCo robots (issue 15; README "Continuous actions").

Needs the mujoco extra: ``pip install -e ".[mujoco]"``. The env is gymnasium's ``-v5`` robot
itself (``Hopper-v5``, ...): its ``Box`` actions build the continuous module, a tanh-Gaussian
actor fitted to the stack of the last M critic sets (``tuned_examples/pendulum_staq.py`` is
the same method on Pendulum). ``tuned_examples/mujoco_staq.py`` runs the same robots with the
paper's 2d+1 discrete actions instead. Run one robot without Tune, with a progress line per
iteration and a final greedy evaluation::

    python tuned_examples/mujoco_continuous_staq.py --robot Hopper --no-tune --stop-timesteps=300000

or with Tune (RLlib's example-script flags), without ``--no-tune``.

Settings: Pendulum's tuned continuous settings (M = 10, tau = 0.1 / (d ln 2), kl_coeff 0.5,
reward scale 1, no epsilon, 500 env steps, 500 critic steps of 256 and 250 actor steps per
iteration, Polyak targets 0.005 per step, critic and actor lr 1e-3, 2x256 networks), with a
replay of 300k transitions (a whole run at the default budget; RLlib's MuJoCo SAC benchmark
keeps 1M) and, for 1000-step episodes, a greedy evaluation of 10 episodes every 10k env
steps. One critic batch of 256 per env step is SAC's update-to-data ratio, so
``python -m rllib_staq.compare --env Hopper-v5 --algos StaQ SAC`` compares the two at equal
updates.

The settings are carried over from Pendulum, not tuned here. Measured (docs/results_continuous.md,
commit 7eb00a7), Hopper only, seed 0, 300k env steps in 6887 s on one core: first above 2000
at 110k, best 2933 at 170k, 2725 at 300k, final mean 3033 on 20 unseen env seeds, with drops
of up to 2188 between evaluations.
``--stop-reward`` defaults to infinity, so runs stop at ``--stop-timesteps``.
"""

import functools

from rllib_staq import StaQConfig
from rllib_staq.cli import example_parser
from rllib_staq.envs import MUJOCO_ROBOTS, require_extra

parser = example_parser(default_reward=float("inf"), default_timesteps=300_000)
parser.add_argument(
    "--robot", choices=MUJOCO_ROBOTS, default="Hopper", help="MuJoCo robot (default: Hopper)."
)

# Greedy evaluation every this many env steps (10 episodes of up to 1000 steps each).
EVALUATION_EVERY_ENV_STEPS = 10_000
ENV_STEPS_PER_ITERATION = 500


def build_config(num_env_runners: int = 0, seed: int = 0, robot: str = "Hopper") -> StaQConfig:
    """The continuous MuJoCo config for ``robot`` (importable by tests without parsing argv)."""
    if robot not in MUJOCO_ROBOTS:
        raise ValueError(f"robot must be one of {list(MUJOCO_ROBOTS)}, got {robot!r}.")
    require_extra("mujoco", "mujoco")
    return (
        StaQConfig()
        .environment(f"{robot}-v5")
        .env_runners(num_env_runners=num_env_runners)
        .rl_module(model_config={"fcnet_hiddens": [256, 256]})
        .training(
            stack_size=10,
            # Divided by d ln 2, the entropy of the uniform pi_0 on [-1, 1]^d.
            entropy_coeff=0.1,
            kl_coeff=0.5,
            reward_scale=1.0,
            epsilon=0.0,
            env_steps_per_iteration=ENV_STEPS_PER_ITERATION,
            grad_steps_per_iteration=ENV_STEPS_PER_ITERATION,
            train_batch_size_per_learner=256,
            lr=1e-3,
            target_network_update_freq=1,
            tau=0.005,
            actor_lr=1e-3,
            actor_steps_per_iteration=250,
            replay_buffer_config={"capacity": 300_000},
        )
        .evaluation(
            evaluation_interval=EVALUATION_EVERY_ENV_STEPS // ENV_STEPS_PER_ITERATION,
            evaluation_duration=10,
            evaluation_duration_unit="episodes",
            evaluation_config=StaQConfig.overrides(explore=False),
        )
        .debugging(seed=seed)
    )


if __name__ == "__main__":
    from rllib_staq.cli import main

    main(parser, functools.partial(build_config, robot=parser.parse_known_args()[0].robot))
