"""RLlib's SAC on Pendulum-v1 beside continuous StaQ (docs/results_continuous.md).

    python benchmarks/pendulum_sac.py --run-dir DIR --seed 0 [--stop-timesteps 30000]

The settings of the Ray repository's ``rllib/examples/algorithms/sac/pendulum_sac.py``
(actor/critic/alpha lr 2e-4/8e-4/9e-4, target Polyak 0.005, batch 256, 2x256
networks), with StaQ's tuned example's budget: one batch of 256 per env step
(``training_intensity=256``), one-step targets (``n_step=1``; RLlib's example
draws 2-5) and a uniform replay (its example uses prioritised replay), and the
same greedy evaluation schedule (10 episodes every 2000 env steps; RLlib's greedy
SAC action is clip(mean), StaQ's is tanh(mean)). Writes ``DIR/progress.csv``.
"""

from ray.rllib.algorithms.sac import SACConfig
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
from reference_run import reference_main


def build_config(seed: int) -> SACConfig:
    return (
        SACConfig()
        .environment("Pendulum-v1")
        .env_runners(num_env_runners=0, rollout_fragment_length=50)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[256, 256]))
        .training(
            actor_lr=2e-4,
            critic_lr=8e-4,
            alpha_lr=9e-4,
            lr=None,
            target_network_update_freq=1,
            tau=0.005,
            n_step=1,
            train_batch_size_per_learner=256,
            training_intensity=256,
            num_steps_sampled_before_learning_starts=1000,
            replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": 100_000},
        )
        .reporting(min_sample_timesteps_per_iteration=1000)
        .evaluation(
            evaluation_interval=2,
            evaluation_duration=10,
            evaluation_duration_unit="episodes",
            evaluation_config=SACConfig.overrides(explore=False),
        )
        .debugging(seed=seed)
    )


def main():
    reference_main(build_config, default_stop_timesteps=30_000)


if __name__ == "__main__":
    main()
