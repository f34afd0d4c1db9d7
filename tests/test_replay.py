"""One replay: each learner's transition table is StaQ's only copy (issue 14, item 2)."""

import pytest
import torch
from ray.rllib.core.columns import Columns

from rllib_staq import StaQ
from rllib_staq.replay import TransitionTable
from rllib_staq.staq import REPLAY_BUFFER_STATE_KEY

from conftest import tiny_config

MODULE_ID = "default_policy"


def _table(algo):
    return algo.learner_group._learner._tables[MODULE_ID]


def test_transitions_are_stored_once_with_rllib_style_metrics(ray_session):
    # 100 env steps per iteration into a table of 150: the third iteration evicts.
    algo = tiny_config(replay_buffer_config={"capacity": 150}, train_batch_size_per_learner=32)
    algo = algo.build_algo()
    try:
        assert algo.local_replay_buffer is None  # no second (RLlib) copy
        results = [algo.train() for _ in range(3)]
        assert _table(algo).size == 150
        replay = results[-1]["replay_buffer"]
        assert replay["num_module_steps_stored"][MODULE_ID] == 150
        assert replay["num_module_steps_added"][MODULE_ID] == 100
        assert replay["num_module_steps_added_lifetime"][MODULE_ID] == 300
        assert replay["num_module_steps_evicted"][MODULE_ID] == 100
        assert replay["num_module_steps_evicted_lifetime"][MODULE_ID] == 150
        # FQI samples grad_steps x batch transitions per iteration (with replacement).
        assert replay["num_module_steps_sampled"][MODULE_ID] == 10 * 32
        assert replay["num_module_steps_sampled_lifetime"][MODULE_ID] == 3 * 10 * 32
        assert results[0]["replay_buffer"]["num_module_steps_evicted"][MODULE_ID] == 0
    finally:
        algo.stop()


def test_table_keeps_the_newest_transitions_fifo():
    table = TransitionTable(capacity=5)
    for start in (0, 3, 6):
        values = torch.arange(start, start + 3, dtype=torch.float32)
        table.add({Columns.REWARDS: values})
    # 9 rows added to a ring of 5: rows 4..8 survive.
    assert sorted(table.filled(Columns.REWARDS).tolist()) == [4.0, 5.0, 6.0, 7.0, 8.0]
    table.add({Columns.REWARDS: torch.arange(100, 107, dtype=torch.float32)})
    assert sorted(table.filled(Columns.REWARDS).tolist()) == [102.0, 103.0, 104.0, 105.0, 106.0]


@pytest.mark.parametrize("store", [True, False])
def test_checkpoint_holds_the_table_only_when_asked(ray_session, tmp_path, store):
    algo = tiny_config(store_buffer_in_checkpoints=store).build_algo()
    try:
        algo.train()
        assert REPLAY_BUFFER_STATE_KEY not in algo.get_state()
        algo.save_to_path(str(tmp_path))
        restored = StaQ.from_checkpoint(str(tmp_path))
        try:
            tables = restored.learner_group._learner._tables
            if store:
                for key, column in _table(algo).columns.items():
                    torch.testing.assert_close(tables[MODULE_ID].filled(key), column[:100])
            else:
                assert MODULE_ID not in tables
        finally:
            restored.stop()
    finally:
        algo.stop()


def test_state_of_earlier_versions_with_an_rllib_buffer_copy_restores(ray_session):
    """Checkpoints of earlier versions also held RLlib's episode buffer (same data)."""
    algo = tiny_config(store_buffer_in_checkpoints=True).build_algo()
    try:
        algo.train()
        state = algo.get_state()
        state[REPLAY_BUFFER_STATE_KEY] = {"episodes": []}
        algo.set_state(state)
        assert _table(algo).size == 100
    finally:
        algo.stop()


def test_multi_agent_buffer_type_accepted_for_one_policy(ray_session):
    algo = tiny_config(replay_buffer_config={"type": "MultiAgentEpisodeReplayBuffer"}).build_algo()
    try:
        algo.train()
        assert _table(algo).size == 100
    finally:
        algo.stop()
