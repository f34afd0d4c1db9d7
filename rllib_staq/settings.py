"""StaQ's settings: what each one allows, and keeping them through RLlib's config state.

Every StaQ setting is checked where it is set (``StaQConfig.training()``) and
again by ``validate()`` (a config can also be changed by attribute, by
``update_from_dict`` or per module). RLlib's ``AlgorithmConfig.get_state()``
drops every attribute equal to its ``DEPRECATED_VALUE`` (-1), and ``build_algo()``
rebuilds the config from that state, so a setting of -1 would silently become
the default; :func:`restore_dropped_settings` puts such values back, so that
``validate()`` sees (and refuses) what the user set.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from ray._common.deprecation import DEPRECATED_VALUE

from rllib_staq import threads

ENSEMBLE_TARGETS = ("mean", "min")
# Replay types whose behaviour StaQ's learner-side transition table honours:
# uniform sampling (with replacement) of the newest `capacity` transitions.
REPLAY_BUFFER_TYPES = ("EpisodeReplayBuffer", "MultiAgentEpisodeReplayBuffer")
# `metrics_num_episodes_for_smoothing` is the key RLlib's Algorithm adds to the
# config of an episode buffer it builds (in configs saved by earlier versions).
REPLAY_BUFFER_KEYS = {"type", "capacity", "metrics_num_episodes_for_smoothing"}
# Settings the algorithm (not a module's learner) reads: one value for all modules.
ALGORITHM_WIDE_SETTINGS = (
    "env_steps_per_iteration",
    "store_buffer_in_checkpoints",
    "replay_buffer_config",
    "intra_op_threads",
)
# Settings that shape a module; RLlib passes them through `model_config`.
MODULE_SETTINGS = ("stack_size", "num_q_networks", "epsilon", "stack_dtype")
# Storage of the acting stack on EnvRunners (the learner's stack stays float32).
STACK_DTYPES = ("float32", "bfloat16")
ACTOR_FITS = ("reverse_kl", "weighted_ml")
# Matrix products of the discrete FQI passes (experimental bf16 autocast).
FQI_MATMUL_DTYPES = ("float32", "bfloat16")


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _is_int_at_least_one(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _is_positive(value: Any) -> bool:
    return _is_number(value) and value > 0


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_value_or_schedule(is_allowed_value: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A value, or an RLlib schedule ``[[env_step, value], ...]`` starting at env step 0."""

    def check(value: Any) -> bool:
        if not isinstance(value, (list, tuple)):
            return is_allowed_value(value)
        if not value or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
            return False
        steps = [step for step, _ in value]
        return (
            all(_is_number(step) for step in steps)
            and steps[0] == 0
            and all(a < b for a, b in zip(steps, steps[1:]))
            and all(is_allowed_value(v) for _, v in value)
        )

    return check


_INT_AT_LEAST_ONE = (_is_int_at_least_one, "an int >= 1")
_POSITIVE = (_is_positive, "a finite number > 0")
_BOOL = (_is_bool, "True or False")
_SCHEDULE = "(a float or a [[env_step, value], ...] schedule starting at env_step 0)"

# setting -> (check, allowed values in words)
SETTING_CHECKS: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "stack_size": _INT_AT_LEAST_ONE,
    "kl_coeff": _POSITIVE,
    "entropy_coeff": (_is_value_or_schedule(_is_positive), f"> 0 {_SCHEDULE}"),
    "scale_entropy_by_log_actions": _BOOL,
    "weight_correction": _BOOL,
    "epsilon": (
        _is_value_or_schedule(lambda v: _is_number(v) and 0.0 <= v <= 1.0),
        f"in [0, 1] {_SCHEDULE}",
    ),
    "env_steps_per_iteration": _INT_AT_LEAST_ONE,
    "grad_steps_per_iteration": _INT_AT_LEAST_ONE,
    "train_batch_size_per_learner": _INT_AT_LEAST_ONE,
    "lr": _POSITIVE,
    "gamma": (lambda v: _is_number(v) and 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "target_network_update_freq": _INT_AT_LEAST_ONE,
    "tau": (lambda v: _is_number(v) and 0.0 < v <= 1.0, "in (0, 1] (1.0 = hard target copy)"),
    "num_q_networks": _INT_AT_LEAST_ONE,
    "ensemble_target": (lambda v: v in ENSEMBLE_TARGETS, f"one of {ENSEMBLE_TARGETS}"),
    "reward_scale": _POSITIVE,
    "expected_next_value": _BOOL,
    # One n for every transition (RLlib's DQN also takes a (low, high) range).
    "n_step": _INT_AT_LEAST_ONE,
    "replay_buffer_config": (
        lambda v: isinstance(v, dict),
        "a dict such as {'type': 'EpisodeReplayBuffer', 'capacity': 50000}",
    ),
    "store_buffer_in_checkpoints": _BOOL,
    "exact_refresh_interval": _INT_AT_LEAST_ONE,
    "intra_op_threads": (threads.is_valid_setting, '"auto", an int >= 1 or None'),
    "actor_lr": _POSITIVE,
    "actor_steps_per_iteration": _INT_AT_LEAST_ONE,
    "actor_fit": (lambda v: v in ACTOR_FITS, f"one of {ACTOR_FITS}"),
    "weighted_ml_states": _INT_AT_LEAST_ONE,
    # One action per state gives every weight 1: the fit would copy the proposal.
    "weighted_ml_actions": (
        lambda v: _is_int_at_least_one(v) and v >= 2,
        "an int >= 2 (with 1 every weight is 1 and the fit copies the proposal)",
    ),
    # 1 would ignore the actor: the fit could not sharpen beyond what uniform samples show.
    "weighted_ml_uniform_fraction": (
        lambda v: _is_number(v) and 0.0 <= v < 1.0,
        "a number in [0, 1) (the expected share of uniform proposal actions)",
    ),
    "stack_dtype": (lambda v: v in STACK_DTYPES, f"one of {STACK_DTYPES}"),
    "fqi_matmul_dtype": (lambda v: v in FQI_MATMUL_DTYPES, f"one of {FQI_MATMUL_DTYPES}"),
}


