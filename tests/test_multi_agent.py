"""Multi-agent StaQ on RLlib's MultiAgentCartPole (issue 14, item 1).

One StaQ module per policy: its own stack, ensembles and transition table, its
own settings, trained only if in ``policies_to_train``, restorable on its own.
"""

import importlib.util
import pathlib
import sys

import gymnasium as gym
import numpy as np
import pytest
import ray
import torch
from ray.rllib.core import (
    COMPONENT_LEARNER,
    COMPONENT_LEARNER_GROUP,
    COMPONENT_RL_MODULE,
)
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.multi_agent_env import MultiAgentEnv
from ray.rllib.examples.envs.classes.multi_agent import MultiAgentCartPole

from rllib_staq import StaQConfig, pmd
from rllib_staq.staq_learner import N_STEP_HORIZONS
from rllib_staq.torch.staq_torch_learner import REPLAY_STATE_KEY

from conftest import tiny_config

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "tuned_examples"
# Remote EnvRunners cannot import this test module: send its mapping functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def policy_per_agent(agent_id, episode, **kwargs):
    return f"p{agent_id}"


def shared_policy(agent_id, episode, **kwargs):
    return "shared"


def ma_config(policies=("p0", "p1"), **training):
    mapping = shared_policy if policies == ("shared",) else policy_per_agent
    return (
        tiny_config(**training)
        .environment(MultiAgentCartPole, env_config={"num_agents": 2})
        .multi_agent(policies=set(policies), policy_mapping_fn=mapping)
    )


def learner_module(algo, module_id):
    return algo.learner_group._learner.module[module_id].unwrapped()


def learner_table(algo, module_id):
    return algo.learner_group._learner._tables[module_id]


def test_two_policies_each_train_their_own_stack(ray_session):
    algo = ma_config().build_algo()
    try:
        for _ in range(2):
            result = algo.train()
        p0, p1 = learner_module(algo, "p0"), learner_module(algo, "p1")
        assert int(p0.num_pushes) == int(p1.num_pushes) == 2
        # Different agents, different data: the stacks differ.
        assert not torch.equal(p0.stack_buffer("head.weight"), p1.stack_buffer("head.weight"))
        # Each table holds exactly its agent's transitions.
        module_steps = result["env_runners"]["num_module_steps_sampled_lifetime"]
        agent_steps = result["env_runners"]["num_agent_steps_sampled_lifetime"]
        assert module_steps["p0"] == agent_steps["0"] and module_steps["p1"] == agent_steps["1"]
        # Metrics per policy, as RLlib reports them (learners/<id>, replay_buffer/<metric>/<id>).
        for module_id in ("p0", "p1"):
            assert learner_table(algo, module_id).size == module_steps[module_id]
            learner = result["learners"][module_id]
            assert learner["num_pushes"] == 2 and np.isfinite(learner["td_loss"])
            stored = result["replay_buffer"]["num_module_steps_stored"][module_id]
            assert stored == module_steps[module_id]
        # The EnvRunner acts with each policy's current stack.
        obs = torch.randn(3, 4)
        runner = algo.env_runner.module
        for module_id in ("p0", "p1"):
            torch.testing.assert_close(
                runner[module_id].stack_logits(obs),
                learner_module(algo, module_id).stack_logits(obs),
            )
    finally:
        algo.stop()


def test_one_shared_policy_learns_from_both_agents(ray_session):
    algo = ma_config(policies=("shared",)).build_algo()
    try:
        result = algo.train()
        agent_steps = result["env_runners"]["num_agent_steps_sampled_lifetime"]
        assert set(algo.learner_group._learner.module.keys()) == {"shared"}
        assert learner_table(algo, "shared").size == sum(agent_steps.values())
        assert int(learner_module(algo, "shared").num_pushes) == 1
    finally:
        algo.stop()


class _MixedActionsEnv(MultiAgentEnv):
    """Agent "a" has discrete actions, agent "b" continuous ones."""

    def __init__(self, config=None):
        super().__init__()
        self.agents = self.possible_agents = ["a", "b"]
        self.observation_spaces = {aid: gym.spaces.Box(-1, 1, (2,)) for aid in self.agents}
        self.action_spaces = {
            "a": gym.spaces.Discrete(2),
            "b": gym.spaces.Box(-1, 1, (1,)),
        }

    def reset(self, *, seed=None, options=None):
        return {aid: np.zeros(2, np.float32) for aid in self.agents}, {}

    def step(self, actions):
        obs = {aid: np.zeros(2, np.float32) for aid in actions}
        return obs, dict.fromkeys(actions, 0.0), {"__all__": True}, {"__all__": False}, {}


