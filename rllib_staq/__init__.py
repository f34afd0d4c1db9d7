"""rllib-staq: StaQ (Policy Mirror Descent with a stack of Q-functions) for RLlib."""

from ray.tune import register_trainable

# Importing `envs` registers the paper's MinAtar games and discretised robots with Tune
# (`StaQ/MinAtar-Breakout-v1`, `StaQ/Hopper-v5`, ...; README "Environments").
from rllib_staq.envs import DiscreteBoxActions
from rllib_staq.evaluation import first_episode_evaluation
from rllib_staq.staq import StaQ, StaQConfig

__all__ = ["DiscreteBoxActions", "StaQ", "StaQConfig", "first_episode_evaluation"]
__version__ = "0.1.0"

# `tune.Tuner("StaQ", ...)` works once the package is imported.
register_trainable("StaQ", StaQ)
