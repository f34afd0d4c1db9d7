"""The reduced-precision acting stack (`stack_dtype`, issue 16 part 2)."""

import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns

from rllib_staq import pmd
from rllib_staq.staq_learner import NEXT_STACK_SUM, STACK_SUM

from conftest import tiny_config


def _random_stack(num_members, conv: bool, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.3

    convs = []
    if conv:
        convs = [(rand(num_members, 4, 2, 3, 3), rand(num_members, 4), 1)]
        in_features = 4 * 5 * 5  # 7x7 -> 5x5
    else:
        in_features = 6
    dense = [
        (rand(num_members, 16, in_features), rand(num_members, 16)),
        (rand(num_members, 16, 16), rand(num_members, 16)),
    ]
    head = (rand(num_members, 3, 16), rand(num_members, 3))
    # As the module stores them: the first layer (it reads the obs) in float32.
    cast_convs = [(w.to(dtype), b.to(dtype), s) for w, b, s in convs]
    cast_dense = [(w.to(dtype), b.to(dtype)) for w, b in dense]
    if convs:
        cast_convs[0] = convs[0]
    else:
        cast_dense[0] = dense[0]
    return cast_convs, cast_dense, head, (convs, dense)


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("batch", [1, 5])
def test_mixed_precision_form_is_exact_in_float32(conv, batch):
    """With float32 weights the feature-major form equals the batched one."""
    convs, dense, head, _ = _random_stack(7, conv)
    obs = torch.randn(batch, 2, 7, 7) if conv else torch.randn(batch, 6)
    coeffs = torch.rand(7)
    got = pmd.mixed_precision_stacked_forward(obs, convs, dense, *head, coeffs, torch.relu)
    expected = pmd.batched_stacked_forward(obs, convs, dense, *head, coeffs, torch.relu)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", [False, True])
def test_bfloat16_hidden_layers_keep_logits_close(conv):
    """bf16 hidden layers (8-bit mantissa): logits within 2% of float32, float32 out."""
    convs16, dense16, head, (convs32, dense32) = _random_stack(20, conv, torch.bfloat16)
    obs = torch.randn(8, 2, 7, 7) if conv else torch.randn(8, 6)
    coeffs = torch.rand(20)
    got = pmd.mixed_precision_stacked_forward(obs, convs16, dense16, *head, coeffs, torch.relu)
    expected = pmd.batched_stacked_forward(obs, convs32, dense32, *head, coeffs, torch.relu)
    assert got.dtype == torch.float32
    relative = (got - expected).norm() / expected.norm()
    assert 0 < relative < 0.02  # > 0: the bf16 path really ran in bf16


def _bf16_algo(**training):
    return tiny_config(stack_dtype="bfloat16", **training).build_algo()


def test_only_the_envrunner_stack_is_bfloat16(ray_session):
    algo = _bf16_algo()
    try:
        algo.train()
        algo.train()
        learner = algo.learner_group._learner
        trained = learner.module[DEFAULT_MODULE_ID].unwrapped()
        acting = algo.env_runner.module
        assert acting.low_precision_stack and not trained.low_precision_stack
        assert acting.stack_buffer("denses.1.weight").dtype == torch.bfloat16
        assert acting.stack_buffer("denses.0.weight").dtype == torch.float32
        assert acting.stack_buffer("head.weight").dtype == torch.float32
        assert trained.stack_buffer("denses.1.weight").dtype == torch.float32
        # The synced bf16 stack is the learner's, rounded.
        torch.testing.assert_close(
            acting.stack_buffer("denses.1.weight").float(),
            trained.stack_buffer("denses.1.weight"),
            rtol=1e-2,
            atol=1e-6,
        )
        obs = torch.randn(16, 4)
        exact = trained.stack_logits(obs)
        approx = acting.stack_logits(obs)
        assert int(acting.num_pushes) == 2
        assert (approx - exact).norm() / exact.norm() < 0.02
        # No acting sums reach the learner: its cache is the float32 stack's.
        table = learner._tables[DEFAULT_MODULE_ID]
        cached = table.filled(NEXT_STACK_SUM).clone()
        learner.recompute_next_state_sums(DEFAULT_MODULE_ID)
        torch.testing.assert_close(cached, table.filled(NEXT_STACK_SUM), rtol=1e-5, atol=1e-8)
        assert STACK_SUM not in acting.forward_exploration({Columns.OBS: obs})
    finally:
        algo.stop()


@pytest.mark.parametrize("value", ["float16", "bf16", torch.bfloat16, None])
def test_stack_dtype_refused(value):
    with pytest.raises(ValueError, match="stack_dtype"):
        tiny_config(stack_dtype=value)