def test_action_space_checked_per_agent(ray_session):
    # MultiAgentCartPole's `action_space` is None: a check of `env.action_space`
    # rejected it; each agent's Discrete space is what counts.
    assert MultiAgentCartPole({"num_agents": 2}).action_space is None
    config = (
        tiny_config()
        .environment(_MixedActionsEnv)
        .multi_agent(
            policies={"a", "b"}, policy_mapping_fn=lambda agent_id, episode, **kw: agent_id
        )
    )
    with pytest.raises(ValueError, match="Agent 'b'.*Discrete"):
        config.build_algo()


def test_per_policy_settings_reach_each_module(ray_session):
    """stack_size, num_q_networks and epsilon per policy reach each module."""
    overrides = ma_config().rl_module(
        algorithm_config_overrides_per_module={
            "p1": StaQConfig.overrides(stack_size=5, num_q_networks=1, epsilon=0.3, kl_coeff=4.0)
        }
    )
    for config in (overrides,):
        algo = config.build_algo()
        try:
            algo.train()
            p0, p1 = learner_module(algo, "p0"), learner_module(algo, "p1")
            assert (p0.stack_size, p0.num_q_networks) == (3, 2)
            assert (p1.stack_size, p1.num_q_networks) == (5, 1)
            assert p0.stack_buffer("head.weight").shape[0] == 3 * 2
            assert p1.stack_buffer("head.weight").shape[0] == 5 * 1
            runner = algo.env_runner.module
            assert runner["p1"].stack_buffer("head.weight").shape[0] == 5
            assert runner["p0"].current_epsilon(None) == pytest.approx(0.05)
            # The weight correction uses each module's own M: scale = alpha*c/E.
            kl_coeff = algo.config.get_config_for_module("p1").kl_coeff  # frozen config
            assert kl_coeff == 4.0
            tau = algo.learner_group._learner.entropy_coeff("p1")
            alpha, beta = pmd.pmd_step_sizes(kl_coeff, tau)
            expected = alpha * pmd.weight_correction(beta, 5, True) / 1
            assert float(p1.logit_scale) == pytest.approx(expected, rel=1e-6)
        finally:
            algo.stop()
    algo = overrides.build_algo()
    try:
        assert algo.env_runner.module["p1"].current_epsilon(None) == pytest.approx(0.3)
    finally:
        algo.stop()


def test_two_places_for_one_module_setting_refused():
    with pytest.raises(ValueError, match="`stack_size` is 3 in training.*5 in rl_module"):
        ma_config().rl_module(model_config={"fcnet_hiddens": [16, 16], "stack_size": 5}).validate()
    both = ma_config().rl_module(
        algorithm_config_overrides_per_module={"p1": StaQConfig.overrides(stack_size=4)},
        rl_module_spec=MultiRLModuleSpec(
            rl_module_specs={"p1": RLModuleSpec(model_config={"stack_size": 5})}
        ),
    )
    with pytest.raises(ValueError, match="`stack_size` of module 'p1'"):
        both.validate()


def test_frozen_policy_keeps_its_stack(ray_session):
    algo = ma_config().multi_agent(policies_to_train=["p0"]).build_algo()
    try:
        frozen_before = {k: v.clone() for k, v in learner_module(algo, "p1").state_dict().items()}
        for _ in range(2):
            algo.train()
        assert int(learner_module(algo, "p0").num_pushes) == 2
        frozen_after = learner_module(algo, "p1").state_dict()
        for key, value in frozen_before.items():
            assert torch.equal(value, frozen_after[key]), key
        assert int(learner_module(algo, "p1").num_pushes) == 0
        assert "p1" not in algo.learner_group._learner._tables
    finally:
        algo.stop()


