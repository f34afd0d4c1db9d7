"""The module's RLlib QNetAPI: Q(s, .) of the trainable ensemble (issue 14, item 5)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import QNetAPI
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from rllib_staq.torch.default_staq_torch_rl_module import (
    QF_PREDS,
    QF_PREDS_PER_MEMBER,
    DefaultStaQTorchRLModule,
)

from conftest import tiny_config

OBS_SPACE = gym.spaces.Box(-1, 1, (4,), np.float32)


def _module(inference_only=False, num_q_networks=3):
    module = RLModuleSpec(
        module_class=DefaultStaQTorchRLModule,
        observation_space=OBS_SPACE,
        action_space=gym.spaces.Discrete(3),
        inference_only=inference_only,
        model_config={"fcnet_hiddens": [8, 5], "stack_size": 2, "num_q_networks": num_q_networks},
    ).build()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    return module


def _mlp_in_float64(net, obs):
    """The 2-hidden-layer ReLU MLP written out in numpy float64."""
    hidden = obs.astype(np.float64)
    for dense in net.denses:
        weight = dense.weight.detach().double().numpy()
        bias = dense.bias.detach().double().numpy()
        hidden = np.maximum(hidden @ weight.T + bias, 0.0)
    return hidden @ net.head.weight.detach().double().numpy().T + net.head.bias.detach().numpy()


def test_module_implements_qnet_api_with_the_ensembles_q_values():
    module = _module()
    assert isinstance(module, QNetAPI)
    obs = np.random.default_rng(1).uniform(-1, 1, (6, 4)).astype(np.float32)
    out = module.compute_q_values({Columns.OBS: torch.from_numpy(obs)})
    expected = np.stack([_mlp_in_float64(net, obs) for net in module.q_nets])  # [E, B, A]
    assert out[QF_PREDS_PER_MEMBER].shape == (3, 6, 3)
    assert out[QF_PREDS].shape == (6, 3)
    np.testing.assert_allclose(out[QF_PREDS_PER_MEMBER].detach().numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(out[QF_PREDS].detach().numpy(), expected.mean(0), rtol=1e-5)
    # A forward pass like any other: gradients reach the trainable networks.
    out[QF_PREDS].sum().backward()
    assert module.q_nets[0].head.weight.grad is not None


def test_inference_only_module_refuses_with_a_pointer_to_the_learner():
    module = _module(inference_only=True)
    with pytest.raises(ValueError, match="inference-only.*Learner's module"):
        module.compute_q_values({Columns.OBS: torch.zeros(1, 4)})


def test_q_values_after_training_equal_the_newest_stack_member(ray_session):
    """Right after a push the newest stack slot is a copy of the trainable ensemble."""
    algo = tiny_config(stack_size=3, num_q_networks=2).build_algo()
    try:
        algo.train()
        algo.train()
        module = algo.learner_group._learner.module["default_policy"].unwrapped()
        obs = torch.randn(7, 4)
        with torch.no_grad():
            q = module.compute_q_values({Columns.OBS: obs})[QF_PREDS]
            newest_slot = (int(module.num_pushes) - 1) % module.stack_size
            newest = module.slot_member_sum(obs, newest_slot) / module.num_q_networks
        torch.testing.assert_close(q, newest)
        assert q.abs().sum() > 0  # FQI moved the zero-initialised head
    finally:
        algo.stop()
