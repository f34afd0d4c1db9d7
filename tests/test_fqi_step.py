"""The FQI fast path (flat fused Adam, per-row targets, gradients without autograd for
MLPs): bit-identical to the general path."""

import pytest
import torch
from ray.rllib.core.columns import Columns

from rllib_staq import pmd
from rllib_staq.torch.default_staq_torch_rl_module import QF_PREDS, QF_TARGET_NEXT_PREDS
from rllib_staq.torch.mlp_fqi_step import MlpFqiStep
from rllib_staq.torch.staq_torch_learner import (
    FQI_TARGETS,
    NEXT_STACK_SUM,
    FlatAdam,
    StaQTorchLearner,
    adam,
    mixed_precision_q,
)

from conftest import tiny_config

MODULE_ID = "default_policy"
# A 2x256 Q-network's shapes: the heads' biases (2) are not a multiple of 16.
SHAPES = [(256, 4), (256,), (256, 256), (256,), (2, 256), (2,)]


def _toy_params(seed):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape)) for shape in SHAPES]


def _toy_loss(params, x):
    h = torch.relu(x @ params[0].T + params[1])
    h = torch.relu(h @ params[2].T + params[3])
    return ((h @ params[4].T + params[5]) ** 2).mean()


def test_flat_adam_takes_the_fused_optimizers_steps_bit_for_bit():
    reference, flat_params = _toy_params(0), _toy_params(0)
    reference_adam, flat_adam = adam(reference), adam(flat_params)
    for group in (*reference_adam.param_groups, *flat_adam.param_groups):
        group["lr"] = 1e-2
    flat = FlatAdam(flat_adam, flat_params)
    assert len(flat.segments[0]) == 2  # one bulk segment + the ragged head bias
    x = torch.randn(64, 4)
    for _ in range(25):
        flat.begin_phase()
        reference_adam.zero_grad(set_to_none=True)
        _toy_loss(reference, x).backward()
        reference_adam.step()
        flat.step(_toy_loss(flat_params, x), skip_nan_gradients=False)
        flat.end_phase()
    assert not torch.equal(reference[2], _toy_params(0)[2])  # the steps moved it
    for a, b in zip(reference, flat_params):
        assert torch.equal(a, b)
    state_a, state_b = reference_adam.state_dict()["state"], flat_adam.state_dict()["state"]
    for index in state_a:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state_a[index][key], state_b[index][key]), (index, key)


@pytest.mark.parametrize("skip_nan_gradients", [False, True])
def test_flat_adam_nan_gradients_zeroed_or_step_skipped(skip_nan_gradients):
    params = _toy_params(1)
    flat = FlatAdam(adam(params), params)
    before = [p.detach().clone() for p in params]
    flat.begin_phase()
    # nan gradients for the head bias only; the others are finite.
    loss = _toy_loss(params, torch.randn(8, 4)) + float("nan") * params[5].sum()
    flat.step(loss, skip_nan_gradients)
    after = [p.detach() for p in params]
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(b, a) for b, a in zip(before, after)) is not skip_nan_gradients


class GeneralPathLearner(StaQTorchLearner):
    """The learner with RLlib's general gradient path (no FlatAdam, so autograd)."""

    def _flat_adam(self, module_id):
        return None


class AutogradFlatAdamLearner(StaQTorchLearner):
    """The learner with FlatAdam and autograd (no MlpFqiStep)."""

    def _mlp_fqi_step(self, module_id, flat_adam):
        return None


class OwnLossLearner(StaQTorchLearner):
    """A user's learner with its own loss: its gradients must come from autograd."""

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        return 2.0 * super().compute_loss_for_module(
            module_id=module_id, config=config, batch=batch, fwd_out=fwd_out
        )


# A second network and batch shape: Acrobot (6 inputs, 3 actions), three hidden
# layers of unequal width, three members, a batch that is not a power of two.
OTHER_SHAPES = dict(
    env="Acrobot-v1",
    model_config={"fcnet_hiddens": [16, 8, 12]},
    training=dict(num_q_networks=3, train_batch_size_per_learner=24, ensemble_target="min"),
)


