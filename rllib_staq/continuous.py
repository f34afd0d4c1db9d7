"""Continuous-action (Box) StaQ: config glue (issue 15).

The PMD step and its finite-memory stack are the discrete ones: with the same
alpha, beta and correction c,
``xi_{k+1}(s, a) = c * alpha * sum_{i<min(k+1,M)} beta^i * mean_e Q_{k-i,e}(s, a)``
and ``pi_{k+1} ∝ exp(xi_{k+1})``. A finite action set lets the discrete module
act with softmax(xi) exactly; on the box [-1, 1]^d (RLlib's normalised actions)
the normaliser is an integral, so a tanh-squashed Gaussian actor is fitted to
exp(xi_{k+1}) by the reverse KL after each push (the stack is its exact target)
and only the actor acts (``rllib_staq/torch/continuous_staq_torch_rl_module.py``,
``rllib_staq/torch/continuous_staq_torch_learner.py``).

``StaQConfig`` picks the module and learner by the action space, as RLlib's SAC
picks its networks for Discrete or Box: :func:`config_action_space` resolves the
space (``config.action_space``, or the env's, made once per env and config).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterator, Optional, Tuple

import gymnasium as gym
import numpy as np

# Settings only the Box path reads, with their defaults (StaQConfig.__init__).
BOX_ONLY_DEFAULTS: Dict[str, Any] = {
    "actor_lr": 3e-4,
    "actor_steps_per_iteration": 250,
    "actor_fit": "reverse_kl",
    "weighted_ml_states": 2048,
    "weighted_ml_actions": 16,
    "weighted_ml_uniform_fraction": 0.0,
}
# Settings of one actor fit only: refused under the other unless at their default.
WEIGHTED_ML_ONLY = ("weighted_ml_states", "weighted_ml_actions", "weighted_ml_uniform_fraction")
# Settings without a meaning for a Box action space: refused there unless left at
# their default, with the reason.
DISCRETE_ONLY_REASONS: Dict[str, Tuple[Any, str]] = {
    "expected_next_value": (
        False,
        "the exact expectation over pi_k needs a finite action set; the Box target "
        "samples one a' ~ pi_theta_k",
    ),
    "exact_refresh_interval": (
        300,
        "the Box path keeps no next-state stack cache (its FQI target needs only the actor)",
    ),
    "stack_dtype": (
        "float32",
        "the Box path's EnvRunners hold only the actor, no acting stack",
    ),
    "fqi_matmul_dtype": ("float32", "the Box critics' FQI has no bf16 autocast path"),
    "n_step": (1, "the Box critics' FQI targets are 1-step"),
}

_SPACE_CACHE: Dict[Tuple[str, str], gym.Space] = {}


def is_box_action_space(space: Optional[gym.Space]) -> bool:
    return isinstance(space, gym.spaces.Box)


def box_action_space_error(space: gym.spaces.Box) -> Optional[str]:
    """Why StaQ's Box path cannot take ``space`` (None if it can)."""
    if len(space.shape) != 1:
        return (
            f"StaQ's continuous path needs a 1-D Box action space (shape (d,)), got shape "
            f"{space.shape}; flatten the action space in an env wrapper."
        )
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        return (
            "StaQ's continuous path needs finite action bounds (pi_0 is uniform on the "
            f"box), got low={space.low}, high={space.high}."
        )
    return None


def _env_key(config) -> Optional[Tuple[str, str]]:
    env = config.env
    if env is None:
        return None
    name = env if isinstance(env, str) else f"{getattr(env, '__module__', '')}.{id(env)}"
    return name, repr(sorted((str(k), repr(v)) for k, v in dict(config.env_config).items()))


def config_action_space(config) -> Optional[gym.Space]:
    """The single-agent action space the config will train on (None if unknown).

    ``config.action_space`` if given; else the env's, from one env made with
    RLlib's own env resolution (cached per env and env_config in this process).
    A multi-agent env gives None (StaQ's Box path is single-agent).
    """
    if config.action_space is not None:
        return config.action_space
    key = _env_key(config)
    if key is None:
        return None
    if key not in _SPACE_CACHE:
        from ray.rllib.algorithms.algorithm import Algorithm
        from ray.rllib.env.env_context import EnvContext
        from ray.rllib.env.multi_agent_env import MultiAgentEnv

        _, creator = Algorithm._get_env_id_and_creator(config.env, config)
        try:
            env = creator(EnvContext(copy.deepcopy(dict(config.env_config)), worker_index=0))
        except Exception:
            # Unknown here: the env's own error surfaces where RLlib builds it
            # (in the EnvRunners, and in a Tune trial as that trial's error).
            return None
        try:
            multi = isinstance(env, MultiAgentEnv) or isinstance(
                getattr(env, "unwrapped", None), MultiAgentEnv
            )
            _SPACE_CACHE[key] = None if multi else env.action_space
        finally:
            env.close()
    return _SPACE_CACHE[key]


def uses_box_path(config) -> bool:
    """Whether StaQ trains this config with the continuous module and learner."""
    return is_box_action_space(config_action_space(config))


def setting_conflicts(config, box: bool) -> Iterator[str]:
    """Messages for settings that do not apply to this action space (none if fine)."""
    if box:
        for name, (default, reason) in DISCRETE_ONLY_REASONS.items():
            value = getattr(config, name, default)
            if value != default:
                yield (
                    f"StaQ: `{name}` must stay {default!r} for a Box action space ({reason}), "
                    f"got {value!r}."
                )
        if (config.num_learners or 0) > 1:
            yield (
                "StaQ: `num_learners` must be 0 or 1 for a Box action space (the continuous "
                f"learner does not synchronise gradients across learners yet), got "
                f"{config.num_learners!r}."
            )
        if config.is_multi_agent:
            yield "StaQ: the continuous (Box) path is single-agent; got a multi-agent config."
        if config.actor_fit != "weighted_ml":
            for name in WEIGHTED_ML_ONLY:
                default, value = BOX_ONLY_DEFAULTS[name], getattr(config, name)
                if value != default:
                    yield (
                        f"StaQ: `{name}` is used only with actor_fit='weighted_ml'; leave it "
                        f"at {default!r} for actor_fit={config.actor_fit!r}, got {value!r}."
                    )
        return
    for name, default in BOX_ONLY_DEFAULTS.items():
        value = getattr(config, name, default)
        if value != default:
            yield (
                f"StaQ: `{name}` is used only with a Box action space (the continuous "
                f"actor); leave it at {default!r} for this discrete env, got {value!r}."
            )


def accepts_action_space(space: gym.Space) -> bool:
    """True for a Box StaQ can train; raises ValueError for a Box it cannot; else False."""
    if not is_box_action_space(space):
        return False
    message = box_action_space_error(space)
    if message is not None:
        raise ValueError(message)
    return True
