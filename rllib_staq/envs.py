"""The paper's environments under registered names, and the 2d+1 discrete-action wrapper.

Importing this module (``import rllib_staq`` does) registers, with ``ray.tune.register_env``:

- ``StaQ/MinAtar-<Game>-v1`` for Asterix, Breakout, Freeway, Seaquest and SpaceInvaders, built
  as the official StaQ code builds them: ``gymnasium.make("MinAtar/<Game>-v1")`` (minimal action
  sets), observations cast from bool to float32 ``(10, 10, C)`` (channels-last, as RLlib's CNNs
  expect), ``TimeLimit(5000)``, and MinAtar's own defaults (sticky actions with probability 0.1,
  difficulty ramping on). ``env_config`` may set ``sticky_action_prob``, ``difficulty_ramping`` and
  ``max_episode_steps``; any other key is refused.
- ``StaQ/<Robot>-v5`` for Hopper, Walker2d, HalfCheetah, Ant and Humanoid: gymnasium's ``-v5``
  robot wrapped in :class:`DiscreteBoxActions` (the authors used ``-v4``). ``env_config`` is passed
  to ``gymnasium.make`` as keyword arguments.

The creators import ``minatar`` and ``mujoco`` only when they build an env, so the core install
works without the extras; a missing extra raises an ``ImportError`` naming its install command.
Each creator registers MinAtar's gymnasium ids itself, so remote EnvRunners (separate
processes) find them too.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from ray.tune.registry import register_env

# MinAtar game -> observation channels (measured with minatar 1.0.15).
MINATAR_CHANNELS = {"Asterix": 4, "Breakout": 4, "Freeway": 7, "Seaquest": 10, "SpaceInvaders": 6}
# Actions of the -v1 ids (MinAtar's minimal action sets).
MINATAR_NUM_ACTIONS = {"Asterix": 5, "Breakout": 3, "Freeway": 3, "Seaquest": 6, "SpaceInvaders": 4}
MINATAR_GAMES = tuple(MINATAR_CHANNELS)
# Issue 12's target greedy returns at 500k env steps (the MinAtar tuned example's
# --stop-reward and the comparison's thresholds).
MINATAR_TARGET_RETURNS = {
    "Asterix": 5.0,
    "Breakout": 6.0,
    "Freeway": 20.0,
    "Seaquest": 2.0,
    "SpaceInvaders": 15.0,
}
# The official StaQ code caps every MinAtar episode at 5000 steps (MinAtar itself has no limit).
MINATAR_MAX_EPISODE_STEPS = 5000
MINATAR_ENV_CONFIG_KEYS = ("sticky_action_prob", "difficulty_ramping", "max_episode_steps")

MUJOCO_ROBOTS = ("Hopper", "Walker2d", "HalfCheetah", "Ant", "Humanoid")


def minatar_env_name(game: str) -> str:
    """The registered name of a MinAtar game, e.g. ``StaQ/MinAtar-Breakout-v1``."""
    return f"StaQ/MinAtar-{game}-v1"


def mujoco_env_name(robot: str) -> str:
    """The registered name of a discretised robot, e.g. ``StaQ/Hopper-v5``."""
    return f"StaQ/{robot}-v5"


MINATAR_ENV_NAMES = tuple(minatar_env_name(game) for game in MINATAR_GAMES)
MUJOCO_ENV_NAMES = tuple(mujoco_env_name(robot) for robot in MUJOCO_ROBOTS)


def require_extra(module: str, extra: str) -> None:
    """Raise an ImportError naming the install command when an optional module is missing."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"This environment needs the `{module}` package, which the `{extra}` extra installs: "
            f'pip install -e ".[{extra}]"  (or: pip install "rllib-staq[{extra}]").'
        )


