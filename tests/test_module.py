"""The RL module: stack logits vs closed form, shapes, exploration, inference-only."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from rllib_staq import pmd
from rllib_staq.torch.default_staq_torch_rl_module import DefaultStaQTorchRLModule

OBS_SPACE = gym.spaces.Box(-1, 1, (4,), np.float32)
IMAGE_SPACE = gym.spaces.Box(0, 1, (10, 10, 4), np.float32)


def build_module(obs_space=OBS_SPACE, num_actions=3, inference_only=False, **model_config):
    config = {"fcnet_hiddens": [16, 16], "stack_size": 4, "num_q_networks": 2, "epsilon": 0.1}
    config.update(model_config)
    return RLModuleSpec(
        module_class=DefaultStaQTorchRLModule,
        observation_space=obs_space,
        action_space=gym.spaces.Discrete(num_actions),
        inference_only=inference_only,
        model_config=config,
    ).build()


def randomize_trainable(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.q_nets.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))


def test_first_policy_is_uniform():
    module = build_module()
    obs = torch.randn(5, 4)
    assert torch.equal(module.stack_logits(obs), torch.zeros(5, 3))
    # Fresh heads are zero: even a pushed untrained network adds nothing.
    module.push_onto_stack(alpha=0.1, beta=0.9, correction=1.0)
    assert torch.equal(module.stack_logits(obs), torch.zeros(5, 3))


@pytest.mark.parametrize("num_pushes", [1, 3, 4, 9])
@pytest.mark.parametrize("corrected", [True, False])
def test_stack_logits_equal_closed_form(num_pushes, corrected):
    module = build_module()
    alpha, beta = pmd.pmd_step_sizes(20.0, 1.5)
    correction = pmd.weight_correction(beta, module.stack_size, corrected)
    obs = torch.randn(6, 4)
    snapshots = []
    for k in range(num_pushes):
        randomize_trainable(module, seed=k)
        snapshots.append(copy.deepcopy(module.q_nets))
        module.push_onto_stack(alpha, beta, correction)
    weights = pmd.closed_form_slot_weights(alpha, beta, num_pushes, module.stack_size, corrected)
    expected = torch.zeros(6, 3, dtype=torch.float64)
    for i, weight in enumerate(weights):  # newest first
        nets = snapshots[num_pushes - 1 - i]
        member_mean = torch.stack([net(obs) for net in nets]).mean(0).double()
        expected += weight * member_mean
    torch.testing.assert_close(module.stack_logits(obs).double(), expected, rtol=1e-5, atol=1e-5)
    assert module.stack_fill == min(num_pushes, module.stack_size)
    assert int(module.num_pushes) == num_pushes


def test_forward_shapes_and_greedy_inference():
    module = build_module()
    randomize_trainable(module, 0)
    module.push_onto_stack(0.1, 0.9, 1.0)
    obs = torch.randn(7, 4)
    inference = module.forward_inference({Columns.OBS: obs})
    logits = module.stack_logits(obs)
    assert inference[Columns.ACTIONS].shape == (7,)
    assert torch.equal(inference[Columns.ACTIONS], logits.argmax(-1))
    assert module.forward_train({Columns.OBS: obs})["qf_preds"].shape == (2, 7, 3)


def test_exploration_probabilities_are_epsilon_softmax():
    module = build_module(epsilon=0.2)
    randomize_trainable(module, 1)
    module.push_onto_stack(0.3, 0.9, 1.0)
    obs = torch.randn(5, 4)
    out = module.forward_exploration({Columns.OBS: obs}, t=0)
    probs = out[Columns.ACTION_DIST_INPUTS].exp()
    expected = 0.8 * torch.softmax(module.stack_logits(obs), -1) + 0.2 / 3
    torch.testing.assert_close(probs, expected)
    # The distribution RLlib samples from is exactly that mixture.
    dist = module.get_exploration_action_dist_cls().from_logits(out[Columns.ACTION_DIST_INPUTS])
    torch.testing.assert_close(dist._dist.probs, expected)


def test_exploration_actions_are_drawn_from_epsilon_softmax():
    torch.manual_seed(0)
    module = build_module(epsilon=0.3)
    randomize_trainable(module, 1)
    module.push_onto_stack(0.3, 0.9, 1.0)
    obs = torch.randn(1, 4).expand(20_000, 4)  # one state, many draws
    out = module.forward_exploration({Columns.OBS: obs}, t=0)
    expected = 0.7 * torch.softmax(module.stack_logits(obs[:1]), -1)[0] + 0.3 / 3
    frequencies = torch.bincount(out[Columns.ACTIONS], minlength=3) / obs.shape[0]
    # 4 standard errors of a frequency at n = 20,000 is at most 0.015.
    torch.testing.assert_close(frequencies, expected, atol=0.015, rtol=0)
    taken = out[Columns.ACTION_DIST_INPUTS].gather(-1, out[Columns.ACTIONS][:, None])[:, 0]
    torch.testing.assert_close(out[Columns.ACTION_LOGP], taken)


def test_epsilon_schedule_follows_env_steps():
    module = build_module(epsilon=[[0, 1.0], [100, 0.0]])
    assert module.current_epsilon(0) == pytest.approx(1.0)
    assert module.current_epsilon(50) == pytest.approx(0.5)
    assert module.current_epsilon(1000) == pytest.approx(0.0)


def test_inference_only_module_holds_only_the_stack():
    learner_module = build_module()
    randomize_trainable(learner_module, 2)
    learner_module.push_onto_stack(0.2, 0.8, 1.2)
    runner_module = build_module(inference_only=True)
    assert not hasattr(runner_module, "q_nets")
    runner_module.set_state(learner_module.get_state(inference_only=True))
    obs = torch.randn(4, 4)
    torch.testing.assert_close(runner_module.stack_logits(obs), learner_module.stack_logits(obs))
    state_keys = learner_module.get_state(inference_only=True).keys()
    assert not any(key.startswith("q_nets") for key in state_keys)


def test_cnn_module_matches_per_member_sum():
    module = build_module(obs_space=IMAGE_SPACE, num_actions=5, fcnet_hiddens=None)
    assert [tuple(c.weight.shape) for c in module.q_nets[0].convs] == [(16, 4, 3, 3)]
    assert module.q_nets[0].denses[0].weight.shape == (128, 16 * 8 * 8)
    alpha, beta = 0.1, 0.9
    for k in range(2):
        randomize_trainable(module, k)
        module.push_onto_stack(alpha, beta, 1.0)
    obs = torch.rand(3, 10, 10, 4)
    # Newest members are the current trainable nets; the older ones decayed by beta.
    logits = module.stack_logits(obs)
    randomize_trainable(module, 0)
    older = torch.stack([net(obs) for net in module.q_nets]).mean(0)
    randomize_trainable(module, 1)
    newer = torch.stack([net(obs) for net in module.q_nets]).mean(0)
    torch.testing.assert_close(logits, alpha * (newer + beta * older), rtol=1e-4, atol=1e-4)


def test_continuous_action_space_is_rejected():
    with pytest.raises(ValueError, match="Discrete"):
        RLModuleSpec(
            module_class=DefaultStaQTorchRLModule,
            observation_space=OBS_SPACE,
            action_space=gym.spaces.Box(-1, 1, (2,)),
            model_config={},
        ).build()
