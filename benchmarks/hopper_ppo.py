"""RLlib's PPO on the continuous Hopper-v5 beside discrete StaQ (docs/results_environments.md).

    python benchmarks/hopper_ppo.py --run-dir DIR --seed 0 [--stop-timesteps 300000]

Issue 12 asks for RLlib's PPO on the continuous robot at the budget of StaQ's discrete run
(``tuned_examples/mujoco_staq.py --robot Hopper``). The settings are those of the Ray
repository's ``rllib/tuned_examples/ppo/benchmark_ppo_mujoco.py`` (the PPO paper's: lambda
0.95, lr 3e-4, 15 epochs, minibatch 4096, vf_loss_coeff 0.01, a shared 64x64 tanh network,
32 x 512 env steps per iteration; ``rllib_staq.presets.ppo_mujoco``, the comparison's PPO
preset on the robots), on one local EnvRunner instead of 32 remote ones (the same 16,384 env
steps per iteration). Greedy evaluation (the Gaussian's mean) of 10 episodes after
every iteration, so every 16,384 env steps (StaQ's run: every 10,000). Needs the mujoco extra.
Writes ``DIR/progress.csv``.
"""

from ray.rllib.algorithms.ppo import PPOConfig
from reference_run import reference_main

from rllib_staq.presets import ppo_mujoco


def build_config(seed: int) -> PPOConfig:
    return (
        ppo_mujoco("Hopper-v5")
        .env_runners(num_env_runners=0)
        .evaluation(
            evaluation_interval=1,
            evaluation_duration=10,
            evaluation_duration_unit="episodes",
            evaluation_config=PPOConfig.overrides(explore=False),
        )
        .debugging(seed=seed)
    )


def main():
    reference_main(build_config, default_stop_timesteps=300_000)


if __name__ == "__main__":
    main()
