"""n-step FQI targets: the returns and horizons, the connector's rows, the target."""

import functools
import math

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from rllib_staq import pmd
from rllib_staq.connectors import n_step_columns
from rllib_staq.staq_learner import (
    N_STEP_HORIZONS,
    NEXT_STACK_SUM,
    NEXT_STACK_VERSION,
    STACK_SUM,
    STACK_VERSION,
)

from conftest import tiny_config

MODULE_ID = "default_policy"
GAMMA = 0.9


def test_horizons_look_ahead_n_steps_or_to_the_chunk_end():
    assert pmd.n_step_horizons(6, 3).tolist() == [3, 3, 3, 3, 2, 1]
    assert pmd.n_step_horizons(2, 5).tolist() == [2, 1]
    assert pmd.n_step_horizons(4, 1).tolist() == [1, 1, 1, 1]


def test_n_step_returns_are_the_discounted_sums_inside_the_chunk():
    rewards = torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0])
    returns = pmd.n_step_returns(rewards, GAMMA, 3)
    by_hand = [
        sum(GAMMA**j * rewards[t + j].item() for j in range(min(3, 5 - t))) for t in range(5)
    ]
    torch.testing.assert_close(returns, torch.tensor(by_hand))
    torch.testing.assert_close(pmd.n_step_returns(rewards, GAMMA, 1), rewards)


def test_soft_sarsa_target_discounts_the_bootstrap_by_gamma_to_the_horizon():
    rewards = torch.tensor([1.0, 2.0, 3.0])
    terminateds = torch.tensor([0.0, 0.0, 1.0])
    next_q = torch.tensor([[1.0, 3.0], [2.0, 0.0], [5.0, 5.0]])
    logits = torch.tensor([[0.0, 0.0], [1.0, -1.0], [0.0, 2.0]])
    horizons = torch.tensor([3, 1, 2])
    target = pmd.soft_sarsa_target(
        rewards, terminateds, next_q, logits, 0.5, GAMMA, 10.0, horizons=horizons
    )
    probs = torch.softmax(logits, -1)
    values = (probs * next_q).sum(-1) + 0.5 * pmd.categorical_entropy(logits)
    expected = [10.0 * 1.0 + GAMMA**3 * values[0], 10.0 * 2.0 + GAMMA * values[1], 30.0]
    torch.testing.assert_close(target, torch.tensor(expected))
    one_step = pmd.soft_sarsa_target(rewards, terminateds, next_q, logits, 0.5, GAMMA, 10.0)
    torch.testing.assert_close(
        one_step,
        pmd.soft_sarsa_target(
            rewards, terminateds, next_q, logits, 0.5, GAMMA, 10.0, horizons=torch.ones(3)
        ),
    )


def _episode(num_steps: int, terminated: bool) -> SingleAgentEpisode:
    """A chunk whose observation t is [t], reward t is t + 1, acting sum t is [t, -t]."""
    return SingleAgentEpisode(
        observations=[np.array([float(t)], np.float32) for t in range(num_steps + 1)],
        actions=[0] * num_steps,
        rewards=[float(t + 1) for t in range(num_steps)],
        extra_model_outputs={
            STACK_SUM: [np.array([t, -t], np.float32) for t in range(num_steps)],
            STACK_VERSION: [7] * num_steps,
        },
        terminated=terminated,
        len_lookback_buffer=0,
    )


@pytest.mark.parametrize("terminated", [True, False])
@pytest.mark.parametrize("as_numpy", [True, False])
def test_connector_rows_bootstrap_from_the_state_their_horizon_reaches(terminated, as_numpy):
    episode = _episode(5, terminated)
    if as_numpy:  # as EnvRunners send them
        episode = episode.to_numpy()
    columns = n_step_columns(episode, n_step=3, gamma=GAMMA, num_actions=2)
    horizons = [3, 3, 3, 2, 1]
    assert columns[N_STEP_HORIZONS].tolist() == horizons
    # Observation t + k_t, the state the target bootstraps from.
    assert np.asarray(columns[Columns.NEXT_OBS])[:, 0].tolist() == [3.0, 4.0, 5.0, 5.0, 5.0]
    expected_returns = [
        sum(GAMMA**j * (t + j + 1) for j in range(k)) for t, k in enumerate(horizons)
    ]
    np.testing.assert_allclose(columns[Columns.REWARDS], expected_returns, rtol=1e-6)
    # Only the rows whose horizon reaches the chunk's end see its termination.
    reaches_end = [False, False, True, True, True]
    assert columns[Columns.TERMINATEDS].tolist() == [terminated and end for end in reaches_end]
    # pi_k at t + k_t comes from acting step t + k_t; the chunk's last state was
    # never acted on in this chunk (version -1: the learner computes it).
    assert columns[NEXT_STACK_SUM][:2].tolist() == [[3.0, -3.0], [4.0, -4.0]]
    assert columns[NEXT_STACK_VERSION].tolist() == [7, 7, -1, -1, -1]


