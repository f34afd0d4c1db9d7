"""Named baseline presets: RLlib's tuned settings for DQN, PPO and SAC; StaQ's tuned examples.

Where the values come from. The ``ray`` wheel (2.60) does not ship RLlib's tuned examples
(``ray/rllib/tuned_examples/`` is absent from the installed package), so the values below were
read from the Ray repository's example scripts and written out here as settings:

- DQN, CartPole-v1: ``rllib/examples/algorithms/dqn/cartpole_dqn.py`` (new API stack: dueling
  double DQN, prioritised replay 50k with alpha 0.6 / beta 0.4, n-step 2-5, lr 5e-4, batch 32,
  epsilon 1.0 -> 0.02 over 25k steps, one 256 tanh layer + a 256 head).
- PPO, CartPole-v1: ``rllib/examples/algorithms/ppo/cartpole_ppo.py`` (lr 3e-4, 6 epochs,
  vf_loss_coeff 0.01, one 32-unit linear layer, shared value layers).
- SAC (its discrete-action mode), CartPole-v1: ``rllib/tuned_examples/sac/cartpole-sac.yaml``
  (gamma 0.95, hard target update every 32 steps, batch 32, actor and critic lr 5e-3, alpha lr
  1e-4), RLlib's only SAC setting for a discrete-action classic-control env.

RLlib has no tuned settings for Acrobot-v1. Its presets are the CartPole ones, and
``preset_source`` says so (``python -m rllib_staq.compare`` prints it), rather than
silently pretending they were tuned for Acrobot.

Resources are not part of a preset: ``rllib_staq.compare`` sets ``num_env_runners`` and the
evaluation schedule identically for every algorithm.
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Callable

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

BASELINE_ALGOS = ("DQN", "PPO", "SAC")
ALGOS = ("StaQ",) + BASELINE_ALGOS

# The env ids with a StaQ tuned example (tuned_examples/<name>.py, function build_config).
STAQ_EXAMPLES: dict[str, str] = {
    "CartPole-v1": "cartpole_staq",
    "Acrobot-v1": "acrobot_staq",
}
ENVS = tuple(STAQ_EXAMPLES)

# Greedy return that counts as solved (the tuned examples' --stop-reward).
THRESHOLDS: dict[str, float] = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0}

TUNED_EXAMPLES_DIR = pathlib.Path(__file__).resolve().parents[1] / "tuned_examples"


def dqn_cartpole(env: str) -> AlgorithmConfig:
    from ray.rllib.algorithms.dqn import DQNConfig

    return (
        DQNConfig()
        .environment(env)
        .training(
            lr=5e-4,
            train_batch_size_per_learner=32,
            replay_buffer_config={
                "type": "PrioritizedEpisodeReplayBuffer",
                "capacity": 50_000,
                "alpha": 0.6,
                "beta": 0.4,
            },
            n_step=(2, 5),
            double_q=True,
            dueling=True,
            epsilon=[(0, 1.0), (25_000, 0.02)],
        )
        .rl_module(
            model_config={
                "fcnet_hiddens": [256],
                "fcnet_activation": "tanh",
                "fcnet_bias_initializer": "zeros_",
                "head_fcnet_hiddens": [256],
                "head_fcnet_bias_initializer": "zeros_",
            }
        )
    )


def ppo_cartpole(env: str) -> AlgorithmConfig:
    from ray.rllib.algorithms.ppo import PPOConfig

    return (
        PPOConfig()
        .environment(env)
        .training(lr=3e-4, num_epochs=6, vf_loss_coeff=0.01)
        .rl_module(
            model_config={
                "fcnet_hiddens": [32],
                "fcnet_activation": "linear",
                "vf_share_layers": True,
            }
        )
    )


def sac_discrete_cartpole(env: str) -> AlgorithmConfig:
    from ray.rllib.algorithms.sac import SACConfig

    return (
        SACConfig()
        .environment(env)
        .training(
            gamma=0.95,
            target_network_update_freq=32,
            tau=1.0,
            train_batch_size_per_learner=32,
            actor_lr=5e-3,
            critic_lr=5e-3,
            alpha_lr=1e-4,
            lr=None,
        )
    )


# (algorithm, env) -> (builder, where its settings come from)
BASELINES: dict[tuple[str, str], tuple[Callable[[str], AlgorithmConfig], str]] = {}
for _env in ENVS:
    _suffix = "" if _env == "CartPole-v1" else f" (RLlib has no {_env} settings)"
    BASELINES[("DQN", _env)] = (dqn_cartpole, "RLlib's CartPole DQN example" + _suffix)
    BASELINES[("PPO", _env)] = (ppo_cartpole, "RLlib's CartPole PPO example" + _suffix)
    BASELINES[("SAC", _env)] = (
        sac_discrete_cartpole,
        "RLlib's CartPole SAC (discrete) tuned example" + _suffix,
    )


def check_names(algos, envs) -> None:
    """ValueError naming the allowed values for an unknown algorithm or env."""
    for algo in algos:
        if algo not in ALGOS:
            raise ValueError(f"Unknown algorithm {algo!r}: allowed algorithms are {list(ALGOS)}")
    for env in envs:
        if env not in ENVS:
            raise ValueError(
                f"Unknown env {env!r}: allowed envs are {list(ENVS)} "
                "(or pass --config-module with your own configs)"
            )


def load_tuned_example(name: str):
    path = TUNED_EXAMPLES_DIR / f"{name}.py"
    if not path.exists():
        raise ValueError(
            f"StaQ's tuned example {path} is not there: the presets read tuned_examples/ from a "
            "source checkout (pip install -e .)"
        )
    spec = importlib.util.spec_from_file_location(f"rllib_staq_tuned_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def preset_config(algo: str, env: str) -> AlgorithmConfig:
    """The named preset of ``algo`` on ``env`` (StaQ: the env's tuned example)."""
    check_names([algo], [env])
    if algo == "StaQ":
        return load_tuned_example(STAQ_EXAMPLES[env]).build_config()
    builder, _ = BASELINES[(algo, env)]
    return builder(env)


def preset_source(algo: str, env: str) -> str:
    check_names([algo], [env])
    if algo == "StaQ":
        return f"tuned_examples/{STAQ_EXAMPLES[env]}.py"
    return BASELINES[(algo, env)][1]