def _config(learner_class, expected_next_value, shapes=None):
    shapes = shapes or {}
    config = tiny_config(
        expected_next_value=expected_next_value,
        target_network_update_freq=3,
        **shapes.get("training", {}),
    )
    if "env" in shapes:
        config.environment(shapes["env"]).rl_module(model_config=shapes["model_config"])
    return config.training(learner_class=learner_class).debugging(seed=5)


def _trained_state(learner_class, expected_next_value, shapes=None):
    algo = _config(learner_class, expected_next_value, shapes).build_algo()
    try:
        results = [algo.train() for _ in range(2)]
        learner = algo.learner_group._learner
        uses_mlp_step = learner._mlp_fqi_step(MODULE_ID, learner._flat_adam(MODULE_ID)) is not None
        state = learner.module[MODULE_ID].unwrapped().state_dict()
        optimizer_state = learner.get_optimizer(MODULE_ID).state_dict()["state"]
        td_loss = results[-1]["learners"][MODULE_ID]["td_loss"]
        return state, optimizer_state, td_loss, uses_mlp_step
    finally:
        algo.stop()


# fqi_matmul_dtype="bfloat16": the layers after the first multiply in bf16, one after
# another (autograd: under autocast).
BF16_SHAPES = {
    **OTHER_SHAPES,
    "training": {**OTHER_SHAPES["training"], "fqi_matmul_dtype": "bfloat16"},
}


@pytest.mark.parametrize(
    "expected_next_value, shapes",
    [(False, None), (True, None), (False, OTHER_SHAPES), (False, BF16_SHAPES)],
    ids=["sampled", "expected", "other-shapes", "bf16"],
)
def test_fast_path_trains_bit_identically_to_the_general_path(
    ray_session, expected_next_value, shapes
):
    fast = _trained_state(StaQTorchLearner, expected_next_value, shapes)
    general = _trained_state(GeneralPathLearner, expected_next_value, shapes)
    assert fast[3] and not general[3]  # gradients without autograd, and with it
    for key in fast[0]:
        assert torch.equal(fast[0][key], general[0][key]), key
    for index in general[1]:
        for key, value in general[1][index].items():
            assert torch.equal(fast[1][index][key], value), (index, key)
    assert fast[2] == general[2]


@pytest.mark.parametrize("shapes", [OTHER_SHAPES, BF16_SHAPES], ids=["float32", "bf16"])
def test_mlp_step_gradients_equal_autograds(ray_session, shapes):
    """One minibatch: MlpFqiStep's Q-values, target Q-values and gradients are autograd's
    (through the learner's own forward passes: ``mixed_precision_q`` for bf16)."""
    algo = _config(AutogradFlatAdamLearner, False, shapes).build_algo()
    try:
        learner = algo.learner_group._learner
        module = learner.module[MODULE_ID].unwrapped()
        with torch.no_grad():
            for param in module.parameters():
                param.normal_(0.0, 0.3)  # the heads start at zero; make every term count
        flat_adam = learner._flat_adam(MODULE_ID)
        matmul_dtype = getattr(torch, shapes["training"].get("fqi_matmul_dtype", "float32"))
        step = MlpFqiStep(module, 24, matmul_dtype)
        batch = {
            Columns.OBS: torch.randn(24, 6),
            Columns.ACTIONS: torch.randint(3, (24,)),
            FQI_TARGETS: torch.randn(24),
        }
        forward_train, forward_target = learner._fqi_forwards(MODULE_ID)
        flat_adam.flat_grad.zero_()
        fwd_out = forward_train(batch)
        learner.compute_loss_for_module(
            module_id=MODULE_ID, config=None, batch=batch, fwd_out=fwd_out
        ).backward()
        autograd_grads = [param.grad.clone() for param in flat_adam.params]
        flat_adam.flat_grad.fill_(float("nan"))  # every gradient entry must be written
        q_values = step.forward_train(batch[Columns.OBS])
        step.write_gradients(batch[Columns.ACTIONS], batch[FQI_TARGETS])
        assert torch.equal(q_values, fwd_out[QF_PREDS].detach())
        for param, expected in zip(flat_adam.params, autograd_grads):
            assert expected.abs().sum() > 0
            assert torch.equal(param.grad, expected), tuple(param.shape)
        target = step.forward_target({Columns.OBS: batch[Columns.OBS]})
        expected_target = forward_target({Columns.OBS: batch[Columns.OBS]})
        assert torch.equal(target[QF_TARGET_NEXT_PREDS], expected_target[QF_TARGET_NEXT_PREDS])
        flat_adam.end_phase()
    finally:
        algo.stop()