def test_restore_one_policy_of_two(ray_session, tmp_path):
    """RLlib's restore-1-of-n pattern: only p0 comes from the checkpoint."""
    trained = ma_config().build_algo()
    try:
        for _ in range(2):
            trained.train()
        trained.save_to_path(str(tmp_path))
        trained_p0 = {k: v.clone() for k, v in learner_module(trained, "p0").state_dict().items()}
    finally:
        trained.stop()
    fresh = ma_config().env_runners(num_env_runners=1).build_algo()
    try:
        component = f"{COMPONENT_LEARNER_GROUP}/{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}/p0"
        fresh.restore_from_path(tmp_path / component, component=component)
        p0, p1 = learner_module(fresh, "p0"), learner_module(fresh, "p1")
        for key, value in trained_p0.items():
            assert torch.equal(p0.state_dict()[key], value), key
        assert int(p0.num_pushes) == 2 and int(p1.num_pushes) == 0
        # The remote EnvRunner acts with the restored p0 stack at once.
        obs = torch.randn(4, 4)
        runner_logits = fresh.env_runner_group.foreach_env_runner(
            lambda runner: runner.module["p0"].stack_logits(obs), local_env_runner=False
        )
        torch.testing.assert_close(runner_logits[0], p0.stack_logits(obs))
        assert p0.stack_logits(obs).abs().sum() > 0
        fresh.train()
        assert int(learner_module(fresh, "p0").num_pushes) == 3
    finally:
        fresh.stop()


def _load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.learning
def test_both_policies_learn_multi_agent_cartpole(ray_session):
    """Greedy return per policy >= 400 (of 500) within 80k env steps."""
    config = _load_example("multi_agent_cartpole_staq").build_config(seed=0)
    algo = config.build_algo()
    best = {"p0": -np.inf, "p1": -np.inf}
    try:
        for _ in range(80):
            result = algo.train()
            if result["training_iteration"] % config.evaluation_interval:
                continue
            per_module = result["evaluation"]["env_runners"]["module_episode_returns_mean"]
            for module_id in best:
                best[module_id] = max(best[module_id], per_module[module_id])
            print(result["training_iteration"], per_module, flush=True)
            if min(best.values()) >= 400:
                break
    finally:
        algo.stop()
    assert min(best.values()) >= 400, best


# --- Action spaces the user declares (not read from the env) -----------------------------


def test_user_dict_action_space_is_checked_per_agent(ray_session):
    """``.environment(action_space=Dict)``, as PettingZoo wrappers report it."""
    box = gym.spaces.Box(-1, 1, (1,))
    mixed = ma_config().environment(
        MultiAgentCartPole,
        env_config={"num_agents": 2},
        action_space=gym.spaces.Dict({0: gym.spaces.Discrete(2), 1: box}),
    )
    with pytest.raises(ValueError, match=r"Agent 1: StaQ supports a Discrete.*got Box"):
        mixed.validate()
    # All agents Discrete: accepted (it was refused as a whole Dict) and trains.
    discrete = ma_config().environment(
        MultiAgentCartPole,
        env_config={"num_agents": 2},
        action_space=gym.spaces.Dict({0: gym.spaces.Discrete(2), 1: gym.spaces.Discrete(2)}),
    )
    algo = discrete.build_algo()
    try:
        algo.train()
        assert int(learner_module(algo, "p0").num_pushes) == 1
        assert int(learner_module(algo, "p1").num_pushes) == 1
    finally:
        algo.stop()


def test_user_module_spec_action_space_is_checked_before_anything_runs():
    box = gym.spaces.Box(-1, 1, (1,))
    spec = MultiRLModuleSpec(
        rl_module_specs={
            "p0": RLModuleSpec(),
            "p1": RLModuleSpec(action_space=box, observation_space=gym.spaces.Box(-5, 5, (4,))),
        }
    )
    config = ma_config().rl_module(rl_module_spec=spec)
    # Refused in validate() (no Ray, no EnvRunner), naming the module.
    with pytest.raises(ValueError, match=r"Module 'p1': StaQ supports a Discrete.*got Box"):
        config.validate()


# --- Greedy evaluation and the run folder of a multi-agent --no-tune run ------------------


