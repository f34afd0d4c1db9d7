"""The learner: loss vs a hand-computed soft target, one update = one iteration."""

import math

import pytest
import torch
from ray.rllib.core.columns import Columns

from rllib_staq import pmd
from rllib_staq.torch.default_staq_torch_rl_module import QF_TARGET_NEXT_PREDS
from rllib_staq.torch.staq_torch_learner import FQI_TARGETS, NEXT_STACK_SUM, adam

from conftest import tiny_config

MODULE_ID = "default_policy"


@pytest.fixture(scope="module")
def algo(ray_session):
    algo = tiny_config(
        expected_next_value=True, target_network_update_freq=5, reward_scale=10.0
    ).build_algo()
    yield algo
    algo.stop()


def _learner(algo):
    return algo.learner_group._learner


def test_loss_equals_hand_computed_soft_target(algo):
    learner = _learner(algo)
    module = learner.module[MODULE_ID].unwrapped()
    with torch.no_grad():
        for param in module.target_q_nets.parameters():
            param.normal_()
        for param in module.q_nets.parameters():
            param.normal_()
    batch = {
        Columns.OBS: torch.randn(3, 4),
        Columns.ACTIONS: torch.tensor([0, 1, 1]),
        Columns.REWARDS: torch.tensor([1.0, 0.0, 2.0]),
        Columns.TERMINATEDS: torch.tensor([0.0, 0.0, 1.0]),
        Columns.NEXT_OBS: torch.randn(3, 4),
        NEXT_STACK_SUM: torch.tensor([[0.0, 0.0], [1.0, -1.0], [3.0, 0.0]]),
    }
    tau = 0.7
    scale_before = module.logit_scale.clone()
    module.logit_scale.fill_(0.5)  # xi = 0.5 * cached unscaled sum
    target = learner._fqi_target(MODULE_ID, module, batch, tau)
    module.logit_scale.copy_(scale_before)

    # By hand: mean over the target ensemble, exact expectation, entropy bonus.
    with torch.no_grad():
        q_next = torch.stack([net(batch[Columns.NEXT_OBS]) for net in module.target_q_nets]).mean(0)
    expected = []
    for i in range(3):
        probs = torch.softmax(0.5 * batch[NEXT_STACK_SUM][i], -1)
        entropy = -sum(p * math.log(p) for p in probs.tolist())
        value = float((probs * q_next[i]).sum()) + tau * entropy
        done = batch[Columns.TERMINATEDS][i].item()
        expected.append(10.0 * batch[Columns.REWARDS][i].item() + 0.99 * (1 - done) * value)
    torch.testing.assert_close(target, torch.tensor(expected), rtol=1e-5, atol=1e-5)

    batch[FQI_TARGETS] = target
    fwd_out = learner.module[MODULE_ID].forward_train(batch)
    loss = learner.compute_loss_for_module(
        module_id=MODULE_ID, config=algo.config, batch=batch, fwd_out=fwd_out
    )
    with torch.no_grad():
        by_hand = sum(
            (
                (net(batch[Columns.OBS])[torch.arange(3), batch[Columns.ACTIONS]] - target) ** 2
            ).mean()
            for net in module.q_nets
        )
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_sampled_next_action_target_follows_pi_k(ray_session):
    """The default target bootstraps from one a' drawn from pi_k at s', not the mean."""
    algo = tiny_config(reward_scale=2.0).build_algo()  # expected_next_value=False
    try:
        learner = _learner(algo)
        module = learner.module[MODULE_ID].unwrapped()
        with torch.no_grad():
            for param in module.target_q_nets.parameters():
                param.normal_()
        # Row 0: pi_k picks a' = 1 (numerically surely); row 1: pi_k = [0.5, 0.5].
        logits = torch.tensor([[-60.0, 0.0], [0.0, 0.0]])
        batch = {
            Columns.REWARDS: torch.tensor([1.0, -1.0]),
            Columns.TERMINATEDS: torch.tensor([0.0, 0.0]),
            Columns.NEXT_OBS: torch.randn(2, 4),
            NEXT_STACK_SUM: logits,
        }
        tau = 0.4
        scale_before = module.logit_scale.clone()
        module.logit_scale.fill_(1.0)
        targets = torch.stack(
            [learner._fqi_target(MODULE_ID, module, batch, tau) for _ in range(40)]
        )
        module.logit_scale.copy_(scale_before)
        with torch.no_grad():
            q_next = module.forward_target({Columns.OBS: batch[Columns.NEXT_OBS]})
        q_next = q_next[QF_TARGET_NEXT_PREDS].mean(0)  # ensemble_target="mean"

        def target_for(next_actions):
            return pmd.soft_sarsa_target(
                batch[Columns.REWARDS],
                batch[Columns.TERMINATEDS],
                q_next,
                logits,
                tau,
                algo.config.gamma,
                algo.config.reward_scale,
                next_actions=torch.tensor(next_actions),
            )

        torch.testing.assert_close(targets[:, 0], target_for([1, 1])[0].expand(40))
        row1_values = torch.stack([target_for([1, 0])[1], target_for([1, 1])[1]])
        assert (row1_values[0] - row1_values[1]).abs() > 1e-3
        matches = (targets[:, 1:2] - row1_values).abs() < 1e-5  # [40, 2]
        assert matches.any(1).all()  # every target bootstraps from one sampled action
        assert matches.any(0).all()  # both actions are drawn
    finally:
        algo.stop()


