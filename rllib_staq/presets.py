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

- SAC (discrete), MountainCar-v0: ``rllib/examples/algorithms/sac/mountaincar_sac.py`` (also
  ``rllib/tuned_examples/sac/mountaincar_sac.py`` before the move; 256x256 relu with xavier
  init, a 0.01-gain orthogonal head, initial alpha 1.001, actor/critic/alpha lr 2e-4 / 8e-4 /
  9e-4, n-step 2-5, tau 0.005 every step, batch 256, prioritised replay 100k with alpha 1.0 /
  beta 0.0, learning after 256 steps), RLlib's only MountainCar-v0 setting.
- SAC (continuous), Pendulum-v1: ``rllib/tuned_examples/sac/pendulum_sac.py``, the same
  network and training settings as the MountainCar one without the discrete mode's fusion
  net; RLlib's default one env step per sampling round, so one batch of 256 per env step.
- PPO, Pendulum-v1: ``rllib/tuned_examples/ppo/pendulum_ppo.py`` (lr 3e-4, lambda 0.1,
  vf_clip_param 10, 6 epochs, RLlib's default 2x256 network with relu, 10 vector envs per
  EnvRunner). Its batch is RLlib's default 4000 env steps, so ``--eval-every`` must be a
  multiple of 4000 with it.

- SAC (continuous), the MuJoCo robots ``Hopper-v5``, ``Walker2d-v5``, ``HalfCheetah-v5``,
  ``Ant-v5``, ``Humanoid-v5``: ``rllib/tuned_examples/sac/benchmark_sac_mujoco.py`` (the SAC
  paper's settings: lr 3e-4 for actor, critic and alpha, initial alpha 1.001, target entropy
  auto, 1-step targets, tau 0.005 every step, batch 256, prioritised replay 1M with alpha
  0.6 / beta 0.4, learning after 256 steps, 1000 env steps per iteration, 2x256 relu with a
  0.01-gain orthogonal head).
- PPO (continuous), the same robots: ``rllib/tuned_examples/ppo/benchmark_ppo_mujoco.py``
  (lambda 0.95, lr 3e-4, 15 epochs, minibatch 4096, vf_loss_coeff 0.01, a shared 64x64 tanh
  network, 32 x 512 = 16,384 env steps per iteration, so ``--eval-every`` must be a multiple
  of 16,384 with it).

Pendulum-v1 and the MuJoCo robots have Box actions: StaQ runs its continuous module there
(``pendulum_staq.py``, ``mujoco_continuous_staq.py``), and DQN, which has no continuous mode,
is refused (:func:`algos_for_env`). ``StaQ/<Robot>-v5``, the discretised robots of
``mujoco_staq.py``, are not presets: their baselines would be discrete-action agents on the
paper's 2d+1 actions, not RLlib's MuJoCo settings.

- DQN, the MinAtar games: MinAtar's own DQN (Young & Tian 2019, ``examples/dqn.py`` of
  github.com/kenjyoung/MinAtar; RLlib has no MinAtar settings): plain DQN (no double Q, no
  dueling head, 1-step targets, uniform replay of 100k), Huber loss, gamma 0.99, lr 2.5e-4,
  5000 random steps before learning, epsilon 1.0 -> 0.1 over the next 100k env steps, the
  target copied every 1000 env steps, the MinAtar CNN. Two changes, so that it is compared with
  StaQ at StaQ's update-to-data ratio (issue 12): StaQ's MinAtar batch of 256 and
  ``training_intensity`` 64 (250 gradient steps of 256 per 1000 env steps, as
  ``tuned_examples/minatar_staq.py``; MinAtar's own DQN does one step of 32 per env step,
  32 replayed samples per env step) on StaQ's 16 vector envs; and RLlib's Adam where MinAtar
  uses centred RMSProp (RLlib's DQN learner has no optimizer setting).

RLlib has no tuned settings for the other (algorithm, env) pairs: Acrobot-v1, LunarLander-v3,
DQN and PPO on MountainCar-v0, and PPO and SAC on the MinAtar games (its image examples,
``rllib/examples/algorithms/{dqn/atari_dqn,ppo/atari_ppo,sac/atari_sac}.py``, are for Atari:
4 stacked 64x64 frames, clipped rewards, 3M to 10M-step budgets; the DQN one is Rainbow
with 80k warm-up steps and a 32k-step target period). Their presets are the CartPole ones, and
``preset_source`` says so (``python -m rllib_staq.compare`` prints it), rather than silently
pretending they were tuned for that env. On MinAtar
(``(10, 10, C)`` float32 images) the CartPole MLP is replaced by the MinAtar paper's CNN, the
network StaQ's module builds there (conv 16 3x3 stride 1 valid padding, dense 128, relu), so
every algorithm sees the same network; the training settings stay the CartPole ones.

StaQ uses the env's tuned example (``tuned_examples/*_staq.py``; MinAtar: ``minatar_staq.py``'s
``build_config(game=...)``). LunarLander-v3 needs the box2d extra and MinAtar the minatar extra:
``preset_config`` raises an ImportError naming the install command when it is missing.

