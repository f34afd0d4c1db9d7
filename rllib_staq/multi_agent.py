"""Multi-agent StaQ, the RLlib way: one StaQ module (stack, ensembles, table) per policy.

RLlib builds every module's ``model_config`` from the main config
(``AlgorithmConfig.get_multi_rl_module_spec``), so a per-module override
(``.rl_module(algorithm_config_overrides_per_module={...})``) of a setting
that shapes the module (``stack_size``, ``num_q_networks``, ``epsilon``) would
never reach it. :func:`module_model_config` puts each module's own values in.
The Learner reads everything else per module through
``config.get_config_for_module(module_id)``, as RLlib intends.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterator, Optional, Tuple

import gymnasium as gym
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.multi_agent_env import MultiAgentEnv
from ray.rllib.utils.typing import AgentID, ModuleID

from rllib_staq.settings import MODULE_SETTINGS


def agent_action_spaces(env: Any) -> Iterator[Tuple[Optional[AgentID], gym.Space]]:
    """``(agent_id, action space)`` per agent; ``(None, space)`` for a single-agent env.

    A ``MultiAgentEnv``'s ``action_space`` is None or a Dict over agents, so the
    spaces come from ``get_action_space(agent_id)``, as RLlib's EnvRunners read them.
    """
    unwrapped = getattr(env, "unwrapped", env)
    if isinstance(unwrapped, MultiAgentEnv) or isinstance(env, MultiAgentEnv):
        multi_agent_env = env if isinstance(env, MultiAgentEnv) else unwrapped
        agents = multi_agent_env.possible_agents or multi_agent_env.agents
        for agent_id in agents:
            yield agent_id, multi_agent_env.get_action_space(agent_id)
    else:
        yield None, env.action_space


def declared_action_spaces(config) -> Iterator[Tuple[Optional[str], gym.Space]]:
    """``(whose, space)`` for each action space the user gave the config itself.

    ``.environment(action_space=...)`` (for a multi-agent config: a Dict over agents,
    as PettingZoo wrappers report) and the ``action_space`` of a module in a
    user's ``MultiRLModuleSpec``. ``whose`` names the agent or module (None: the
    single-agent space).
    """
    space = config.action_space
    if space is not None:
        if config.is_multi_agent and isinstance(space, gym.spaces.Dict):
            for agent_id, agent_space in space.spaces.items():
                yield f"Agent {agent_id!r}", agent_space
        else:
            yield None, space
    spec = config._rl_module_spec
    if isinstance(spec, MultiRLModuleSpec):
        for module_id, module_spec in spec.rl_module_specs.items():
            if module_spec.action_space is not None:
                yield f"Module {module_id!r}", module_spec.action_space
    elif isinstance(spec, RLModuleSpec) and spec.action_space is not None:
        yield None, spec.action_space


def explicit_module_model_config(config, module_id: ModuleID) -> Dict[str, Any]:
    """The ``model_config`` the user gave this module in a ``MultiRLModuleSpec``."""
    spec = config._rl_module_spec
    if not isinstance(spec, MultiRLModuleSpec) or module_id not in spec.rl_module_specs:
        return {}
    model_config = spec.rl_module_specs[module_id].model_config
    return dict(model_config) if isinstance(model_config, dict) else {}


def module_setting_conflicts(config) -> Iterator[str]:
    """Messages for a module setting given two different values (none if consistent)."""
    main = config._model_config if isinstance(config._model_config, dict) else {}
    for name in MODULE_SETTINGS:
        if name in main and main[name] != getattr(config, name):
            yield (
                f"StaQ: `{name}` is {getattr(config, name)!r} in training() but "
                f"{main[name]!r} in rl_module(model_config=...); set it once, in "
                "training() (per module: algorithm_config_overrides_per_module)."
            )
    overrides_per_module = config.algorithm_config_overrides_per_module or {}
    for module_id, overrides in overrides_per_module.items():
        explicit = explicit_module_model_config(config, module_id)
        yield from override_conflicts(
            module_id, overrides, explicit, "algorithm_config_overrides_per_module"
        )


def override_conflicts(
    module_id: ModuleID, overrides: Dict[str, Any], explicit: Dict[str, Any], where: str
) -> Iterator[str]:
    """Messages for a module setting that ``overrides`` (given in ``where``) and the
    module's RLModuleSpec ``model_config`` (``explicit``) set to different values."""
    for name in sorted(set(MODULE_SETTINGS) & set(overrides) & set(explicit)):
        if overrides[name] != explicit[name]:
            yield (
                f"StaQ: `{name}` of module {module_id!r} is {overrides[name]!r} in {where} "
                f"but {explicit[name]!r} in its RLModuleSpec model_config; set it in one place."
            )


def module_model_config(config, module_id: ModuleID, model_config: Dict[str, Any]) -> Dict:
    """``model_config`` with this module's own overrides of the module settings."""
    overrides = (config.algorithm_config_overrides_per_module or {}).get(module_id, {})
    return with_module_settings(model_config, overrides)


def with_module_settings(model_config: Dict[str, Any], overrides: Dict[str, Any]) -> Dict:
    """``model_config`` with the module settings (``MODULE_SETTINGS``) among ``overrides``."""
    own = {name: overrides[name] for name in MODULE_SETTINGS if name in overrides}
    return {**model_config, **own} if own else model_config


def added_module_spec(
    config, module_id: ModuleID, module_spec: RLModuleSpec, overrides
) -> RLModuleSpec:
    """The spec of a module added to a built algorithm (``Algorithm.add_module``).

    RLlib builds it as given, so without this the module settings among its
    ``config_overrides`` (``MODULE_SETTINGS``: ``stack_size``, ``num_q_networks``,
    ``epsilon``, ``stack_dtype``) would never reach it. As
    :meth:`AlgorithmConfig.get_multi_rl_module_spec` does for the initial
    modules, a spec without ``model_config`` gets the main one.
    """
    given = dict(module_spec.model_config or {})
    for message in override_conflicts(module_id, overrides, given, "config_overrides"):
        raise ValueError(message)
    spec = copy.copy(module_spec)
    base = given if module_spec.model_config is not None else dict(config.model_config)
    spec.model_config = with_module_settings(base, overrides)
    return spec