class _RewardedActionEnv(MultiAgentEnv):
    """Two agents for 4 steps; each agent gets reward 1 when it plays action 1."""

    STEPS = 4

    def __init__(self, config=None):
        super().__init__()
        self.agents = self.possible_agents = ["a", "b"]
        self.observation_spaces = {aid: gym.spaces.Box(-1, 1, (2,)) for aid in self.agents}
        self.action_spaces = {aid: gym.spaces.Discrete(2) for aid in self.agents}

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return {aid: np.zeros(2, np.float32) for aid in self.agents}, {}

    def step(self, actions):
        self.t += 1
        obs = {aid: np.zeros(2, np.float32) for aid in self.agents}
        rewards = {aid: float(action == 1) for aid, action in actions.items()}
        done = self.t >= self.STEPS
        return obs, rewards, {"__all__": done}, {"__all__": False}, {}


class _ConstantActionModule:
    """Stands in for an RLModule: forward_inference always returns one action."""

    action_space = gym.spaces.Discrete(2)

    def __init__(self, action):
        self.action = action

    def forward_inference(self, batch):
        from ray.rllib.core.columns import Columns

        return {Columns.ACTIONS: torch.tensor([self.action])}


def test_greedy_multi_agent_returns_sum_each_agents_own_policy():
    from rllib_staq.evaluation import greedy_multi_agent_episode_returns

    modules = {"plays_1": _ConstantActionModule(1), "plays_0": _ConstantActionModule(0)}
    env = _RewardedActionEnv()
    # "a" maps to the module that earns 1 per step, "b" to the one that earns 0.
    mapping = {"a": "plays_1", "b": "plays_0"}
    returns = greedy_multi_agent_episode_returns(modules, mapping.get, env, 3, first_seed=0)
    assert returns == [_RewardedActionEnv.STEPS * 1.0] * 3
    both = {"a": "plays_1", "b": "plays_1"}
    returns = greedy_multi_agent_episode_returns(modules, both.get, env, 2, first_seed=0)
    assert returns == [_RewardedActionEnv.STEPS * 2.0] * 2


def test_simple_spread_example_shares_one_table_across_its_agents(ray_session):
    pytest.importorskip("mpe2", reason="needs the pettingzoo extra")
    example = _load_example("simple_spread_staq")
    env = example.make_simple_spread({})
    # A user's MultiRLModuleSpec, and the Dict spaces PettingZoo reports, given to the config.
    spec = MultiRLModuleSpec(
        rl_module_specs={"shared": RLModuleSpec(model_config={"fcnet_hiddens": [32]})}
    )
    config = (
        example.build_config(seed=1)
        .environment(
            example.ENV_NAME,
            env_config={"num_agents": example.NUM_AGENTS},
            action_space=env.action_space,
            observation_space=env.observation_space,
        )
        .rl_module(rl_module_spec=spec)
        .training(env_steps_per_iteration=100, grad_steps_per_iteration=5)
    )
    assert isinstance(env.action_space, gym.spaces.Dict)
    algo = config.build_algo()
    try:
        result = algo.train()
        agent_steps = result["env_runners"]["num_agent_steps_sampled_lifetime"]
        assert len(agent_steps) == example.NUM_AGENTS
        # Parameter sharing: every agent's transitions go into the one policy's table.
        assert learner_table(algo, "shared").size == sum(agent_steps.values())
        module = learner_module(algo, "shared")
        assert int(module.num_pushes) == 1
        assert module.stack_buffer("head.weight").shape[-1] == 32  # the user spec's width
    finally:
        algo.stop()


def readme_multi_agent_block() -> str:
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Multi-agent") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_multi_agent_block_trains_as_written(ray_session):
    namespace = {"StaQConfig": StaQConfig}  # from the quick start above it
    exec(compile(readme_multi_agent_block(), "README.md", "exec"), namespace)
    # The block as written, with a smaller iteration so the test takes seconds.
    config = namespace["config"].training(
        env_steps_per_iteration=100, grad_steps_per_iteration=5, train_batch_size_per_learner=32
    )
    algo = config.build_algo()
    try:
        result = algo.train()
        assert learner_module(algo, "p0").stack_size == 50
        assert learner_module(algo, "p1").stack_size == 20
        assert algo.env_runner.module["p1"].current_epsilon(None) == pytest.approx(0.1)
        for module_id in ("p0", "p1"):
            assert result["learners"][module_id]["num_pushes"] == 1
    finally:
        algo.stop()