Resources are not part of a preset: ``rllib_staq.compare`` sets ``num_env_runners`` and the
evaluation schedule identically for every algorithm.
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Callable

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

from rllib_staq import envs
from rllib_staq.envs import (
    MINATAR_GAMES,
    MINATAR_TARGET_RETURNS,
    MUJOCO_ROBOTS,
    minatar_env_name,
    require_extra,
)

BASELINE_ALGOS = ("DQN", "PPO", "SAC")
ALGOS = ("StaQ",) + BASELINE_ALGOS

# The env ids with a StaQ tuned example (tuned_examples/<name>.py, function build_config).
STAQ_EXAMPLES: dict[str, str] = {
    "CartPole-v1": "cartpole_staq",
    "Acrobot-v1": "acrobot_staq",
    "LunarLander-v3": "lunarlander_staq",
    "MountainCar-v0": "mountaincar_staq",
    **{minatar_env_name(game): "minatar_staq" for game in MINATAR_GAMES},
    "Pendulum-v1": "pendulum_staq",
}
# MuJoCo env id (continuous actions) -> robot (the argument of mujoco_continuous_staq's
# build_config).
MUJOCO_ENVS: dict[str, str] = {f"{robot}-v5": robot for robot in MUJOCO_ROBOTS}
STAQ_EXAMPLES.update({env: "mujoco_continuous_staq" for env in MUJOCO_ENVS})
# Envs with Box actions: StaQ's continuous module, and no DQN (it has no continuous mode).
CONTINUOUS_ENVS = ("Pendulum-v1", *MUJOCO_ENVS)
# MinAtar env id -> game (the argument of minatar_staq.build_config).
MINATAR_ENVS: dict[str, str] = {minatar_env_name(game): game for game in MINATAR_GAMES}
ENVS = tuple(STAQ_EXAMPLES)

# Greedy return that counts as solved (the tuned examples' --stop-reward; MinAtar: issue 12's
# targets at 500k env steps, the MinAtar example's --stop-reward too).
THRESHOLDS: dict[str, float] = {
    "CartPole-v1": 475.0,
    "Acrobot-v1": -100.0,
    "LunarLander-v3": 200.0,
    "MountainCar-v0": -150.0,
    **{minatar_env_name(game): target for game, target in MINATAR_TARGET_RETURNS.items()},
    "Pendulum-v1": -200.0,
    # No target: the MuJoCo example's --stop-reward is infinite (runs end at their budget).
    **{env: float("inf") for env in MUJOCO_ENVS},
}

# env -> (module, extra) that env needs beyond the core install.
EXTRAS: dict[str, tuple[str, str]] = {
    "LunarLander-v3": ("Box2D", "box2d"),
    **{env: ("minatar", "minatar") for env in MINATAR_ENVS},
    **{env: ("mujoco", "mujoco") for env in MUJOCO_ENVS},
}

# The MinAtar paper's network, the one StaQ's module builds for MinAtar: conv 16 3x3 stride 1
# (valid padding: 10x10 -> 8x8) -> dense 128 -> head; relu. RLlib's encoder is the conv
# stack, its heads take head_fcnet_hiddens.
MINATAR_CNN = {
    "conv_filters": [[16, 3, 1, "valid"]],
    "conv_activation": "relu",
    "head_fcnet_hiddens": [128],
    "head_fcnet_activation": "relu",
}
# The network keys of the CartPole presets that MINATAR_CNN replaces on MinAtar (the others,
# e.g. PPO's vf_share_layers, are kept).
MLP_KEYS = ("fcnet_hiddens", "fcnet_activation", "head_fcnet_hiddens", "head_fcnet_activation")