def test_one_update_is_one_staq_iteration(algo):
    module = _learner(algo).module[MODULE_ID].unwrapped()
    pushes, grad_steps = int(module.num_pushes), int(module.num_grad_steps)
    result = algo.train()
    config = algo.config
    assert int(module.num_pushes) == pushes + 1
    assert int(module.num_grad_steps) == grad_steps + config.grad_steps_per_iteration
    learner_metrics = result["learners"][MODULE_ID]
    assert learner_metrics["stack_fill"] == min(pushes + 1, config.stack_size)
    assert result["env_runners"]["num_env_steps_sampled"] == config.env_steps_per_iteration
    # grad steps per iteration (10) is a multiple of the target period (5): the
    # last step copied the trainable nets into the targets.
    for net, target in zip(module.q_nets, module.target_q_nets):
        for p, q in zip(net.parameters(), target.parameters()):
            assert torch.equal(p, q)
    # The newest stack member is a frozen copy of the trainable ensemble.
    slot = (int(module.num_pushes) - 1) % config.stack_size
    row = slot * module.num_q_networks
    assert torch.equal(module.stack_buffer("head.weight")[row], module.q_nets[0].head.weight)
    for key in (
        "td_loss",
        "mean_q",
        "policy_entropy",
        "kl_pi_k_pi_k_plus_1",
        "pmd_alpha",
        "pmd_beta",
        "entropy_coeff",
        "epsilon",
        "fqi_phase_timer",
        "next_state_logits_timer",
        "push_timer",
    ):
        assert math.isfinite(learner_metrics[key]), key
    assert learner_metrics["entropy_coeff"] == pytest.approx(
        pmd.scaled_entropy_coeff(2.0 - 1.6 * 100 * algo.training_iteration / 500_000, 2, True),
        rel=0.05,
    )


def test_cached_next_state_logits_match_exact_oracle(ray_session):
    """Incremental cache == full-stack recompute after pushes, wraps and tau changes."""
    algo = tiny_config(
        stack_size=2,
        entropy_coeff=[[0, 2.0], [500, 0.2]],  # tau changes at every push
        exact_refresh_interval=1000,  # no exact refresh: pure incremental updates
    ).build_algo()
    try:
        for _ in range(7):  # 7 pushes into 2 slots: several evictions
            algo.train()
        learner = _learner(algo)
        module = learner.module[MODULE_ID].unwrapped()
        table = learner._tables[MODULE_ID]
        cached = learner.cached_next_state_logits(MODULE_ID)
        with torch.no_grad():
            exact = module.stack_logits(table.filled(Columns.NEXT_OBS))
        assert exact.abs().max() > 1e-2  # a non-trivial policy
        relative_error = (cached - exact).abs().max() / exact.abs().max()
        assert relative_error <= 1e-4
        # The oracle itself: a recompute lands on the exact values.
        learner.recompute_next_state_sums(MODULE_ID)
        torch.testing.assert_close(learner.cached_next_state_logits(MODULE_ID), exact)
    finally:
        algo.stop()