def test_n_step_per_policy(ray_session):
    """One policy with 3-step targets, one with the paper's 1-step: each table's
    rows look ahead as far as its own module's `n_step` says (CartPole pays 1 per step)."""
    config = ma_config().rl_module(
        algorithm_config_overrides_per_module={"p1": StaQConfig.overrides(n_step=3)}
    )
    algo = config.build_algo()
    try:
        algo.train()
        algo.train()
        for module_id, n_step in (("p0", 1), ("p1", 3)):
            table = learner_table(algo, module_id)
            horizons = table.filled(N_STEP_HORIZONS)
            assert horizons.max().item() == n_step
            closed_form = (1 - 0.99**horizons) / (1 - 0.99)
            torch.testing.assert_close(table.filled(Columns.REWARDS), closed_form)
    finally:
        algo.stop()


def single_policy_algo():
    """Both agents on p0; p1 is added to the built algorithm by the test."""
    return ma_config(policies=("p0",)).multi_agent(policy_mapping_fn=lambda *a, **k: "p0")


def spec_like(algo, module_id, action_space=None, **model_config):
    module = learner_module(algo, module_id)
    return RLModuleSpec(
        module_class=type(module),
        observation_space=module.observation_space,
        action_space=action_space or module.action_space,
        model_config={**module.model_config, **model_config} if model_config else None,
    )


def test_add_module_trains_with_its_own_settings(ray_session):
    """`Algorithm.add_module` (RLlib's API for league and self-play setups): the new
    module gets target networks, its overrides' module settings, and n-step rows
    although the learner was built with 1-step modules only."""
    algo = single_policy_algo().build_algo()
    try:
        algo.train()
        algo.add_module(
            "p1",
            spec_like(algo, "p0"),
            config_overrides=StaQConfig.overrides(n_step=3, stack_size=2),
            new_agent_to_module_mapping_fn=policy_per_agent,
            new_should_module_be_updated=["p0", "p1"],
        )
        algo.train()
        algo.train()
        assert learner_module(algo, "p1").stack_size == 2
        assert algo.env_runner.module["p1"].unwrapped().stack_size == 2
        assert learner_module(algo, "p1").num_pushes.item() == 2
        for module_id, n_step in (("p0", 1), ("p1", 3)):
            horizons = learner_table(algo, module_id).filled(N_STEP_HORIZONS)
            assert horizons.max().item() == n_step
            closed_form = (1 - 0.99**horizons) / (1 - 0.99)
            rewards = learner_table(algo, module_id).filled(Columns.REWARDS)
            torch.testing.assert_close(rewards, closed_form)
    finally:
        algo.stop()


def test_remove_module_drops_its_table_from_memory_and_checkpoints(ray_session):
    algo = (
        ma_config(store_buffer_in_checkpoints=True)
        .multi_agent(policies_to_train=["p0", "p1"])
        .build_algo()
    )
    try:
        algo.train()
        learner = algo.learner_group._learner
        assert set(learner.get_state()[REPLAY_STATE_KEY]) == {"p0", "p1"}
        algo.remove_module("p1", new_agent_to_module_mapping_fn=lambda *a, **k: "p0")
        algo.train()
        assert set(learner.get_state()[REPLAY_STATE_KEY]) == {"p0"}
        for per_module in learner._per_module_state():
            assert "p1" not in per_module
    finally:
        algo.stop()


@pytest.mark.parametrize(
    "overrides, spec_changes, named",
    [
        ({"n_step": -1}, {}, "n_step"),
        ({"env_steps_per_iteration": 50}, {}, "env_steps_per_iteration"),
        ({"stack_size": 2}, {"stack_size": 5}, "stack_size"),
        ({}, {"action_space": gym.spaces.Box(-1.0, 1.0, (2,))}, "Module 'p1'.*Box"),
    ],
)
def test_add_module_refuses_bad_overrides(ray_session, overrides, spec_changes, named):
    """Refused before anything is added: a bad value, an algorithm-wide setting,
    a module setting given two values (override and spec), a Box action space."""
    algo = single_policy_algo().build_algo()
    try:
        with pytest.raises(ValueError, match=named):
            algo.add_module("p1", spec_like(algo, "p0", **spec_changes), config_overrides=overrides)
        assert "p1" not in algo.learner_group._learner.module
        assert "p1" not in algo.env_runner.module
    finally:
        algo.stop()