def test_learner_target_uses_the_row_horizons(ray_session):
    algo = tiny_config(n_step=3, expected_next_value=True, reward_scale=10.0).build_algo()
    try:
        learner = algo.learner_group._learner
        module = learner.module[MODULE_ID].unwrapped()
        batch = {
            Columns.REWARDS: torch.tensor([1.0, 0.5]),
            Columns.TERMINATEDS: torch.tensor([0.0, 0.0]),
            Columns.NEXT_OBS: torch.randn(2, 4),
            NEXT_STACK_SUM: torch.tensor([[0.0, 1.0], [2.0, 0.0]]),
            N_STEP_HORIZONS: torch.tensor([3.0, 2.0]),
        }
        target = learner._fqi_target(MODULE_ID, module, batch, 0.3)
        with torch.no_grad():
            next_q = torch.stack([net(batch[Columns.NEXT_OBS]) for net in module.target_q_nets])
        logits = module.logit_scale * batch[NEXT_STACK_SUM]
        reference = functools.partial(
            pmd.soft_sarsa_target,
            batch[Columns.REWARDS],
            batch[Columns.TERMINATEDS],
            next_q.mean(0),
            logits,
            0.3,
            0.99,
            10.0,
        )
        torch.testing.assert_close(target, reference(horizons=batch[N_STEP_HORIZONS]))
        assert not torch.allclose(target, reference())
    finally:
        algo.stop()


def test_cartpole_table_holds_n_step_rows_with_their_pi_k(ray_session):
    """On a real env: CartPole pays 1 per step, so each row's return is a closed form;
    the cached next-state logits (partly the EnvRunners' acting outputs, shifted
    by the horizon) match the full stack at the stored next observations."""
    algo = (
        tiny_config(n_step=3, exact_refresh_interval=1000, lr=1e-2)
        .env_runners(num_env_runners=1, num_envs_per_env_runner=2)
        .build_algo()
    )
    try:
        for _ in range(3):
            algo.train()
        learner = algo.learner_group._learner
        table = learner._tables[MODULE_ID]
        horizons = table.filled(N_STEP_HORIZONS)
        assert set(horizons.tolist()) <= {1.0, 2.0, 3.0}
        assert (horizons == 3).float().mean() > 0.8
        closed_form = (1 - 0.99**horizons) / (1 - 0.99)
        torch.testing.assert_close(table.filled(Columns.REWARDS), closed_form)
        module = learner.module[MODULE_ID].unwrapped()
        with torch.no_grad():
            exact = module.stack_logits(table.filled(Columns.NEXT_OBS))
        assert exact.abs().max() > 1e-2
        cached = learner.cached_next_state_logits(MODULE_ID)
        assert (cached - exact).abs().max() / exact.abs().max() <= 1e-4
        assert math.isfinite(algo.train()["learners"][MODULE_ID]["td_loss"])
    finally:
        algo.stop()


def test_tables_checkpointed_before_n_step_restore_as_one_step_rows(ray_session):
    """A table saved without horizons (older versions) holds 1-step rows, and
    n-step rows can be added to it after the restore."""
    from rllib_staq.torch.staq_torch_learner import REPLAY_STATE_KEY

    algo = tiny_config(n_step=3, store_buffer_in_checkpoints=True).build_algo()
    try:
        algo.train()
        learner = algo.learner_group._learner
        state = learner.get_state()
        old_table = state[REPLAY_STATE_KEY][MODULE_ID]
        del old_table["columns"][N_STEP_HORIZONS]
        learner.set_state(state)
        table = learner._tables[MODULE_ID]
        assert table.filled(N_STEP_HORIZONS).eq(1.0).all()
        size = table.size
        algo.train()
        assert table.filled(N_STEP_HORIZONS)[size:].eq(3.0).any()
    finally:
        algo.stop()
