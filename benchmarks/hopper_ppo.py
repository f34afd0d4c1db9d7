"""RLlib's PPO on the continuous Hopper-v5 beside discrete StaQ (docs/results_environments.md).

    python benchmarks/hopper_ppo.py --run-dir DIR --seed 0 [--stop-timesteps 300000]

Issue 12 asks for RLlib's PPO on the continuous robot at the budget of StaQ's discrete run
(``tuned_examples/mujoco_staq.py --robot Hopper``). The settings are those of the Ray
repository's ``rllib/tuned_examples/ppo/benchmark_ppo_mujoco.py`` (the PPO paper's: lambda
0.95, lr 3e-4, 15 epochs, minibatch 4096, vf_loss_coeff 0.01, a shared 64x64 tanh network,
32 x 512 env steps per iteration), on one local EnvRunner instead of 32 remote ones (the same
16,384 env steps per iteration). Greedy evaluation (the Gaussian's mean) of 10 episodes after
every iteration, so every 16,384 env steps (StaQ's run: every 10,000). Needs the mujoco extra.
Writes ``DIR/progress.csv``.
"""

from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
from reference_run import reference_main

ROLLOUT_FRAGMENT = 512
FRAGMENTS_PER_ITERATION = 32  # RLlib's example: 32 EnvRunners x 512 steps.


def build_config(seed: int) -> PPOConfig:
    return (
        PPOConfig()
        .environment("Hopper-v5")
        .env_runners(num_env_runners=0, rollout_fragment_length=ROLLOUT_FRAGMENT)
        .rl_module(
            model_config=DefaultModelConfig(
                fcnet_hiddens=[64, 64], fcnet_activation="tanh", vf_share_layers=True
            )
        )
        .training(
            lambda_=0.95,
            lr=3e-4,
            num_epochs=15,
            train_batch_size_per_learner=FRAGMENTS_PER_ITERATION * ROLLOUT_FRAGMENT,
            minibatch_size=4096,
            vf_loss_coeff=0.01,
        )
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
