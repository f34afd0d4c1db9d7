"""Learner connector piece that hands the EnvRunners' stack outputs to the learner.

While acting, the RL module returns the unscaled stack sum at ``obs_t`` (and the
version of the stack that computed it) as extra model outputs; RLlib stores them
in the episodes. For transition ``t`` the learner needs the sum at ``obs_{t+1}``,
which is the acting output of step ``t+1``. Only the last transition of an
episode chunk has no such output (its next observation is acted on, if at all,
in a later ``sample()`` call): it gets version -1, so the learner computes it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.utils.annotations import override
from ray.rllib.utils.typing import EpisodeType

from rllib_staq.staq_learner import (
    NEXT_STACK_SUM,
    NEXT_STACK_VERSION,
    STACK_SUM,
    STACK_VERSION,
)

NO_ACTING_OUTPUT = -1


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
            num_steps = len(sa_episode)
            module = rl_module[sa_episode.module_id or DEFAULT_MODULE_ID].unwrapped()
            sums = np.zeros((num_steps, module.num_actions), np.float32)
            versions = np.full(num_steps, NO_ACTING_OUTPUT, np.int64)
            # Episodes recorded by another algorithm lack the outputs: all rows
            # then keep version -1 and the learner computes them.
            if STACK_SUM in sa_episode.extra_model_outputs and num_steps > 1:
                # Transition t's next state is acting step t+1 (t < num_steps - 1).
                acted_next = slice(1, num_steps)
                sums[:-1] = sa_episode.get_extra_model_outputs(STACK_SUM, acted_next)
                versions[:-1] = sa_episode.get_extra_model_outputs(STACK_VERSION, acted_next)
            for column, items in ((NEXT_STACK_SUM, sums), (NEXT_STACK_VERSION, versions)):
                self.add_n_batch_items(
                    batch,
                    column,
                    items_to_add=np.asarray(items),
                    num_items=num_steps,
                    single_agent_episode=sa_episode,
                )
        return batch
