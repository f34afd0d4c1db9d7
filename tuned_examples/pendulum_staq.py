"""Continuous-action StaQ on Pendulum-v1 (issue 15; README "Continuous actions").

The action space is a 1-D Box, so StaQConfig builds the continuous module and
learner (rllib_staq/continuous.py): a critic ensemble fitted by FQI, pushed onto
the stack of the last M critics, and a tanh-Gaussian actor fitted to the stack's
energy by the reverse KL after each push. Greedy evaluation acts with tanh(mean).

Run with Tune (RLlib's example-script flags)::

    python tuned_examples/pendulum_staq.py --as-test --stop-reward=-200

or without Tune, with a progress line per iteration and a final greedy evaluation::

    python tuned_examples/pendulum_staq.py --no-tune --stop-timesteps=30000

``--actor-fit weighted_ml`` fits the actor MPO-style instead (one stacked pass per
iteration; README "Continuous actions"); ``--weighted-ml-uniform-fraction 0.25`` mixes a
quarter of uniform actions into its proposal. ``--stack-size M`` sets the memory (default 10).

Measured: docs/results_continuous.md.
"""

import functools

from rllib_staq import StaQConfig
from rllib_staq.cli import example_parser
from rllib_staq.settings import ACTOR_FITS

# M, the number of critic sets in the stack: the tuned value (build_config and --stack-size).
TUNED_STACK_SIZE = 10

parser = example_parser(default_reward=-200.0, default_timesteps=30_000)
parser.add_argument(
    "--actor-fit",
    choices=ACTOR_FITS,
    default="reverse_kl",
    help="How the actor is fitted to the stack after each push (default: reverse_kl).",
)
parser.add_argument(
    "--stack-size",
    type=int,
    default=TUNED_STACK_SIZE,
    help=f"M, the number of critic sets in the stack (default: {TUNED_STACK_SIZE}, tuned).",
)
parser.add_argument(
    "--weighted-ml-uniform-fraction",
    type=float,
    default=None,
    help="With --actor-fit weighted_ml: share of proposal actions drawn uniformly (default 0).",
)


def build_config(
    num_env_runners: int = 0,
    seed: int = 0,
    stack_size: int = TUNED_STACK_SIZE,
    actor_fit: str = "reverse_kl",
    weighted_ml_uniform_fraction: float | None = None,
) -> StaQConfig:
    """The tuned Pendulum config (importable by tests without parsing argv)."""
    config = (
        StaQConfig()
        .environment("Pendulum-v1")
        .env_runners(num_env_runners=num_env_runners)
        .rl_module(model_config={"fcnet_hiddens": [256, 256]})
        .training(
            stack_size=stack_size,
            # tau = 0.1 / ln 2 = 0.144 per unit reward (reward_scale 1); with
            # kl_coeff 0.5, beta = 0.78: the stack's weights halve every ~3 pushes.
            entropy_coeff=0.1,
            kl_coeff=0.5,
            reward_scale=1.0,
            epsilon=0.0,
            env_steps_per_iteration=500,
            # One critic batch of 256 per env step (SAC's update-to-data ratio),
            # SAC's Polyak targets (0.005 per step).
            grad_steps_per_iteration=500,
            train_batch_size_per_learner=256,
            lr=1e-3,
            target_network_update_freq=1,
            tau=0.005,
            actor_lr=1e-3,
            actor_steps_per_iteration=250,
            actor_fit=actor_fit,
            replay_buffer_config={"capacity": 100_000},
        )
        .evaluation(
            # Greedy (tanh(mean)) evaluation of 10 episodes every 2000 env steps.
            evaluation_interval=4,
            evaluation_duration=10,
            evaluation_duration_unit="episodes",
            evaluation_config=StaQConfig.overrides(explore=False),
        )
        .debugging(seed=seed)
    )
    if weighted_ml_uniform_fraction is not None:  # else StaQ's default, which validate() checks
        config.training(weighted_ml_uniform_fraction=weighted_ml_uniform_fraction)
    return config


def config_builder(args):
    """build_config with this script's own flags bound (the cli passes the rest)."""
    return functools.partial(
        build_config,
        stack_size=args.stack_size,
        actor_fit=args.actor_fit,
        weighted_ml_uniform_fraction=args.weighted_ml_uniform_fraction,
    )


if __name__ == "__main__":
    from rllib_staq.cli import main

    main(parser, config_builder(parser.parse_known_args()[0]))
