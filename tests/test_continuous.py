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

from conftest import one_by_one_greedy_returns

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


def test_batched_final_evaluation_unsquashes_like_one_by_one_on_pendulum(ray_session):
    import functools

    from rllib_staq.evaluation import greedy_episode_returns

    algo = tiny_pendulum_config().build_algo()
    try:
        algo.train()
        make_env = functools.partial(gym.make, "Pendulum-v1")
        batched = greedy_episode_returns(algo.get_module(), make_env, 3, 100)
        expected = one_by_one_greedy_returns(algo.get_module(), make_env, range(100, 103))
        assert batched == pytest.approx(expected, rel=1e-5)
        assert len(set(expected)) == 3
    finally:
        algo.stop()


def test_pendulum_example_flags_reach_its_config():
    from test_learning import load_example

    example = load_example("pendulum_staq")
    args = example.parser.parse_args(
        [
            "--stack-size",
            "3",
            "--actor-fit",
            "weighted_ml",
            "--weighted-ml-uniform-fraction",
            "0.25",
        ]
    )
    config = example.config_builder(args)(seed=1)
    assert (config.stack_size, config.actor_fit) == (3, "weighted_ml")
    assert config.weighted_ml_uniform_fraction == 0.25
    default = example.config_builder(example.parser.parse_args([]))()
    assert (default.stack_size, default.actor_fit, default.weighted_ml_uniform_fraction) == (
        10,
        "reverse_kl",
        0.0,
    )


def test_weighted_ml_fit_trains_on_pendulum(ray_session):
    """actor_fit='weighted_ml' end to end: the fit's metrics, through the tuned example."""
    from test_learning import load_example

    example = load_example("pendulum_staq")
    args = example.parser.parse_args(["--actor-fit", "weighted_ml"])
    assert example.build_config(actor_fit=args.actor_fit).actor_fit == "weighted_ml"
    config = tiny_pendulum_config(
        actor_fit="weighted_ml", weighted_ml_states=64, weighted_ml_actions=4
    )
    algo = config.build_algo()
    try:
        for _ in range(2):
            result = algo.train()
        learner = result["learners"]["default_policy"]
        assert 1.0 <= learner["weighted_ml_effective_sample_size"] <= 4.0
        assert math.isfinite(learner["actor_loss"])
        # The probe's reverse-KL loss is logged in both modes (to compare the fits).
        assert math.isfinite(learner["actor_loss_after_fit"])
        assert int(algo.get_module().num_actor_fits) == 2
    finally:
        algo.stop()


