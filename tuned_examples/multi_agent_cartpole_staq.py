"""StaQ on RLlib's MultiAgentCartPole: one StaQ policy per agent (or one shared).

Each policy has its own stack, ensembles and transition table; per-policy
settings go through ``.rl_module(algorithm_config_overrides_per_module=...)``.
Run with Tune (RLlib's example-script flags)::

    python tuned_examples/multi_agent_cartpole_staq.py --as-test --stop-reward=800

or without Tune::

    python tuned_examples/multi_agent_cartpole_staq.py --no-tune --stop-timesteps=60000

The reward of an episode is the sum over both agents (up to 1000); per-policy
returns are under ``env_runners/module_episode_returns_mean/<policy>``.

Measured (docs/results_multi_agent.md, seed 0): greedy 500 for p1 at 25k and for
p0 at 35k env steps; the final evaluation on 20 unseen seeds gave 1000.
"""

from ray.rllib.examples.envs.classes.multi_agent import MultiAgentCartPole
from ray.tune.registry import register_env

from rllib_staq import StaQConfig
from rllib_staq.cli import example_parser

ENV_NAME = "StaQ/MultiAgentCartPole"
register_env(ENV_NAME, lambda env_config: MultiAgentCartPole(env_config))

parser = example_parser(default_reward=800.0, default_timesteps=100_000)


def policy_per_agent(agent_id, episode, **kwargs):
    return f"p{agent_id}"


def shared_policy(agent_id, episode, **kwargs):
    return "shared"


def build_config(num_env_runners: int = 0, seed: int = 0, shared: bool = False) -> StaQConfig:
    """The CartPole tuned settings, per policy (importable by tests without argv)."""
    policies = {"shared"} if shared else {"p0", "p1"}
    return (
        StaQConfig()
        .environment(ENV_NAME, env_config={"num_agents": 2})
        .multi_agent(
            policies=policies,
            policy_mapping_fn=shared_policy if shared else policy_per_agent,
        )
        .env_runners(num_env_runners=num_env_runners)
        .training(
            stack_size=50,
            kl_coeff=20.0,
            entropy_coeff=[[0, 2.0], [50_000, 0.4]],
            epsilon=0.05,
            env_steps_per_iteration=1000,
            grad_steps_per_iteration=1000,
            train_batch_size_per_learner=256,
            lr=5e-4,
            target_network_update_freq=100,
            # Per policy (each has its own table): the single-agent example's size.
            replay_buffer_config={"type": "MultiAgentEpisodeReplayBuffer", "capacity": 50_000},
        )
        .evaluation(
            evaluation_interval=5,
            evaluation_duration=10,
            evaluation_duration_unit="episodes",
            evaluation_config=StaQConfig.overrides(explore=False),
        )
        .debugging(seed=seed)
    )


if __name__ == "__main__":
    from rllib_staq.cli import main

    main(parser, build_config)
