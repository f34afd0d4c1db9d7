"""StaQ on the five MuJoCo robots with the paper's 2d+1 discrete actions.

Needs the mujoco extra: ``pip install -e ".[mujoco]"``. Run one robot with Tune (RLlib's
example-script flags)::

    python tuned_examples/mujoco_staq.py --robot Hopper --stop-timesteps=300000

or without Tune, with a progress line per iteration and a final greedy evaluation::

    python tuned_examples/mujoco_staq.py --robot Hopper --no-tune --stop-timesteps=300000

``--robot`` is one of Hopper, Walker2d, HalfCheetah, Ant, Humanoid; the env is the registered
``StaQ/<Robot>-v5``: gymnasium's ``-v5`` robot wrapped in ``rllib_staq.DiscreteBoxActions``
(7, 13, 13, 17 and 35 actions; the authors used ``-v4``).

Settings: the paper's MLP (2x256, the module's default), 1/eta = 20, epsilon 0.05, batch 256,
one gradient step per env step, replay 50,000, the package's default reward scale (10; the
spec gives no MuJoCo value), scaled to a CPU budget of 300k env steps like the classic-control
examples: M = 50, tau annealed over 150k env steps, 1000-step iterations, CartPole's tuned lr
(5e-4) and target period (100), 4 vector envs. Greedy evaluation of 10 episodes (up to 1000
steps each) every 10k env steps.

There is no return target: issue 12 asks for the curve next to the random policy (Hopper 28,
Walker2d 12, HalfCheetah -149, Ant 421, Humanoid 147, measured with the same wrapper).
Measured (docs/results_environments.md, commit c336529), Hopper only, seed 0, 300k env steps
(run with ``--stop-iters=300``: at that commit the default stopped at 200 iterations): best greedy
return 2406 at 280k, 1833 over the last 3 evaluations, and a drop to 754 at 300k. The final
evaluation on 20 unseen seeds gave 770. RLlib's PPO on the continuous robot reached 313 with
the same env steps. Walker2d, seed 0, 300k env steps (commit 035f104): 1342 at the last
evaluation, 997 over the last 3, 889 on 20 unseen seeds, still rising. HalfCheetah, seed 0,
300k env steps (commit 18310b7): 2622 at the last evaluation, 2631 on 20 unseen seeds, a steady
climb (max drawdown 66). Ant, seed 0, 300k env steps (commit 18f8e4b): 1800 at the last
evaluation (best 1905), 1698 on 20 unseen seeds, drops of up to 1021. Humanoid, seed 0, 300k
env steps (commit 18f8e4b): 943 at the last evaluation, 1093 on 20 unseen seeds, still rising.
``--stop-reward`` defaults to infinity, so runs stop at ``--stop-timesteps`` (or
``--stop-iters``).
"""

import functools

from rllib_staq import StaQConfig, first_episode_evaluation
from rllib_staq.cli import example_parser
from rllib_staq.envs import MUJOCO_ROBOTS, mujoco_env_name, require_extra

parser = example_parser(default_reward=float("inf"), default_timesteps=300_000)
parser.add_argument(
    "--robot", choices=MUJOCO_ROBOTS, default="Hopper", help="MuJoCo robot (default: Hopper)."
)


def build_config(num_env_runners: int = 0, seed: int = 0, robot: str = "Hopper") -> StaQConfig:
    """The MuJoCo config for ``robot`` (importable by tests without parsing argv)."""
    if robot not in MUJOCO_ROBOTS:
        raise ValueError(f"robot must be one of {list(MUJOCO_ROBOTS)}, got {robot!r}.")
    require_extra("mujoco", "mujoco")
    return (
        StaQConfig()
        .environment(mujoco_env_name(robot))
        .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=4)
        .training(
            stack_size=50,
            kl_coeff=20.0,
            entropy_coeff=[[0, 2.0], [150_000, 0.4]],
            epsilon=0.05,
            env_steps_per_iteration=1000,
            grad_steps_per_iteration=1000,
            train_batch_size_per_learner=256,
            lr=5e-4,
            target_network_update_freq=100,
            replay_buffer_config={"capacity": 50_000},
        )
        .evaluation(
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

    main(parser, functools.partial(build_config, robot=parser.parse_known_args()[0].robot))
