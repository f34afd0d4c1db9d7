"""Checkpoints restore the stack, networks, optimizer, counters and replay."""

import time

import numpy as np
import pytest
import torch

from rllib_staq import StaQ
from rllib_staq.torch.staq_torch_learner import NEXT_STACK_SUM

from conftest import tiny_config

MODULE_ID = "default_policy"


def _module(algo):
    return algo.learner_group._learner.module[MODULE_ID].unwrapped()


def _assert_state_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def _optimizer_state(algo):
    return algo.learner_group._learner.get_state(components="optimizer")["optimizer"]


@pytest.fixture(scope="module")
def trained_checkpoint(ray_session, tmp_path_factory):
    # stack_size=2 with 3 pushes: the ring has wrapped before the checkpoint.
    config = tiny_config(stack_size=2, store_buffer_in_checkpoints=True).env_runners(
        num_env_runners=1
    )
    algo = config.build_algo()
    for _ in range(3):
        algo.train()
    path = str(tmp_path_factory.mktemp("ckpt"))
    algo.save_to_path(path)
    yield algo, path
    algo.stop()


def test_from_checkpoint_restores_everything(trained_checkpoint):
    original, path = trained_checkpoint
    restored = StaQ.from_checkpoint(path)
    try:
        _assert_state_equal(_module(original).get_state(), _module(restored).get_state())
        assert int(_module(restored).num_pushes) == 3
        assert int(_module(restored).num_grad_steps) == 30
        assert restored.training_iteration == original.training_iteration == 3
        orig_opt, rest_opt = _optimizer_state(original), _optimizer_state(restored)
        assert str(orig_opt) == str(rest_opt)

        # Replay: the learner's table (StaQ's only replay copy) comes back.
        assert restored.local_replay_buffer is None
        orig_table = original.learner_group._learner._tables[MODULE_ID]
        rest_table = restored.learner_group._learner._tables[MODULE_ID]
        assert rest_table.size == orig_table.size == 300
        for key in orig_table.columns:
            torch.testing.assert_close(rest_table.filled(key), orig_table.filled(key))

        # The remote EnvRunner acts with the restored stack right away.
        obs = torch.randn(5, 4)
        learner_logits = _module(restored).stack_logits(obs)
        runner_logits = restored.env_runner_group.foreach_env_runner(
            lambda runner: runner.module.stack_logits(obs), local_env_runner=False
        )
        assert len(runner_logits) == 1
        torch.testing.assert_close(runner_logits[0], learner_logits)
        assert learner_logits.abs().sum() > 0

        # The next push lands in slot 3 % 2 = 1 and decays the other slot.
        decay_before = _module(restored).slot_decay.clone()
        restored.train()
        module = _module(restored)
        assert int(module.num_pushes) == 4
        assert module.slot_decay[1].item() == 1.0
        assert module.slot_decay[0].item() < 1.0 and decay_before[1] < 1.0
        assert torch.equal(module.stack_buffer("head.weight")[1 * 2], module.q_nets[0].head.weight)
    finally:
        restored.stop()


def test_restore_from_path_on_fresh_algorithm(trained_checkpoint):
    original, path = trained_checkpoint
    fresh = tiny_config(stack_size=2, store_buffer_in_checkpoints=True).build_algo()
    try:
        fresh.restore_from_path(path)
        _assert_state_equal(_module(original).get_state(), _module(fresh).get_state())
        local_logits = fresh.env_runner.module.stack_logits(torch.ones(2, 4))
        torch.testing.assert_close(local_logits, _module(fresh).stack_logits(torch.ones(2, 4)))
        assert fresh.learner_group._learner._tables[MODULE_ID].filled(NEXT_STACK_SUM).shape == (
            300,
            2,
        )
    finally:
        fresh.stop()


def test_restore_reaches_an_env_runner_busy_with_an_earlier_sync(trained_checkpoint):
    """RLlib drops a weight sync to an EnvRunner with one still in flight.

    Here an earlier "set_state" request is still running when the restore syncs
    (as the build's own sync can be while a runner starts); the runner must
    still act with the restored stack afterwards.
    """
    original, path = trained_checkpoint
    algo = (
        tiny_config(stack_size=2, store_buffer_in_checkpoints=True)
        .env_runners(num_env_runners=1)
        .build_algo()
    )
    try:
        algo.env_runner_group.foreach_env_runner_async(
            lambda runner: time.sleep(2.0), tag="set_state"
        )
        algo.restore_from_path(path)
        obs = torch.randn(5, 4)
        runner_logits = algo.env_runner_group.foreach_env_runner(
            lambda runner: runner.module.stack_logits(obs), local_env_runner=False
        )
        torch.testing.assert_close(runner_logits[0], _module(original).stack_logits(obs))
    finally:
        algo.stop()


def test_mismatched_checkpoint_raises_clear_error(trained_checkpoint):
    _, path = trained_checkpoint
    other = tiny_config(stack_size=5).build_algo()
    try:
        with pytest.raises(ValueError, match="Mismatched StaQ checkpoint.*stack_size=5"):
            other.restore_from_path(path)
    finally:
        other.stop()


def test_without_buffer_flag_no_replay_in_checkpoint(ray_session, tmp_path):
    algo = tiny_config().build_algo()
    try:
        algo.train()
        algo.save_to_path(str(tmp_path))
        restored = StaQ.from_checkpoint(str(tmp_path))
        assert MODULE_ID not in restored.learner_group._learner._tables
        _assert_state_equal(_module(algo).get_state(), _module(restored).get_state())
        restored.stop()
    finally:
        algo.stop()
