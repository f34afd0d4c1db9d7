"""Learner connector pieces: the EnvRunners' stack outputs, and n-step transitions.

While acting, the RL module returns the unscaled stack sum at ``obs_t`` (and the
version of the stack that computed it) as extra model outputs; RLlib stores them
in the episodes. For transition ``t`` the learner needs the sum at ``obs_{t+1}``,
which is the acting output of step ``t+1``. Only the last transition of an
episode chunk has no such output (its next observation is acted on, if at all,
in a later ``sample()`` call): it gets version -1, so the learner computes it.

With ``n_step`` > 1, a second piece writes each transition's n-step return and
the observation (and acting output) n steps ahead instead.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.utils.annotations import override
from ray.rllib.utils.typing import EpisodeType

from rllib_staq import pmd
from rllib_staq.staq_learner import (
    N_STEP_HORIZONS,
    NEXT_STACK_SUM,
    NEXT_STACK_VERSION,
    STACK_SUM,
    STACK_VERSION,
)

NO_ACTING_OUTPUT = -1


def next_state_acting_outputs(sa_episode, num_actions: int) -> Tuple[np.ndarray, np.ndarray]:
    """The stack sum at each transition's next state, and its stack version.

    Returns ``[T, A]`` float32 and ``[T]`` int64 for the ``T`` transitions of one
    episode chunk; rows without an acting output get version -1.
    """
    num_steps = len(sa_episode)
    sums = np.zeros((num_steps, num_actions), np.float32)
    versions = np.full(num_steps, NO_ACTING_OUTPUT, np.int64)
    # Episodes recorded by another algorithm lack the outputs: all rows
    # then keep version -1 and the learner computes them.
    if STACK_SUM in sa_episode.extra_model_outputs and num_steps > 1:
        # Transition t's next state is acting step t+1 (t < num_steps - 1).
        acted_next = slice(1, num_steps)
        sums[:-1] = sa_episode.get_extra_model_outputs(STACK_SUM, acted_next)
        versions[:-1] = sa_episode.get_extra_model_outputs(STACK_VERSION, acted_next)
    return sums, versions


class AddNextStackSumsFromEpisodesToTrainBatch(ConnectorV2):
    """Adds ``NEXT_STACK_SUM`` ``[n, A]`` and ``NEXT_STACK_VERSION`` ``[n]`` columns."""

    @override(ConnectorV2)
    def __call__(
        self,
        *,
        rl_module: RLModule,
        batch: Dict[str, Any],
        episodes: List[EpisodeType],
        explore: Optional[bool] = None,
        shared_data: Optional[dict] = None,
        **kwargs,
    ) -> Any:
        if NEXT_STACK_SUM in batch:
            return batch
        for sa_episode in self.single_agent_episode_iterator(
            episodes, agents_that_stepped_only=False
        ):
            module = rl_module[sa_episode.module_id or DEFAULT_MODULE_ID].unwrapped()
            sums, versions = next_state_acting_outputs(sa_episode, module.num_actions)
            _add_episode_columns(
                batch, sa_episode, {NEXT_STACK_SUM: sums, NEXT_STACK_VERSION: versions}
            )
        return batch


class AddNStepTransitionsFromEpisodesToTrainBatch(ConnectorV2):
    """Writes n-step transitions: REWARDS, TERMINATEDS, NEXT_OBS, the next-state
    acting outputs and ``N_STEP_HORIZONS`` ``[n]``.

    Transition t of an episode chunk of T steps looks ``k_t = min(n, T - t)``
    steps ahead (:func:`pmd.n_step_horizons`): REWARDS holds the discounted sum
    of its ``k_t`` rewards (:func:`pmd.n_step_returns`), NEXT_OBS the observation
    ``k_t`` steps ahead and TERMINATEDS whether the episode terminated there.
    It runs before RLlib's pieces that add these columns (each skips a column
    that is already in the batch), so the learner's table stores n-step rows.

    Args:
        n_step_and_gamma: ``module_id -> (n_step, gamma)`` of that module's config.
    """

    def __init__(self, *args, n_step_and_gamma: Callable[[Any], Tuple[int, float]], **kwargs):
        super().__init__(*args, **kwargs)
        self._n_step_and_gamma = n_step_and_gamma

    @override(ConnectorV2)
    def __call__(
        self,
        *,
        rl_module: RLModule,
        batch: Dict[str, Any],
        episodes: List[EpisodeType],
        explore: Optional[bool] = None,
        shared_data: Optional[dict] = None,
        **kwargs,
    ) -> Any:
        if N_STEP_HORIZONS in batch:
            return batch
        for sa_episode in self.single_agent_episode_iterator(
            episodes, agents_that_stepped_only=False
        ):
            module_id = sa_episode.module_id or DEFAULT_MODULE_ID
            n_step, gamma = self._n_step_and_gamma(module_id)
            num_actions = rl_module[module_id].unwrapped().num_actions
            columns = n_step_columns(sa_episode, n_step, gamma, num_actions)
            _add_episode_columns(batch, sa_episode, columns)
        return batch


def _add_episode_columns(batch: Dict[str, Any], sa_episode, columns: Dict[str, Any]) -> None:
    """Adds one episode chunk's ``[T, ...]`` items per column, keyed by that episode."""
    for column, items in columns.items():
        ConnectorV2.add_n_batch_items(
            batch,
            column,
            items_to_add=items,
            num_items=len(sa_episode),
            single_agent_episode=sa_episode,
        )


def n_step_columns(sa_episode, n_step: int, gamma: float, num_actions: int) -> Dict[str, Any]:
    """One episode chunk's n-step columns, each ``[T, ...]`` (the piece above says what)."""
    num_steps = len(sa_episode)
    horizons = pmd.n_step_horizons(num_steps, n_step)  # [T]
    last = (torch.arange(num_steps) + horizons - 1).numpy()  # each horizon's last step
    rewards = torch.as_tensor(np.asarray(sa_episode.get_rewards(), np.float32))
    terminateds = np.zeros(num_steps, bool)
    if sa_episode.is_terminated:  # only the chunk's last step can end the episode
        terminateds[last == num_steps - 1] = True
    sums, versions = next_state_acting_outputs(sa_episode, num_actions)
    return {
        Columns.REWARDS: pmd.n_step_returns(rewards, gamma, n_step).numpy(),
        Columns.TERMINATEDS: terminateds,
        # Observation t + k_t (a list, or a batched struct for a numpy'ed episode).
        Columns.NEXT_OBS: sa_episode.get_observations(indices=(last + 1).tolist()),
        NEXT_STACK_SUM: sums[last],
        NEXT_STACK_VERSION: versions[last],
        N_STEP_HORIZONS: horizons.numpy(),
    }