class DiscreteBoxActions(gym.ActionWrapper):
    """A ``Box`` action space made ``Discrete(2d+1)``, the StaQ paper's scheme.

    With ``d`` action dimensions, ``mid = (low + high) / 2``:

    - action 0 puts every dimension at ``mid``;
    - action ``i`` in ``1..d`` puts dimension ``i-1`` at ``low`` and the others at ``mid``;
    - action ``d+i`` in ``d+1..2d`` puts dimension ``i-1`` at ``high`` and the others at ``mid``.

    Use: ``env = DiscreteBoxActions(gymnasium.make("Hopper-v5"))`` (7 actions).
    """

    def __init__(self, env: gym.Env):
        space = env.action_space
        if not isinstance(space, gym.spaces.Box):
            # The package's convention: a setting it cannot honour is a ValueError.
            raise ValueError(  # noqa: TRY004
                "DiscreteBoxActions needs a gymnasium.spaces.Box action space (allowed: Box with "
                f"finite bounds), got {space}."
            )
        if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            raise ValueError(
                "DiscreteBoxActions needs finite bounds (the actions are the bounds and their "
                f"midpoint), got low={space.low}, high={space.high}."
            )
        super().__init__(env)
        self._box_actions = self.action_table(space.low, space.high).astype(space.dtype)
        self.action_space = gym.spaces.Discrete(len(self._box_actions))

    @staticmethod
    def action_table(low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """The 2d+1 Box actions, one per row: ``[2d+1, *low.shape]`` (float64)."""
        low64 = np.asarray(low, dtype=np.float64).reshape(-1)  # [d]
        high64 = np.asarray(high, dtype=np.float64).reshape(-1)  # [d]
        num_dims = low64.size
        table = np.tile((low64 + high64) / 2.0, (2 * num_dims + 1, 1))  # [2d+1, d]
        joints = np.arange(num_dims)
        table[1 + joints, joints] = low64
        table[1 + num_dims + joints, joints] = high64
        return table.reshape((2 * num_dims + 1,) + np.shape(low))

    def action(self, action: Any) -> np.ndarray:
        index = int(action)
        if not 0 <= index < len(self._box_actions):
            raise ValueError(
                "DiscreteBoxActions: action must be in "
                f"0..{len(self._box_actions) - 1}, got {action}."
            )
        return self._box_actions[index].copy()


def make_minatar(game: str, env_config: Mapping[str, Any]) -> gym.Env:
    """A MinAtar game as the official StaQ code builds it (see the module docstring)."""
    if game not in MINATAR_CHANNELS:
        raise ValueError(f"MinAtar game must be one of {list(MINATAR_GAMES)}, got {game!r}.")
    unknown = sorted(set(env_config) - set(MINATAR_ENV_CONFIG_KEYS))
    if unknown:
        raise ValueError(
            f"env_config keys {unknown} are not MinAtar settings (allowed: "
            f"{list(MINATAR_ENV_CONFIG_KEYS)})."
        )
    require_extra("minatar", "minatar")
    import minatar.gym

    # gymnasium finds the MinAtar ids only after this has run in this process (remote
    # EnvRunners included); once is enough (again, gymnasium warns of overriding).
    if f"MinAtar/{game}-v1" not in gym.registry:
        minatar.gym.register_envs()
    game_kwargs = {
        key: env_config[key]
        for key in ("sticky_action_prob", "difficulty_ramping")
        if key in env_config
    }
    env = gym.make(f"MinAtar/{game}-v1", **game_kwargs)
    env = gym.wrappers.DtypeObservation(env, np.float32)
    max_steps = env_config.get("max_episode_steps", MINATAR_MAX_EPISODE_STEPS)
    return gym.wrappers.TimeLimit(env, max_episode_steps=max_steps)


def make_discrete_robot(robot: str, env_config: Mapping[str, Any]) -> gym.Env:
    """A gymnasium ``-v5`` MuJoCo robot with the 2d+1 discrete actions."""
    if robot not in MUJOCO_ROBOTS:
        raise ValueError(f"robot must be one of {list(MUJOCO_ROBOTS)}, got {robot!r}.")
    require_extra("mujoco", "mujoco")
    return DiscreteBoxActions(gym.make(f"{robot}-v5", **dict(env_config)))


def _minatar_creator(game: str):
    return lambda env_config: make_minatar(game, env_config)


def _robot_creator(robot: str):
    return lambda env_config: make_discrete_robot(robot, env_config)


def register_envs() -> dict[str, str]:
    """Register every name above with Tune (idempotent); returns ``{name: what it builds}``."""
    registered = {}
    for game in MINATAR_GAMES:
        register_env(minatar_env_name(game), _minatar_creator(game))
        registered[minatar_env_name(game)] = f"MinAtar/{game}-v1, float32, TimeLimit(5000)"
    for robot in MUJOCO_ROBOTS:
        register_env(mujoco_env_name(robot), _robot_creator(robot))
        registered[mujoco_env_name(robot)] = f"DiscreteBoxActions({robot}-v5)"
    return registered


register_envs()