def test_mujoco_continuous_example_trains_its_actor_on_hopper(ray_session):
    """The continuous MuJoCo example on Hopper-v5 (3 action dimensions), shrunk to seconds:
    the continuous learner, two actor fits, actions inside RLlib's normalised box."""
    pytest.importorskip("mujoco", reason='needs the mujoco extra: pip install -e ".[mujoco]"')
    from test_learning import load_example

    config = (
        load_example("mujoco_continuous_staq")
        .build_config(robot="Hopper")
        .rl_module(model_config={"fcnet_hiddens": [16, 16]})
        .training(
            env_steps_per_iteration=100,
            grad_steps_per_iteration=5,
            actor_steps_per_iteration=5,
            train_batch_size_per_learner=32,
        )
        .evaluation(evaluation_interval=None)
    )
    algo = config.build_algo()
    try:
        assert isinstance(algo.learner_group._learner, ContinuousStaQTorchLearner)
        for _ in range(2):
            result = algo.train()
        assert int(algo.get_module().num_actor_fits) == 2
        assert math.isfinite(result["learners"]["default_policy"]["actor_loss"])
        module = algo.get_module()
        obs = torch.zeros((4, 11))  # Hopper-v5's 11 observations
        with torch.no_grad():
            out = module.forward_inference({"obs": obs})
        assert out["action_dist_inputs"].shape == (4, 6)  # mean and log-std per dimension
    finally:
        algo.stop()


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
        ("actor_fit", "forward_kl"),
        ("weighted_ml_states", 0),
        ("weighted_ml_actions", 1),
        ("weighted_ml_uniform_fraction", 1.0),
        ("weighted_ml_uniform_fraction", -0.1),
        ("weighted_ml_uniform_fraction", "0.2"),
    ],
)
def test_bad_actor_settings_refused(name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        tiny_pendulum_config(**{name: value})


@pytest.mark.parametrize(
    "name,value",
    [("expected_next_value", True), ("exact_refresh_interval", 10), ("n_step", 3)],
)
def test_discrete_only_settings_refused_for_a_box(name, value):
    config = tiny_pendulum_config(**{name: value})
    with pytest.raises(ValueError, match=f"`{name}`.*Box action space"):
        config.validate()


def test_actor_settings_refused_for_a_discrete_env():
    config = tiny_pendulum_config(actor_lr=1e-3).environment("CartPole-v1")
    with pytest.raises(ValueError, match="`actor_lr` is used only with a Box"):
        config.validate()


@pytest.mark.parametrize(
    "name,value",
    [
        ("weighted_ml_states", 512),
        ("weighted_ml_actions", 8),
        ("weighted_ml_uniform_fraction", 0.2),
    ],
)
def test_weighted_ml_settings_refused_for_the_reverse_kl_fit(name, value):
    with pytest.raises(ValueError, match=f"`{name}` is used only with actor_fit='weighted_ml'"):
        tiny_pendulum_config(**{name: value}).validate()
    tiny_pendulum_config(**{name: value}, actor_fit="weighted_ml").validate()


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


# --------------------------------------------------------------------------- #
# 5. Through the learner: a squashed 1-D bandit, and SAC's actor loss at M=1.
# --------------------------------------------------------------------------- #
MODULE_ID = "default_policy"


def build_box_learner(obs_dim, action_dim, hiddens, **training):
    """A ContinuousStaQTorchLearner built in-process (no Ray, no env)."""
    obs_space = gym.spaces.Box(-1, 1, (obs_dim,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (action_dim,), np.float32)
    config = (
        StaQConfig()
        .environment(observation_space=obs_space, action_space=action_space)
        .rl_module(model_config={"fcnet_hiddens": list(hiddens)})
        .training(**training)
        .debugging(seed=0)
    )
    learner = config.build_learner(spaces={MODULE_ID: (obs_space, action_space)})
    learner.before_gradient_based_update(timesteps={})  # sets tau for _push
    return learner, learner.module[MODULE_ID].unwrapped()


def add_zero_transitions(learner, num, obs_dim, action_dim):
    learner.add_transitions(
        MODULE_ID,
        {
            Columns.OBS: torch.zeros(num, obs_dim),
            Columns.ACTIONS: torch.zeros(num, action_dim),
            Columns.REWARDS: torch.zeros(num),
            Columns.TERMINATEDS: torch.zeros(num),
            Columns.NEXT_OBS: torch.zeros(num, obs_dim),
        },
    )


def log_one_minus_tanh_squared_reference(u):
    """ln(1 - tanh(u)^2) = ln 4 - 2|u| - 2 ln(1 + e^{-2|u|}) (independent of pmd's form)."""
    return math.log(4.0) - 2.0 * u.abs() - 2.0 * torch.log1p(torch.exp(-2.0 * u.abs()))


ACTION_GRID = torch.linspace(-1.0, 1.0, 2001, dtype=torch.float64)
NOISE_GRID = torch.linspace(-8.0, 8.0, 2001, dtype=torch.float64)


def quadrature_kl_to_energy(mean, log_std, energy):
    """KL(pi_theta || exp(xi)/Z) on [-1, 1] by trapezoid quadrature (float64 scalars in).

    Z = int_{-1}^{1} exp(xi(a)) da on 2001 action points. The KL is integrated in
    the pre-tanh variable u = mean + std*z (2001 points, z in [-8, 8]), where the
    tanh-Gaussian's density is exact: log pi(tanh u) = log N(u; mean, std) -
    ln(1 - tanh(u)^2) (the change-of-variables Jacobian), so
    KL = int phi(z) [log N(u) - ln(1 - tanh^2 u) - xi(tanh u)] dz + log Z.
    """
    log_z = torch.log(torch.trapezoid(torch.exp(energy(ACTION_GRID)), ACTION_GRID))
    u = mean + log_std.exp() * NOISE_GRID
    log_phi = -0.5 * NOISE_GRID**2 - 0.5 * math.log(2.0 * math.pi)
    log_pi = log_phi - log_std - log_one_minus_tanh_squared_reference(u)
    integrand = log_phi.exp() * (log_pi - energy(torch.tanh(u)))
    return torch.trapezoid(integrand, NOISE_GRID) + log_z


def best_tanh_gaussian_kl(energy):
    """min over (mean, log_std) of the quadrature KL (L-BFGS): the family's own error."""
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        kl = quadrature_kl_to_energy(params[0], params[1], energy)
        kl.backward()
        return kl

    optimizer.step(closure)
    with torch.no_grad():
        return float(quadrature_kl_to_energy(params[0], params[1], energy))


# (centre, curvature) of Q(a) = -q (a - m)^2 for each of the E=2 critics, one row
# per push (oldest first). The later targets put their mass against a = +1 or move
# it across the interval, so the tanh squashing and each new push matter.
BANDIT_PUSHES = [
    ((0.2, 1.0), (-0.3, 2.0)),
    ((0.8, 3.0), (0.6, 1.0)),
    ((0.95, 2.0), (0.4, 4.0)),
    ((-0.7, 1.5), (-0.2, 1.0)),  # 4th push into M=3 slots: the first is evicted
    ((0.9, 6.0), (0.7, 2.0)),
]
# Excess KL over the best tanh-Gaussian below which a fit counts as converged.
# Measured on 16 actor initialisations (lr 1e-3, batch 1024): after a checkpoint
# first comes within 2e-3 of the minimum, later checkpoints stay within 2.8e-3
# (Adam's momentum overshoot; fresh noise every step); the end of a fit is within
# 1.8e-3 (the slowest first fits are still closing in at step 300).
CONVERGED_EXCESS_KL = 5e-3
# Actor steps between checkpoints. At 10, Adam's overshoot after the fast initial
# fall (up to ~1e-2 nats for a few steps) broke the strict decrease on 9 of those
# 16 initialisations; at 25, on none.
KL_CHECKPOINT_EVERY = 25


def set_quadratic_critics(module, members):
    """Critic e computes -q_e (a - m_e)^2: one hidden unit h = (a - m_e)^2 (activation x^2)."""
    with torch.no_grad():
        for critic, (m, q) in zip(module.critics, members):
            critic.denses[0].weight.zero_()
            critic.denses[0].bias.zero_()
            critic.denses[0].weight[0, 1] = 1.0  # input = cat(obs, action)
            critic.denses[0].bias[0] = -m
            critic.head.weight.zero_()
            critic.head.weight[0, 0] = -q
            critic.head.bias.zero_()


BANDIT_KL_COEFF, BANDIT_TAU, BANDIT_STACK_SIZE = 1.0, 0.5, 3


def build_bandit_learner(**training):
    """One state, one action dimension, E=2 critics of one hidden unit each (activation x^2)."""
    torch.manual_seed(0)  # the actor's initial weights
    learner, module = build_box_learner(
        1,
        1,
        (16,),
        stack_size=BANDIT_STACK_SIZE,
        num_q_networks=2,
        entropy_coeff=BANDIT_TAU,
        scale_entropy_by_log_actions=False,
        kl_coeff=BANDIT_KL_COEFF,
        actor_lr=1e-3,
        actor_steps_per_iteration=300,
        **training,
    )
    module.activation = Square()  # the stacked forward's activation: h = (a - m)^2
    add_zero_transitions(learner, 64, obs_dim=1, action_dim=1)
    return learner, module


def push_quadratic_critics(learner, module, k):
    """Pushes BANDIT_PUSHES[k] through the learner; returns the hand-computed xi_{k+1}(a).

    xi_{k+1}(a) = sum_i w_i mean_e -q_{k-i,e} (a - m_{k-i,e})^2 with the closed-form
    weights w_i = alpha beta^i / (1 - beta^M), by hand from Eq. 5 and 7:
    beta = kl/(kl+tau), alpha = 1/(kl+tau); checked against the stack's energy.
    """
    alpha = 1.0 / (BANDIT_KL_COEFF + BANDIT_TAU)
    beta = BANDIT_KL_COEFF / (BANDIT_KL_COEFF + BANDIT_TAU)
    stack_size = BANDIT_STACK_SIZE
    set_quadratic_critics(module, BANDIT_PUSHES[k])
    learner._push(MODULE_ID)
    weights = [alpha * beta**i / (1.0 - beta**stack_size) for i in range(min(k + 1, stack_size))]

    def energy(a):
        total = torch.zeros_like(a)
        for i, weight in enumerate(weights):
            pushed = BANDIT_PUSHES[k - i]
            total = total + weight * sum(-q * (a - m) ** 2 for m, q in pushed) / len(pushed)
        return total

    # The stack's energy is the hand-computed one (else a KL to it is to the wrong target).
    grid = ACTION_GRID[::100]
    stack = module.stack_energy(torch.zeros(len(grid), 1), grid.float()[:, None])
    torch.testing.assert_close(stack.double(), energy(grid), rtol=1e-5, atol=1e-5)
    return energy


def test_actor_fit_decreases_the_quadrature_kl_to_the_stack_target():
    """A one-state bandit on [-1, 1] through the learner's own push and actor fit.

    The critics are set to known quadratics before each push (one hidden unit
    h = (a - m)^2 with the stack's activation x^2, head -q), so
    xi_{k+1}(a) = sum_i w_i mean_e -q_{i,e} (a - m_{i,e})^2 with the closed-form
    weights w_i = alpha beta^i / (1 - beta^M) is known by hand; the target exp(xi)/Z is a
    Gaussian cut to [-1, 1], which a tanh-Gaussian approximates but cannot equal.
    ``learner._fit_actor`` runs unchanged (its sampling, loss, Adam); an Adam
    post-step hook records KL(pi_theta || exp(xi)/Z) by quadrature.

    Per fit: the KL falls at every checkpoint (every 25 of its 300 steps) until
    it is within CONVERGED_EXCESS_KL of the best tanh-Gaussian's KL (L-BFGS on
    the same quadrature), stays in that band, and ends there. Bound at the end of
    each fit: KL <= KL*_k + 5e-3 nats, where KL*_k (0.023-0.062 nats for these
    targets) is what no tanh-Gaussian can beat; also KL* < 0.07, so the end KL is
    below 0.075 nats in absolute terms (from 0.15-0.85 at the start of a fit).
    The lr is the tuned Pendulum example's actor_lr.
    """
    learner, module = build_bandit_learner(train_batch_size_per_learner=1024)
    table = learner._table(MODULE_ID)
    optimizer = learner.get_optimizer(MODULE_ID, "actor")
    obs = torch.zeros(1, 1)

    def actor_kl(energy):
        with torch.no_grad():
            mean, log_std = module.actor(obs)
        return float(quadrature_kl_to_energy(mean.double().sum(), log_std.double().sum(), energy))

    for k in range(len(BANDIT_PUSHES)):
        energy = push_quadratic_critics(learner, module, k)
        kls = [actor_kl(energy)]
        hook = optimizer.register_step_post_hook(
            lambda *_, kls=kls, energy=energy: kls.append(actor_kl(energy))
        )
        try:
            learner._fit_actor(MODULE_ID, table)
        finally:
            hook.remove()
        assert len(kls) == 301
        best = best_tanh_gaussian_kl(energy)
        assert best < 0.07
        checkpoints = kls[::KL_CHECKPOINT_EVERY]
        for before, after in zip(checkpoints, checkpoints[1:]):
            if before > best + CONVERGED_EXCESS_KL:
                assert after < before, (k, checkpoints, best)
            else:
                assert after <= best + CONVERGED_EXCESS_KL, (k, checkpoints, best)
        assert kls[-1] <= best + CONVERGED_EXCESS_KL, (k, kls[-1], best)
        assert kls[0] > best + CONVERGED_EXCESS_KL  # so each fit must fall at least once
        assert int(module.num_actor_fits) == k + 1


def test_weighted_ml_loss_is_minimised_by_the_weighted_moments():
    """The M-step's closed form: the weighted Gaussian fit is the weighted mean and std."""
    generator = torch.Generator().manual_seed(5)
    pre_tanh = torch.randn(3, 40, 2, generator=generator, dtype=torch.float64) * 0.7 + 0.2
    weights = torch.softmax(torch.randn(3, 40, generator=generator, dtype=torch.float64), -1)
    params = torch.zeros(2, 3, 2, dtype=torch.float64, requires_grad=True)  # mean, log_std
    optimizer = torch.optim.LBFGS(
        [params],
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = pmd.weighted_ml_actor_loss(weights, pre_tanh, params[0], params[1])
        loss.backward()
        return loss

    optimizer.step(closure)
    mean = (weights[..., None] * pre_tanh).sum(1)
    std = (weights[..., None] * (pre_tanh - mean[:, None]) ** 2).sum(1).sqrt()
    torch.testing.assert_close(params[0].detach(), mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(params[1].detach().exp(), std, rtol=1e-6, atol=1e-6)


def test_self_normalised_weights_and_effective_sample_size():
    proposal_log_prob = torch.tensor([[-1.0, -2.0, -3.0], [0.5, 0.5, 0.5]])
    # Energy = log q + a per-state constant: the proposal is the target, weights uniform.
    uniform = pmd.self_normalised_weights(
        proposal_log_prob + torch.tensor([[4.0], [-7.0]]), proposal_log_prob
    )
    torch.testing.assert_close(uniform, torch.full((2, 3), 1 / 3))
    torch.testing.assert_close(pmd.effective_sample_size(uniform), torch.tensor([3.0, 3.0]))
    # By hand: w ∝ exp(xi - log q); one dominant action gives an ESS near 1.
    energy = torch.tensor([[0.0, 0.0, 0.0], [20.0, 0.0, 0.0]])
    weights = pmd.self_normalised_weights(energy, proposal_log_prob)
    expected = torch.tensor([1.0, math.e, math.e**2]) / (1 + math.e + math.e**2)
    torch.testing.assert_close(weights[0], expected)
    assert float(pmd.effective_sample_size(weights)[1]) == pytest.approx(1.0, abs=1e-8)


def forward_kl_optimum(energy):
    """Pre-tanh mean and std of exp(xi)/Z on [-1, 1] by quadrature (the tanh-Gaussian
    minimiser of KL(exp(xi)/Z || pi_theta): the Gaussian fit of u = atanh a)."""
    u = torch.linspace(-8.0, 8.0, 4001, dtype=torch.float64)
    log_density_u = energy(torch.tanh(u)) + log_one_minus_tanh_squared_reference(u)
    p = torch.softmax(log_density_u, 0)
    mean = (p * u).sum()
    return float(mean), float((p * (u - mean) ** 2).sum().sqrt())


# Measured with the settings below (N=16, 300 steps): the fitted pre-tanh mean is within
# 0.081 of the forward-KL optimum and the std 0.78-1.01 of it (self-normalised
# importance sampling from the previous, narrower actor underestimates the spread);
# the reverse KL ends within 0.0096 nats of the best tanh-Gaussian's. The bounds
# leave room for other initialisations. With uniform weights (the proposal copied) the
# actor stays near pi_0 (pre-tanh mean 0.01, std 0.90) and the first push already fails.
WEIGHTED_ML_MEAN_TOL = 0.12
WEIGHTED_ML_STD_RATIO = (0.7, 1.1)
WEIGHTED_ML_EXCESS_KL = 0.015


def test_weighted_ml_fit_tracks_the_stack_target():
    """actor_fit='weighted_ml' through the learner on the bandit of the reverse-KL test.

    Each push moves the target; one fit (the stack evaluated once on 2048 x 16
    proposal actions from the previous actor, uniform at the first fit) must land
    near the forward-KL optimum by quadrature and close the reverse KL to within
    WEIGHTED_ML_EXCESS_KL of the best tanh-Gaussian's.
    """
    learner, module = build_bandit_learner(
        train_batch_size_per_learner=256,
        actor_fit="weighted_ml",
        weighted_ml_states=2048,
        weighted_ml_actions=16,
    )
    table = learner._table(MODULE_ID)
    obs = torch.zeros(1, 1)
    for k in range(len(BANDIT_PUSHES)):
        energy = push_quadratic_critics(learner, module, k)
        learner._fit_actor(MODULE_ID, table)
        with torch.no_grad():
            mean, log_std = (t.double().sum() for t in module.actor(obs))
        target_mean, target_std = forward_kl_optimum(energy)
        assert abs(float(mean) - target_mean) < WEIGHTED_ML_MEAN_TOL, (k, float(mean), target_mean)
        low, high = WEIGHTED_ML_STD_RATIO
        assert low < float(log_std.exp()) / target_std < high, (k, float(log_std.exp()), target_std)
        kl = float(quadrature_kl_to_energy(mean, log_std, energy))
        assert kl < best_tanh_gaussian_kl(energy) + WEIGHTED_ML_EXCESS_KL, (k, kl)
        ess = learner.metrics.peek((MODULE_ID, "weighted_ml_effective_sample_size"))
        assert 1.0 <= ess <= 16.0


def pin_actor(module, mean: float, std: float) -> None:
    """The actor outputs pre-tanh N(mean, std) at every state (a 1-D action)."""
    with torch.no_grad():
        module.actor.head.weight.zero_()
        module.actor.head.bias.copy_(torch.tensor([mean, math.log(std)]))


def test_defensive_mixture_log_prob_by_hand():
    policy, uniform = torch.tensor([math.log(0.8)]), torch.tensor([math.log(0.5)])
    mixed = pmd.defensive_mixture_log_prob(policy, uniform, 0.25)
    torch.testing.assert_close(mixed, torch.tensor([math.log(0.75 * 0.8 + 0.25 * 0.5)]))


def test_defensive_proposal_density_is_the_density_of_its_samples():
    """The mixture's log q integrates to 1 on (-1, 1), and 200k of the learner's
    proposal actions match it: their mean and P(a > 0.5) against quadrature
    within 4 standard errors. A density missing the uniform part (or the tanh
    Jacobian) fails both: the actor alone puts almost no mass above 0.5."""
    fraction = 0.3
    learner, module = build_bandit_learner(
        actor_fit="weighted_ml", weighted_ml_uniform_fraction=fraction
    )
    pin_actor(module, mean=-0.4, std=0.2)
    grid = torch.linspace(-1 + 1e-6, 1 - 1e-6, 200_001, dtype=torch.float64)
    mean, log_std = (t.double() for t in module.actor(torch.zeros(1, 1)))
    with torch.no_grad():
        density = learner._mixture_log_prob(
            torch.atanh(grid)[:, None], mean, log_std, fraction
        ).exp()
    assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-4)
    expected_mean = float(torch.trapezoid(density * grid, grid))
    expected_tail = float(torch.trapezoid(density * (grid > 0.5), grid))
    samples = 200_000
    with torch.no_grad():
        pre_tanh, log_q = learner._proposal_actions(
            module, torch.zeros(1, 1), samples, uniform=False, uniform_fraction=fraction
        )
    actions = torch.tanh(pre_tanh).flatten().double()
    std_error = float(actions.std()) / math.sqrt(samples)
    assert abs(float(actions.mean()) - expected_mean) < 4 * std_error
    tail_error = math.sqrt(expected_tail * (1 - expected_tail) / samples)
    assert abs(float((actions > 0.5).double().mean()) - expected_tail) < 4 * tail_error
    assert expected_tail > 0.07  # the uniform part gives 0.3 * 0.25; the actor ~0
    # The returned log q is the mixture's density at the samples themselves.
    torch.testing.assert_close(
        log_q.flatten(),
        learner._mixture_log_prob(pre_tanh, mean.float(), log_std.float(), fraction).flatten(),
    )


# A target far from the actor: pre-tanh N(0.4, 0.3) against an actor pinned at N(-0.3, 0.15).
FAR_TARGET, FAR_ACTOR = (0.4, 0.3), (-0.3, 0.15)


def weighted_moments_from_the_proposal(fraction: float) -> tuple[float, float]:
    """The weighted-ML fit's closed form (weighted mean and std of u, pooled over 4096
    states, 16 actions each) onto FAR_TARGET, from the learner's proposal."""
    learner, module = build_bandit_learner(
        actor_fit="weighted_ml", weighted_ml_uniform_fraction=fraction
    )
    pin_actor(module, *FAR_ACTOR)
    with torch.no_grad():
        pre_tanh, log_q = learner._proposal_actions(
            module, torch.zeros(4096, 1), 16, uniform=False, uniform_fraction=fraction
        )
        u = pre_tanh[..., 0].double()
        centre, spread = FAR_TARGET
        # log density of the target as an action: its pre-tanh Gaussian and the Jacobian
        energy = -0.5 * ((u - centre) / spread) ** 2 - pmd.log_one_minus_tanh_squared(u)
        weights = pmd.self_normalised_weights(energy, log_q.double())
    means = (weights * u).sum(-1)
    variances = (weights * (u - means[:, None]) ** 2).sum(-1)
    pooled_mean = means.mean()
    return float(pooled_mean), float(
        (variances.mean() + ((means - pooled_mean) ** 2).mean()).sqrt()
    )


def test_defensive_proposal_recovers_a_target_far_from_the_actor():
    """With every proposal action from the narrow actor, the weighted fit stays near it.
    Measured here: mean -0.11, std 0.15 against the target's 0.4, 0.3. Uniform shares
    of 0.25 and 0.5 bring it to (0.31, 0.37) and (0.37, 0.33): the mean's error falls
    below a fifth of the plain proposal's and within 0.05 at 0.5."""
    centre, spread = FAR_TARGET
    plain_mean, plain_std = weighted_moments_from_the_proposal(0.0)
    assert centre - plain_mean > 0.3 and plain_std < 0.8 * spread  # the failure mode
    quarter_mean, _ = weighted_moments_from_the_proposal(0.25)
    assert abs(quarter_mean - centre) < 0.2 * abs(plain_mean - centre)
    mean, std = weighted_moments_from_the_proposal(0.5)
    assert abs(mean - centre) < 0.05 and abs(std - spread) < 0.05, (mean, std)


def test_actor_loss_at_one_critic_with_the_correction_is_sacs_over_tau():
    """M=1, weight correction on: the learner's actor loss is SAC's actor loss / tau.

    With c = 1/(1 - beta) and alpha/(1 - beta) = 1/tau (pmd.pmd_step_sizes), the
    stack's energy is xi = c alpha mean_e Q_e = mean_e Q_e / tau, so
    log pi - xi = (tau log pi - mean_e Q_e) / tau: exactly SAC's per-sample actor
    loss divided by tau, with no additive constant (log Z does not enter the
    sampled loss). The Q aggregation is StaQ's ensemble mean (RLlib's SAC takes
    the min of its twin critics; the mean is what Eq. 7 stacks). Checked per
    sample and for the batch mean, and for the actor-parameter gradient, on the
    same states and the same reparameterisation noise, after two pushes into the
    one slot (only the newest critics may count).
    """
    kl_coeff = 2.0  # without the correction xi would be Q / (tau + kl_coeff): a failing test
    learner, module = build_box_learner(
        3, 2, (16, 16), stack_size=1, num_q_networks=2, entropy_coeff=0.3, kl_coeff=kl_coeff
    )
    tau = learner.entropy_coeff(MODULE_ID)
    assert tau == pytest.approx(0.3 / (2 * math.log(2.0)))  # tau / (d ln 2), d = 2
    module.double()
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        randomise_critics(module, generator)
        learner._push(MODULE_ID)
    for param in module.actor.parameters():  # a non-trivial actor
        with torch.no_grad():
            param.copy_(0.5 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    obs = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    noise = torch.randn(16, 2, generator=generator, dtype=torch.float64)

    def sac_per_sample():
        """SAC's actor loss per sample, from torch.distributions and the live critics."""
        mean, log_std = module.actor(obs)
        pre_tanh = mean + log_std.exp() * noise
        actions = torch.tanh(pre_tanh)
        log_pi = torch.distributions.Normal(mean, log_std.exp()).log_prob(pre_tanh).sum(-1)
        log_pi = log_pi - log_one_minus_tanh_squared_reference(pre_tanh).sum(-1)
        obs_actions = torch.cat([obs, actions], -1)
        q = torch.stack([critic(obs_actions) for critic in module.critics]).mean(0)  # [B]
        return tau * log_pi - q

    sac = sac_per_sample()
    assert float(sac.detach().std()) > 0.1  # a batch whose samples differ
    per_sample = torch.stack(
        [
            ContinuousStaQTorchLearner.actor_loss(module, obs[i : i + 1], noise[i : i + 1])
            for i in range(obs.shape[0])
        ]
    )
    torch.testing.assert_close(tau * per_sample, sac.detach(), rtol=1e-10, atol=1e-10)

    actor_params = list(module.actor.parameters())
    loss = ContinuousStaQTorchLearner.actor_loss(module, obs, noise)
    staq_grads = torch.autograd.grad(tau * loss, actor_params)
    sac_loss = sac_per_sample().mean()
    sac_grads = torch.autograd.grad(sac_loss, actor_params)
    torch.testing.assert_close(tau * loss, sac_loss, rtol=1e-10, atol=1e-10)
    for staq_grad, sac_grad in zip(staq_grads, sac_grads):
        torch.testing.assert_close(staq_grad, sac_grad, rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------- #
# 6. Learning (``pytest -m learning``): the tuned Pendulum example.
# --------------------------------------------------------------------------- #
@pytest.mark.learning
@pytest.mark.parametrize("actor_fit", ["reverse_kl", "weighted_ml"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pendulum_greedy_return_reaches_minus_200(ray_session, seed, actor_fit):
    """tuned_examples/pendulum_staq.py (M=10): greedy mean return >= -200 within 12k env steps.

    docs/results_continuous.md measured the first greedy evaluation >= -200 at 4k, 8k
    and 4k env steps on seeds 0, 1, 2 with the reverse-KL fit, and at 4k, 6k and 6k with
    the weighted-ML fit; 12k is 1.5x the slowest (evaluations every 2k).
    """
    from test_learning import greedy_return_within, load_example

    config = load_example("pendulum_staq").build_config(seed=seed, actor_fit=actor_fit)
    assert greedy_return_within(config, env_steps=12_000, stop_return=-200.0) >= -200.0
