"""rllib-staq: StaQ (Policy Mirror Descent with a stack of Q-functions) for RLlib."""

from ray.tune import register_trainable

from rllib_staq.staq import StaQ, StaQConfig

__all__ = ["StaQ", "StaQConfig"]
__version__ = "0.1.0"

# `tune.Tuner("StaQ", ...)` works once the package is imported.
register_trainable("StaQ", StaQ)