@pytest.mark.parametrize(
    "learner_class, settings, model_config",
    [
        (OwnLossLearner, {}, {}),
        (StaQTorchLearner, {}, {"fcnet_activation": "tanh"}),
        (GeneralPathLearner, {}, {}),
    ],
    ids=["own-loss", "tanh", "no-flat-adam"],
)
def test_autograd_where_mlp_step_would_not_be_exact(
    ray_session, learner_class, settings, model_config
):
    config = tiny_config(**settings).training(learner_class=learner_class)
    config.rl_module(model_config={"fcnet_hiddens": [16, 16], **model_config})
    algo = config.build_algo()
    try:
        learner = algo.learner_group._learner
        assert learner._mlp_fqi_step(MODULE_ID, learner._flat_adam(MODULE_ID)) is None
        algo.train()  # and the phase runs
    finally:
        algo.stop()


def test_sample_categorical_is_torch_multinomials_draw_and_has_its_distribution():
    probs = torch.softmax(3 * torch.randn(64, 5), -1)
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(20):
        expected = torch.multinomial(probs, 1, generator=a)
        assert torch.equal(pmd.sample_categorical(probs, b), expected)
    rows = torch.tensor([[0.2, 0.5, 0.3, 0.0]]).expand(200_000, 4)
    draws = pmd.sample_categorical(rows, torch.Generator().manual_seed(0)).squeeze(-1)
    frequencies = torch.bincount(draws, minlength=4) / 200_000
    assert torch.allclose(frequencies, rows[0], atol=0.005)
    assert frequencies[3] == 0


def test_phase_rows_give_the_per_minibatch_target(ray_session):
    """Targets from the phase's per-row parts equal those computed from the minibatch."""
    algo = tiny_config(expected_next_value=True).build_algo()
    try:
        learner = algo.learner_group._learner
        module = learner.module[MODULE_ID].unwrapped()
        module.logit_scale.fill_(0.7)
        rewards, terminateds = torch.randn(50), (torch.rand(50) < 0.2).float()
        sums = torch.randn(50, 2) * 3
        rows = learner.target_rows(MODULE_ID, module, rewards, terminateds, sums, 0.3)
        index = torch.randint(50, (17,))
        next_obs = torch.randn(17, 4)
        from_rows = learner._fqi_target_from_rows(MODULE_ID, module, next_obs, rows[index])
        batch = {
            Columns.REWARDS: rewards[index],
            Columns.TERMINATEDS: terminateds[index],
            Columns.NEXT_OBS: next_obs,
            NEXT_STACK_SUM: sums[index],
        }
        assert torch.equal(from_rows, learner._fqi_target(MODULE_ID, module, batch, 0.3))
    finally:
        algo.stop()


def test_mixed_precision_q_is_close_to_float32_and_keeps_the_head_float32(ray_session):
    algo = tiny_config().build_algo()
    try:
        net = algo.learner_group._learner.module[MODULE_ID].unwrapped().q_nets[0]
        with torch.no_grad():
            for param in net.parameters():
                param.normal_(0.0, 0.1)
        obs = torch.randn(64, 4)
        exact = net(obs)
        mixed = mixed_precision_q(net, obs, torch.bfloat16)
        assert mixed.dtype == torch.float32
        error = (mixed - exact).abs().max() / exact.abs().max()
        assert 0 < error < 2e-2  # bf16 rounding of the hidden features, not of the Q-values
        assert torch.equal(mixed_precision_q(net, obs, torch.float32), exact)
    finally:
        algo.stop()