def setting_error(name: str, value: Any, where: str = "") -> Optional[str]:
    """The error message for ``name=value``, or None if the value is allowed."""
    if name not in SETTING_CHECKS:
        return None
    is_allowed, allowed = SETTING_CHECKS[name]
    try:
        ok = bool(is_allowed(value))
    except (TypeError, ValueError):
        ok = False
    if ok:
        return None
    return f"StaQ: `{name}`{where} must be {allowed}, got {value!r}."


def tune_search_space_values(value: Any) -> Optional[list]:
    """The values a Tune search space set on a setting can take, or None for a plain value.

    ``tune.grid_search([...])`` and categorical domains (``tune.choice``) give
    their values; other domains (``tune.uniform``, ...) give [] here: Tune
    samples them in each trial, where ``validate()`` checks the sampled value
    before anything runs.
    """
    if isinstance(value, dict) and set(value) == {"grid_search"}:
        return list(value["grid_search"])
    from ray.tune.search.sample import Categorical, Domain

    if isinstance(value, Categorical):
        return list(value.categories)
    if isinstance(value, Domain):
        return []
    return None


def search_space_errors(name: str, value: Any) -> Iterable[str]:
    """:func:`setting_error` for a value or for each value of a Tune search space."""
    candidates = tune_search_space_values(value)
    if candidates is None:
        message = setting_error(name, value)
        if message is not None:
            yield message
        return
    for candidate in candidates:
        message = setting_error(name, candidate, where=" (a value of its Tune search space)")
        if message is not None:
            yield message


def replay_buffer_config_errors(replay_buffer_config: Dict[str, Any]) -> Iterable[str]:
    """Messages for a ``replay_buffer_config`` StaQ cannot honour (empty if fine)."""
    buffer_type = replay_buffer_config.get("type")
    if buffer_type not in REPLAY_BUFFER_TYPES:
        yield (
            f"StaQ: `replay_buffer_config['type']` must be one of {REPLAY_BUFFER_TYPES} "
            f"(StaQ's FQI samples uniformly from a transition table on each learner), "
            f"got {buffer_type!r}."
        )
    capacity = replay_buffer_config.get("capacity")
    if not _is_int_at_least_one(capacity):
        yield f"StaQ: `replay_buffer_config['capacity']` must be an int >= 1, got {capacity!r}."
    unknown = sorted(set(replay_buffer_config) - REPLAY_BUFFER_KEYS)
    if unknown:
        yield (
            f"StaQ: `replay_buffer_config` keys {unknown} are not used by StaQ's replay "
            f"(allowed keys: {sorted(REPLAY_BUFFER_KEYS)})."
        )


def is_deprecated_marker(value: Any) -> bool:
    """Whether RLlib's ``get_state()`` drops ``value`` (it equals ``DEPRECATED_VALUE``)."""
    try:
        return bool(value == DEPRECATED_VALUE)
    except (TypeError, ValueError):
        return False


def restore_dropped_settings(
    state: Dict[str, Any], attributes: Dict[str, Any], defaults: Dict[str, Any]
) -> Dict[str, Any]:
    """Puts back into ``state`` the -1 values RLlib's ``get_state()`` dropped.

    Only attributes whose default is not -1 itself (RLlib's deprecated fields
    stay dropped, as RLlib wants), so ``from_state`` rebuilds what was set.
    """
    for name, value in attributes.items():
        if name in state or name not in defaults or not is_deprecated_marker(value):
            continue
        if not is_deprecated_marker(defaults[name]):
            state[name] = value
    return state