def test_new_transitions_reuse_acting_stack_outputs(ray_session):
    """New rows take pi_k from the EnvRunners' acting pass; only chunk ends need the stack."""
    algo = (
        tiny_config(stack_size=3, exact_refresh_interval=1000, lr=1e-2)
        .env_runners(num_env_runners=1, num_envs_per_env_runner=2)
        .build_algo()
    )
    try:
        for _ in range(4):
            result = algo.train()
            fraction = result["learners"][MODULE_ID]["next_state_rows_needing_stack_pass"]
            # One row per episode chunk (its last transition) has no acting output.
            assert 0.0 < fraction < 0.5
        learner = _learner(algo)
        module = learner.module[MODULE_ID].unwrapped()
        table = learner._tables[MODULE_ID]
        with torch.no_grad():
            exact = module.stack_logits(table.filled(Columns.NEXT_OBS))
        assert exact.abs().max() > 1e-2
        cached = learner.cached_next_state_logits(MODULE_ID)
        assert (cached - exact).abs().max() / exact.abs().max() <= 1e-4
    finally:
        algo.stop()


@pytest.mark.parametrize("skip_nan_gradients", [False, True])
def test_fqi_step_with_nan_gradients_zeroes_them_or_skips(ray_session, skip_nan_gradients):
    """The FQI loop's one-check optimizer step keeps RLlib's nan/inf semantics."""
    algo = tiny_config().framework(torch_skip_nan_gradients=skip_nan_gradients).build_algo()
    try:
        learner = _learner(algo)
        params = list(learner._params.values())
        before = [param.detach().clone() for param in params]
        gradients = {ref: torch.ones_like(param) for ref, param in learner._params.items()}
        first_ref = next(iter(gradients))
        gradients[first_ref][0] = float("nan")
        learner._apply_fqi_gradients(gradients)
        after = [param.detach() for param in params]
        assert all(torch.isfinite(param).all() for param in after)
        changed = [not torch.equal(b, a) for b, a in zip(before, after)]
        if skip_nan_gradients:
            assert not any(changed)  # the whole step is skipped
        else:
            assert all(changed)  # nan entries zeroed, the step taken
    finally:
        algo.stop()


def test_fqi_optimizer_is_fused_adam_with_the_configured_lr(algo):
    optimizer = _learner(algo).get_optimizer(MODULE_ID)
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["fused"]  # torch >= 2.4 has a CPU kernel
    assert optimizer.param_groups[0]["lr"] == pytest.approx(algo.config.lr)


def test_fused_adam_takes_the_same_steps_as_default_adam():
    torch.manual_seed(0)
    fused_params = [torch.randn(16, 4, requires_grad=True), torch.randn(16, requires_grad=True)]
    initial = [param.detach().clone() for param in fused_params]
    default_params = [param.clone().requires_grad_() for param in initial]
    fused, default = adam(fused_params), torch.optim.Adam(default_params)
    for group in (*fused.param_groups, *default.param_groups):
        group["lr"] = 1e-2
    for _ in range(20):
        grads = [torch.randn_like(param) for param in fused_params]
        for params, optimizer in ((fused_params, fused), (default_params, default)):
            for param, grad in zip(params, grads):
                param.grad = grad.clone()
            optimizer.step()
    assert not torch.equal(fused_params[0].detach(), initial[0])  # the steps moved it
    for fused_param, default_param in zip(fused_params, default_params):
        torch.testing.assert_close(fused_param, default_param, rtol=1e-5, atol=1e-6)