DQN_CARTPOLE_MODEL = {
    "fcnet_hiddens": [256],
    "fcnet_activation": "tanh",
    "fcnet_bias_initializer": "zeros_",
    "head_fcnet_hiddens": [256],
    "head_fcnet_bias_initializer": "zeros_",
}
PPO_CARTPOLE_MODEL = {"fcnet_hiddens": [32], "fcnet_activation": "linear", "vf_share_layers": True}
SAC_CARTPOLE_MODEL: dict = {}  # cartpole-sac.yaml keeps RLlib's default network

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
        .rl_module(model_config=dict(DQN_CARTPOLE_MODEL))
    )


def ppo_cartpole(env: str) -> AlgorithmConfig:
    from ray.rllib.algorithms.ppo import PPOConfig

    return (
        PPOConfig()
        .environment(env)
        .training(lr=3e-4, num_epochs=6, vf_loss_coeff=0.01)
        .rl_module(model_config=dict(PPO_CARTPOLE_MODEL))
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


# RLlib's 2x256 SAC network of its Pendulum and MountainCar examples: xavier-initialised relu
# layers and a 0.01-gain orthogonal head.
SAC_256_MODEL = {
    "fcnet_hiddens": [256, 256],
    "fcnet_activation": "relu",
    "head_fcnet_hiddens": [],
    "head_fcnet_activation": None,
    "head_fcnet_kernel_initializer": "orthogonal_",
    "head_fcnet_kernel_initializer_kwargs": {"gain": 0.01},
}


def sac_pendulum(env: str) -> AlgorithmConfig:
    """RLlib's Pendulum SAC (continuous actions); its network and training settings are also
    those of its discrete MountainCar example."""
    from ray.rllib.algorithms.sac import SACConfig
    from torch import nn

    return (
        SACConfig()
        .environment(env)
        .rl_module(
            model_config={**SAC_256_MODEL, "fcnet_kernel_initializer": nn.init.xavier_uniform_}
        )
        .training(
            initial_alpha=1.001,
            actor_lr=2e-4,
            critic_lr=8e-4,
            alpha_lr=9e-4,
            lr=None,
            target_entropy="auto",
            n_step=(2, 5),
            tau=0.005,
            train_batch_size_per_learner=256,
            target_network_update_freq=1,
            replay_buffer_config={
                "type": "PrioritizedEpisodeReplayBuffer",
                "capacity": 100_000,
                "alpha": 1.0,
                "beta": 0.0,
            },
            num_steps_sampled_before_learning_starts=256,
        )
    )


def sac_mujoco(env: str) -> AlgorithmConfig:
    """RLlib's MuJoCo SAC benchmark (the SAC paper's settings)."""
    from ray.rllib.algorithms.sac import SACConfig

    return (
        SACConfig()
        .environment(env)
        .rl_module(model_config=SAC_256_MODEL)
        .training(
            initial_alpha=1.001,
            actor_lr=3e-4,
            critic_lr=3e-4,
            alpha_lr=3e-4,
            lr=None,
            target_entropy="auto",
            n_step=1,
            tau=0.005,
            train_batch_size_per_learner=256,
            target_network_update_freq=1,
            replay_buffer_config={
                "type": "PrioritizedEpisodeReplayBuffer",
                "capacity": 1_000_000,
                "alpha": 0.6,
                "beta": 0.4,
            },
            num_steps_sampled_before_learning_starts=256,
        )
        .reporting(min_sample_timesteps_per_iteration=1000)
    )


# RLlib's MuJoCo PPO benchmark samples 32 EnvRunners x 512 steps per iteration.
PPO_MUJOCO_ROLLOUT_FRAGMENT = 512
PPO_MUJOCO_FRAGMENTS_PER_ITERATION = 32


def ppo_mujoco(env: str) -> AlgorithmConfig:
    """RLlib's MuJoCo PPO benchmark (the PPO paper's settings), 16,384 env steps an iteration
    on however many EnvRunners the protocol gives it."""
    from ray.rllib.algorithms.ppo import PPOConfig

    return (
        PPOConfig()
        .environment(env)
        .env_runners(rollout_fragment_length=PPO_MUJOCO_ROLLOUT_FRAGMENT)
        .rl_module(
            model_config={
                "fcnet_hiddens": [64, 64],
                "fcnet_activation": "tanh",
                "vf_share_layers": True,
            }
        )
        .training(
            lambda_=0.95,
            lr=3e-4,
            num_epochs=15,
            train_batch_size_per_learner=PPO_MUJOCO_FRAGMENTS_PER_ITERATION
            * PPO_MUJOCO_ROLLOUT_FRAGMENT,
            minibatch_size=4096,
            vf_loss_coeff=0.01,
        )
    )


def sac_discrete_mountaincar(env: str) -> AlgorithmConfig:
    """The Pendulum SAC settings with the discrete mode's 3x256 fusion net."""
    config = sac_pendulum(env)
    return config.rl_module(
        model_config={
            **config.model_config,
            "fusionnet_hiddens": [256, 256, 256],
            "fusionnet_activation": "relu",
        }
    )


def ppo_pendulum(env: str) -> AlgorithmConfig:
    """RLlib's Pendulum PPO: RLlib's default 2x256 network with relu."""
    from ray.rllib.algorithms.ppo import PPOConfig

    return (
        PPOConfig()
        .environment(env)
        .env_runners(num_envs_per_env_runner=10)
        .training(lr=3e-4, lambda_=0.1, vf_clip_param=10.0, num_epochs=6)
        .rl_module(model_config={"fcnet_activation": "relu"})
    )


# The update-to-data ratio of tuned_examples/minatar_staq.py: 250 gradient steps of 256 per 1000
# env steps (tests check it against the example), i.e. 64 replayed samples per env step.
MINATAR_BATCH_SIZE = 256
MINATAR_REPLAYED_PER_ENV_STEP = 64
MINATAR_VECTOR_ENVS = 16


def dqn_minatar(env: str) -> AlgorithmConfig:
    """MinAtar's own DQN, at StaQ's MinAtar batch and update-to-data ratio (module docstring)."""
    from ray.rllib.algorithms.dqn import DQNConfig

    return (
        DQNConfig()
        .environment(env)
        # One env step per vector env and sampling round, so that training_intensity can set
        # the ratio exactly: 16 env steps, then 4 updates of 256 (64 replayed per env step).
        .env_runners(num_envs_per_env_runner=MINATAR_VECTOR_ENVS, rollout_fragment_length=1)
        .training(
            lr=2.5e-4,
            gamma=0.99,
            train_batch_size_per_learner=MINATAR_BATCH_SIZE,
            training_intensity=MINATAR_REPLAYED_PER_ENV_STEP,
            replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": 100_000},
            num_steps_sampled_before_learning_starts=5_000,
            n_step=1,
            double_q=False,
            dueling=False,
            td_error_loss_fn="huber",
            target_network_update_freq=1_000,
            epsilon=[(0, 1.0), (5_000, 1.0), (105_000, 0.1)],
        )
        .rl_module(model_config=dict(MINATAR_CNN))
    )


MINATAR_DQN_SOURCE = (
    "MinAtar's own DQN (Young & Tian 2019, github.com/kenjyoung/MinAtar/examples/dqn.py), "
    "at StaQ's MinAtar batch (256) and update-to-data ratio (64 replayed samples per env step, "
    "16 vector envs), with RLlib's Adam for its centred RMSProp"
)


def minatar_model_config(cartpole_model: dict) -> dict:
    """A CartPole preset's model_config with its MLP replaced by :data:`MINATAR_CNN`."""
    kept = {key: value for key, value in cartpole_model.items() if key not in MLP_KEYS}
    return {**kept, **MINATAR_CNN}


def with_minatar_cnn(
    builder: Callable[[str], AlgorithmConfig], cartpole_model: dict
) -> Callable[[str], AlgorithmConfig]:
    """``builder``'s training settings with :func:`minatar_model_config` as its network."""

    def build(env: str) -> AlgorithmConfig:
        return builder(env).rl_module(model_config=minatar_model_config(cartpole_model))

    build.__name__ = f"{builder.__name__}_minatar_cnn"
    return build


CARTPOLE_SOURCES = {
    "DQN": (
        dqn_cartpole,
        "RLlib's CartPole DQN example (rllib/examples/algorithms/dqn/cartpole_dqn.py)",
    ),
    "PPO": (
        ppo_cartpole,
        "RLlib's CartPole PPO example (rllib/examples/algorithms/ppo/cartpole_ppo.py)",
    ),
    "SAC": (
        sac_discrete_cartpole,
        "RLlib's CartPole SAC (discrete) tuned example "
        "(rllib/tuned_examples/sac/cartpole-sac.yaml)",
    ),
}
CARTPOLE_MODELS = {"DQN": DQN_CARTPOLE_MODEL, "PPO": PPO_CARTPOLE_MODEL, "SAC": SAC_CARTPOLE_MODEL}
# (algorithm, env) -> (builder, source) where RLlib (or, for DQN on MinAtar, MinAtar's authors)
# has tuned settings for that env.
TUNED_BASELINES = {
    **{(algo, "CartPole-v1"): entry for algo, entry in CARTPOLE_SOURCES.items()},
    ("SAC", "MountainCar-v0"): (
        sac_discrete_mountaincar,
        "RLlib's MountainCar-v0 SAC (discrete) example "
        "(rllib/examples/algorithms/sac/mountaincar_sac.py)",
    ),
    ("SAC", "Pendulum-v1"): (
        sac_pendulum,
        "RLlib's Pendulum-v1 SAC tuned example (rllib/tuned_examples/sac/pendulum_sac.py)",
    ),
    ("PPO", "Pendulum-v1"): (
        ppo_pendulum,
        "RLlib's Pendulum-v1 PPO tuned example (rllib/tuned_examples/ppo/pendulum_ppo.py)",
    ),
    **{("DQN", env): (dqn_minatar, MINATAR_DQN_SOURCE) for env in MINATAR_ENVS},
    **{
        ("SAC", env): (
            sac_mujoco,
            "RLlib's MuJoCo SAC benchmark (rllib/tuned_examples/sac/benchmark_sac_mujoco.py)",
        )
        for env in MUJOCO_ENVS
    },
    **{
        ("PPO", env): (
            ppo_mujoco,
            "RLlib's MuJoCo PPO benchmark (rllib/tuned_examples/ppo/benchmark_ppo_mujoco.py)",
        )
        for env in MUJOCO_ENVS
    },
}


def fallback_source(algo: str, env: str) -> str:
    """What a fallback preset is, said plainly: the CartPole settings, not tuned for ``env``."""
    source = CARTPOLE_SOURCES[algo][1]
    if env in MINATAR_ENVS:
        return (
            f"{source}, not tuned for {env}: RLlib has no MinAtar settings; the CartPole "
            "training settings with the MinAtar CNN (conv 16 3x3 stride 1, dense 128) "
            "instead of its MLP"
        )
    return f"{source}, not tuned for {env}: RLlib has no {env} settings"


# (algorithm, env) -> (builder, where its settings come from)
BASELINES: dict[tuple[str, str], tuple[Callable[[str], AlgorithmConfig], str]] = {}


def algos_for_env(env: str) -> tuple[str, ...]:
    """The algorithms with a preset on ``env``: all of them, less DQN on a continuous env."""
    if env in CONTINUOUS_ENVS:
        return tuple(algo for algo in ALGOS if algo != "DQN")
    return ALGOS


for _env in ENVS:
    for _algo in BASELINE_ALGOS:
        if _algo not in algos_for_env(_env):
            continue
        if (_algo, _env) in TUNED_BASELINES:
            BASELINES[(_algo, _env)] = TUNED_BASELINES[(_algo, _env)]
        elif _env in MINATAR_ENVS:
            _builder = with_minatar_cnn(CARTPOLE_SOURCES[_algo][0], CARTPOLE_MODELS[_algo])
            BASELINES[(_algo, _env)] = (_builder, fallback_source(_algo, _env))
        else:
            BASELINES[(_algo, _env)] = (CARTPOLE_SOURCES[_algo][0], fallback_source(_algo, _env))


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
        for algo in algos:
            if algo not in algos_for_env(env):
                raise ValueError(
                    f"{algo} has no preset on {env}: it has continuous actions and {algo} "
                    f"discrete ones only; allowed algorithms there are {list(algos_for_env(env))}"
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


def check_extras(envs) -> None:
    """ImportError naming the install command when an env's optional extra is missing."""
    for env in envs:
        if env in EXTRAS:
            require_extra(*EXTRAS[env])


def preset_config(algo: str, env: str) -> AlgorithmConfig:
    """The named preset of ``algo`` on ``env`` (StaQ: the env's tuned example)."""
    check_names([algo], [env])
    check_extras([env])
    # Tune's env registry lives in the Ray session: names registered when the package
    # was imported are gone after a ray.shutdown() and a new ray.init().
    envs.register_envs()
    if algo == "StaQ":
        example = load_tuned_example(STAQ_EXAMPLES[env])
        if env in MINATAR_ENVS:
            return example.build_config(game=MINATAR_ENVS[env])
        if env in MUJOCO_ENVS:
            return example.build_config(robot=MUJOCO_ENVS[env])
        return example.build_config()
    builder, _ = BASELINES[(algo, env)]
    return builder(env)


def preset_source(algo: str, env: str) -> str:
    check_names([algo], [env])
    if algo == "StaQ":
        return f"tuned_examples/{STAQ_EXAMPLES[env]}.py"
    return BASELINES[(algo, env)][1]
