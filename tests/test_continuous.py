"""Continuous-action (Box) StaQ (issue 15): stacked energy, closed-form fit, build, checkpoints."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchSquashedGaussian
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from rllib_staq import StaQConfig, pmd
from rllib_staq.torch.continuous_staq_torch_learner import ContinuousStaQTorchLearner
from rllib_staq.torch.continuous_staq_torch_rl_module import ContinuousStaQTorchRLModule

OBS_SPACE = gym.spaces.Box(-1, 1, (3,), np.float32)
ACTION_SPACE = gym.spaces.Box(-2, 2, (2,), np.float32)


def build_module(hiddens=(8, 8), stack_size=3, num_q_networks=2, action_space=ACTION_SPACE):
    module = RLModuleSpec(
        module_class=ContinuousStaQTorchRLModule,
        observation_space=OBS_SPACE,
        action_space=action_space,
        model_config={
            "fcnet_hiddens": list(hiddens),
            "stack_size": stack_size,
            "num_q_networks": num_q_networks,
        },
    ).build()
    module.make_target_networks()
    return module


class Square(torch.nn.Module):
    def forward(self, x):
        return x * x


def randomise_critics(module, generator):
    with torch.no_grad():
        for param in module.critics.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype))


# --------------------------------------------------------------------------- #
# 1. The stacked energy and its action gradient equal a per-member computation.
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("forward", [pmd.batched_stacked_forward, pmd.member_loop_stacked_forward])
def test_stacked_energy_and_action_gradient_equal_per_member_sums(forward):
    torch.manual_seed(0)
    module = build_module().double()
    generator = torch.Generator().manual_seed(1)
    alpha, beta = pmd.pmd_step_sizes(kl_coeff=2.0, entropy_coeff=0.5)
    correction = pmd.weight_correction(beta, module.stack_size)
    snapshots = []  # the critics of each push, newest last
    for _ in range(5):  # 5 pushes into 3 slots: the ring wraps twice
        randomise_critics(module, generator)
        snapshots.append(
            [{k: v.clone() for k, v in c.state_dict().items()} for c in module.critics]
        )
        module.push_onto_stack(alpha, beta, correction)
    obs = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    actions = torch.randn(7, 2, generator=generator, dtype=torch.float64).tanh()

    stacked_actions = actions.clone().requires_grad_(True)
    energy = module.stack_energy(obs, stacked_actions, forward=forward)
    (stacked_grad,) = torch.autograd.grad(energy.sum(), stacked_actions)

    # Reference: c * alpha * sum_{i<M} beta^i * mean_e Q_{k-i,e}(s, a), member by member.
    weights = pmd.closed_form_slot_weights(alpha, beta, 5, module.stack_size)
    reference_actions = actions.clone().requires_grad_(True)
    reference = torch.zeros(7, dtype=torch.float64)
    critic = module.critics[0]
    for i, weight in enumerate(weights):
        for member_state in snapshots[-1 - i]:
            inputs = torch.cat([obs, reference_actions], -1)
            q = torch.func.functional_call(critic, member_state, (inputs,))
            reference = reference + weight * q / module.num_q_networks
    (reference_grad,) = torch.autograd.grad(reference.sum(), reference_actions)

    torch.testing.assert_close(energy, reference, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(stacked_grad, reference_grad, rtol=1e-9, atol=1e-9)
    assert reference_grad.abs().max() > 1e-3  # a real gradient, not two zeros


# --------------------------------------------------------------------------- #
# 2. Closed form: a 1-D Gaussian bandit, Q_i(a) = -q_i (a - m_i)^2.
# --------------------------------------------------------------------------- #
def test_reverse_kl_fit_recovers_the_gaussian_stack_target():
    """exp(xi) is N(m*, v*) (pmd.gaussian_energy_closed_form); the fitted Gaussian matches.

    Each critic is made exactly quadratic: one hidden unit h = (a - m_i)^2 (weight
    1 on the action, 0 on the observation, bias -m_i, activation x^2) and head
    -q_i. The stack (real pushes, decays, correction, ensemble mean) gives xi.
    The actor is an unsquashed Gaussian with free (mean, log_std): the reverse-KL
    projection of a Gaussian onto the Gaussian family is exact, so the optimum
    is (m*, v*). The tanh squashing is left out because a squashed Gaussian
    cannot equal a Gaussian on R. The noise is one fixed batch standardised to
    mean 0 and variance 1: for a quadratic xi the sample loss then equals the
    exact KL up to a constant, so the optimum is exact, not a Monte-Carlo estimate.
    """
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    module = build_module(hiddens=(1,), stack_size=4, num_q_networks=2, action_space=action_space)
    module = module.double()
    module.activation = Square()  # the stacked forward's activation
    alpha, beta = pmd.pmd_step_sizes(kl_coeff=1.0, entropy_coeff=0.5)
    correction = pmd.weight_correction(beta, module.stack_size)
    centres = [0.9, -0.4, 0.3, 1.5, -1.0]  # pushed oldest first
    curvatures = [2.0, 1.0, 3.0, 0.5, 4.0]
    for m, q in zip(centres, curvatures):
        with torch.no_grad():
            for critic in module.critics:
                critic.denses[0].weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 1.0]]))
                critic.denses[0].bias.fill_(-m)
                critic.head.weight.fill_(-q)
                critic.head.bias.zero_()
        module.push_onto_stack(alpha, beta, correction)
    weights = pmd.closed_form_slot_weights(alpha, beta, len(centres), module.stack_size)
    newest_first = torch.arange(len(centres) - 1, len(centres) - 1 - len(weights), -1)
    target_mean, target_var = pmd.gaussian_energy_closed_form(
        weights,
        torch.tensor(curvatures, dtype=torch.float64)[newest_first],
        torch.tensor(centres, dtype=torch.float64)[newest_first],
    )

    noise = torch.randn(4096, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = (noise - noise.mean()) / noise.std(unbiased=False)
    mean = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    log_std = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([mean, log_std], lr=0.05)
    obs = torch.zeros(4096, 3, dtype=torch.float64)
    for step in range(1500):
        if step == 1000:
            optimizer.param_groups[0]["lr"] = 0.005
        actions, log_prob = pmd.gaussian_rsample(
            mean.expand(4096, 1), log_std.expand(4096, 1), noise
        )
        loss = pmd.reverse_kl_actor_loss(log_prob, module.stack_energy(obs, actions))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fitted_mean, fitted_var = float(mean), float(torch.exp(2 * log_std))
    assert fitted_mean == pytest.approx(target_mean, rel=0.02)
    assert fitted_var == pytest.approx(target_var, rel=0.02)
    # The target is not trivially the newest critic's Gaussian (that would pass a
    # fit that ignored the stack).
    assert abs(target_mean - centres[-1]) > 0.1


def test_squashed_log_prob_is_rllibs_density_and_integrates_to_one():
    mean = torch.tensor([[0.3]], dtype=torch.float64)
    log_std = torch.tensor([[-0.5]], dtype=torch.float64)
    noise = torch.linspace(-6, 6, 20001, dtype=torch.float64)[:, None]
    actions, log_prob = pmd.squashed_gaussian_rsample(
        mean.expand_as(noise), log_std.expand_as(noise), noise
    )
    rllib = TorchSquashedGaussian(loc=mean.expand_as(noise), scale=log_std.exp().expand_as(noise))
    inside = actions.abs().squeeze(-1) < 0.999  # RLlib's atanh is clipped near +-1
    torch.testing.assert_close(log_prob[inside], rllib.logp(actions)[inside], rtol=1e-5, atol=1e-5)
    # Integral over a in [-1, 1] of pi(a): trapezoid on the grid of a = tanh(u).
    a, density = actions.squeeze(-1), log_prob.exp()
    assert float(torch.trapezoid(density, a)) == pytest.approx(1.0, abs=1e-4)


# --------------------------------------------------------------------------- #
# 3. Config, build, training and a checkpoint round trip on Pendulum-v1.
# --------------------------------------------------------------------------- #
def tiny_pendulum_config(**training):
    settings = dict(
        stack_size=3,
        env_steps_per_iteration=200,
        grad_steps_per_iteration=10,
        actor_steps_per_iteration=5,
        train_batch_size_per_learner=32,
        reward_scale=1.0,
        entropy_coeff=1.0,
        replay_buffer_config={"capacity": 1000},
    )
    settings.update(training)
    return (
        StaQConfig()
        .environment("Pendulum-v1")
        .env_runners(num_env_runners=0)
        .rl_module(model_config={"fcnet_hiddens": [16, 16]})
        .training(**settings)
        .debugging(seed=0)
    )


def _learner_module(algo):
    return algo.learner_group._learner.module["default_policy"].unwrapped()


def test_pendulum_builds_trains_and_round_trips_a_checkpoint(ray_session, tmp_path):
    algo = tiny_pendulum_config().build_algo()
    try:
        assert isinstance(algo.learner_group._learner, ContinuousStaQTorchLearner)
        module = _learner_module(algo)
        assert isinstance(module, ContinuousStaQTorchRLModule)
        # Weight sync carries the actor only: no critics, targets or stack.
        synced_keys = set(module.get_state(inference_only=True))
        assert synced_keys and all(
            k.startswith("actor.") or k == "num_actor_fits" for k in synced_keys
        )
        runner_keys = set(algo.get_module().state_dict())
        assert runner_keys and all(
            k.startswith("actor.") or k == "num_actor_fits" for k in runner_keys
        )
        for _ in range(2):
            result = algo.train()
        learner = result["learners"]["default_policy"]
        assert result["env_runners"]["num_env_steps_sampled_lifetime"] == 400
        assert learner["stack_fill"] == 2 and learner["num_pushes"] == 2
        assert math.isfinite(learner["td_loss"]) and math.isfinite(learner["actor_loss_after_fit"])
        assert learner["entropy_coeff"] == pytest.approx(1.0 / math.log(2.0))  # tau / (d ln 2)
        assert int(algo.get_module().num_actor_fits) == 2  # the synced actor is the fitted one
        # Greedy action = tanh(mean), in RLlib's normalised box.
        obs = torch.zeros(4, 3)
        greedy = algo.get_module().forward_inference({Columns.OBS: obs})[Columns.ACTIONS]
        mean, _ = module.actor(obs)
        torch.testing.assert_close(greedy, torch.tanh(mean).detach())

        path = algo.save_to_path(str(tmp_path / "ckpt"))
        learner_state = algo.learner_group._learner.get_state()
    finally:
        algo.stop()

    restored = tiny_pendulum_config().build_algo()
    try:
        restored.restore_from_path(path)
        new_state = restored.learner_group._learner.get_state()
        module_state = learner_state["rl_module"]["default_policy"]
        restored_module_state = new_state["rl_module"]["default_policy"]
        assert set(module_state) == set(restored_module_state)
        for key in (
            "actor.head.weight",
            "stack.denses_0_weight",
            "stack.slot_decay",
            "critics.0.head.weight",
            "target_critics.1.denses.1.bias",
        ):
            np.testing.assert_array_equal(module_state[key], restored_module_state[key])
        assert int(restored_module_state["stack.num_pushes"]) == 2
        optimizers = learner_state["optimizer"]
        assert {"default_policy_critic", "default_policy_actor"} <= set(optimizers)
        for name in ("default_policy_critic", "default_policy_actor"):
            before = optimizers[name]["state"]["state"]
            after = new_state["optimizer"][name]["state"]["state"]
            assert before.keys() == after.keys() and before
            for index in before:
                np.testing.assert_array_equal(before[index]["exp_avg"], after[index]["exp_avg"])
        # The restored EnvRunner acts with the restored actor.
        np.testing.assert_array_equal(
            restored.get_module().state_dict()["actor.head.weight"].numpy(),
            module_state["actor.head.weight"],
        )
        restored.train()
        assert int(_learner_module(restored).stack.num_pushes) == 3
    finally:
        restored.stop()


# --------------------------------------------------------------------------- #
# 4. Bad settings are refused, naming the setting.
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "name,value",
    [
        ("actor_lr", 0.0),
        ("actor_lr", math.nan),
        ("actor_steps_per_iteration", 0),
        ("actor_steps_per_iteration", 2.5),
    ],
)
def test_bad_actor_settings_refused(name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        tiny_pendulum_config(**{name: value})


@pytest.mark.parametrize(
    "name,value", [("expected_next_value", True), ("exact_refresh_interval", 10)]
)
def test_discrete_only_settings_refused_for_a_box(name, value):
    config = tiny_pendulum_config(**{name: value})
    with pytest.raises(ValueError, match=f"`{name}`.*Box action space"):
        config.validate()


def test_actor_settings_refused_for_a_discrete_env():
    config = tiny_pendulum_config(actor_lr=1e-3).environment("CartPole-v1")
    with pytest.raises(ValueError, match="`actor_lr` is used only with a Box"):
        config.validate()


def test_more_than_one_learner_refused_for_a_box():
    with pytest.raises(ValueError, match="`num_learners`"):
        tiny_pendulum_config().learners(num_learners=2).validate()


@pytest.mark.parametrize(
    "action_space,match",
    [
        (gym.spaces.MultiDiscrete([3, 3]), "Discrete or"),
        (gym.spaces.Box(-1, 1, (2, 2), np.float32), "1-D Box"),
        (gym.spaces.Box(-np.inf, np.inf, (1,), np.float32), "finite action bounds"),
    ],
)
def test_unsupported_action_spaces_refused(action_space, match):
    config = tiny_pendulum_config().environment(
        observation_space=OBS_SPACE, action_space=action_space
    )
    with pytest.raises(ValueError, match=match):
        config.validate()


def test_image_observations_refused_by_the_module():
    with pytest.raises(ValueError, match="flat"):
        RLModuleSpec(
            module_class=ContinuousStaQTorchRLModule,
            observation_space=gym.spaces.Box(0, 1, (8, 8, 3), np.float32),
            action_space=ACTION_SPACE,
            model_config={},
        ).build()


def test_diagonal_gaussian_kl_closed_form():
    # KL(N(0, 1) || N(1, 2^2)) = ln 2 + (1 + 1) / 8 - 1/2, per dimension.
    mean_p, log_std_p = torch.zeros(1, 2), torch.zeros(1, 2)
    mean_q, log_std_q = torch.ones(1, 2), torch.full((1, 2), math.log(2.0))
    expected = 2 * (math.log(2.0) + 2.0 / 8.0 - 0.5)
    kl = pmd.diagonal_gaussian_kl(mean_p, log_std_p, mean_q, log_std_q)
    assert float(kl) == pytest.approx(expected, rel=1e-6)
    assert float(pmd.diagonal_gaussian_kl(mean_q, log_std_q, mean_q, log_std_q)) == 0.0