def test_adam_falls_back_to_default_where_torch_has_no_fused_kernel(monkeypatch):
    original_adam = torch.optim.Adam

    def adam_without_fused(params, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be ... supported devices")
        return original_adam(params, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", adam_without_fused)
    optimizer = adam([torch.zeros(3, requires_grad=True)])
    assert isinstance(optimizer, original_adam)
    assert not optimizer.param_groups[0]["fused"]


# --- Diagnostics: max |Q| against its bound, and what the truncation to M drops -----------


def test_soft_q_bound_is_the_fixed_point_of_the_worst_case_target():
    """One state, reward R at every step, the uniform policy (H = ln|A|): the soft
    Bellman iteration converges to the bound exactly; reward -R stays inside it."""
    reward, gamma, tau, num_actions = 2.0, 0.9, 0.5, 4
    bound = pmd.soft_q_magnitude_bound(reward, gamma, tau, num_actions)
    for sign in (1.0, -1.0):
        q = 0.0
        for _ in range(2000):
            q = sign * reward + gamma * (q + tau * math.log(num_actions))
        if sign > 0:
            assert q == pytest.approx(bound, rel=1e-9)
        else:
            assert abs(q) < bound


def test_truncation_kl_of_a_zero_oldest_member_is_zero_and_matches_the_explicit_stacks():
    generator = torch.Generator().manual_seed(0)
    sums = torch.randn(5, 3, generator=generator)
    oldest = torch.randn(5, 3, generator=generator)
    torch.testing.assert_close(pmd.truncation_kl(0.7, sums, torch.zeros(5, 3)), torch.zeros(5))
    expected = pmd.categorical_kl(0.7 * sums, 0.7 * (sums - oldest))
    torch.testing.assert_close(pmd.truncation_kl(0.7, sums, oldest), expected)
    assert (expected > 0).all()


def test_push_reports_the_kl_of_dropping_the_oldest_member(ray_session):
    # A fast fit and a small tau: members far from uniform, so the KL is clearly > 0.
    settings = dict(lr=1e-2, grad_steps_per_iteration=50, entropy_coeff=0.1, kl_coeff=1.0)
    algo = tiny_config(stack_size=2, exact_refresh_interval=1000, **settings).build_algo()
    try:
        first = algo.train()["learners"][MODULE_ID]
        assert "kl_truncation" not in first  # 1 of 2 slots: nothing is evicted yet
        algo.train()  # the stack is full now
        learner = _learner(algo)
        module = learner.module[MODULE_ID].unwrapped()
        table = learner._tables[MODULE_ID]
        next_obs = table.filled(Columns.NEXT_OBS)
        oldest = int(module.num_pushes) % module.stack_size
        newest = 1 - oldest
        with torch.no_grad():
            # pi_k by an independent full-stack forward, and pi_k without its oldest member.
            full = module.stack_logits(next_obs)
            without_oldest = module.logit_scale * (
                module.slot_decay[newest] * module.slot_member_sum(next_obs, newest)
            )
            expected = pmd.categorical_kl(full, without_oldest).mean().item()
        assert expected > 1e-4
        config = algo.config
        tau = learner.entropy_coeff(MODULE_ID)
        alpha, beta = pmd.pmd_step_sizes(config.kl_coeff, tau)
        correction = pmd.weight_correction(beta, module.stack_size, config.weight_correction)
        reported = learner._push_with_cache_update(module, table, alpha, beta, correction)
        assert reported == pytest.approx(expected, rel=1e-4)
        # Through the metrics of a training iteration too.
        assert algo.train()["learners"][MODULE_ID]["kl_truncation"] > 0
    finally:
        algo.stop()


def test_max_abs_q_is_reported_beside_its_closed_form_bound(ray_session):
    # CartPole: reward 1 at every step, |A| = 2, tau scaled by 1/ln 2 (the default).
    algo = tiny_config(entropy_coeff=0.5, reward_scale=3.0, gamma=0.9).build_algo()
    try:
        metrics = algo.train()["learners"][MODULE_ID]
        assert metrics["max_abs_q_bound"] == pytest.approx((3.0 * 1.0 + 0.9 * 0.5) / (1 - 0.9))
        assert metrics["max_abs_q"] >= abs(metrics["mean_q"]) > 0
    finally:
        algo.stop()
