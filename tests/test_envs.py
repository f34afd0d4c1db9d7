"""The environments module: the 2d+1 action wrapper, MinAtar and MuJoCo registrations."""

import importlib.util
import pathlib

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray import tune
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from rllib_staq import DiscreteBoxActions, envs, first_episode_evaluation
from rllib_staq.staq import validate_action_space
from rllib_staq.torch.default_staq_torch_rl_module import DefaultStaQTorchRLModule

from conftest import tiny_config

# Bounds that are neither symmetric nor centred on zero, and a float64 dtype.
LOW = np.array([-1.0, 0.0, 2.0])
HIGH = np.array([3.0, 1.0, 5.0])
# Written out by hand: midpoints (1, 0.5, 3.5); row i+1 has joint i at LOW, row d+i+1 at HIGH.
EXPECTED_BOX_ACTIONS = np.array(
    [
        [1.0, 0.5, 3.5],
        [-1.0, 0.5, 3.5],
        [1.0, 0.0, 3.5],
        [1.0, 0.5, 2.0],
        [3.0, 0.5, 3.5],
        [1.0, 1.0, 3.5],
        [1.0, 0.5, 5.0],
    ]
)


class RecordingBoxEnv(gym.Env):
    """Returns the last action it received as its observation."""

    def __init__(self, low=LOW, high=HIGH, dtype=np.float64):
        self.action_space = gym.spaces.Box(np.asarray(low), np.asarray(high), dtype=dtype)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, self.action_space.shape)
        self.received = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(self.observation_space.shape, np.float32), {}

    def step(self, action):
        self.received.append(action)
        obs = np.asarray(action, dtype=np.float32)
        return obs, 0.0, False, False, {}


def test_wrapper_maps_every_action_to_midpoint_or_one_bound():
    env = DiscreteBoxActions(RecordingBoxEnv())
    assert env.action_space == gym.spaces.Discrete(7)
    env.reset(seed=0)
    for action in range(7):
        env.step(action)
    received = np.stack(env.unwrapped.received)
    np.testing.assert_array_equal(received, EXPECTED_BOX_ACTIONS)
    assert all(env.unwrapped.action_space.contains(box) for box in env.unwrapped.received)
    # numpy integers (what RLlib passes) map like Python ints.
    env.step(np.int64(4))
    np.testing.assert_array_equal(env.unwrapped.received[-1], EXPECTED_BOX_ACTIONS[4])


def test_wrapper_keeps_the_box_dtype_and_shape():
    low = np.array([[-2.0, 0.0], [0.5, -4.0]], np.float32)
    env = DiscreteBoxActions(RecordingBoxEnv(low, low + 1.0, np.float32))
    assert env.action_space.n == 2 * 4 + 1
    env.reset(seed=0)
    env.step(2)  # flat joint 1 (row 0, column 1) at its low bound
    box = env.unwrapped.received[-1]
    assert box.dtype == np.float32 and box.shape == (2, 2)
    np.testing.assert_array_equal(box, [[-1.5, 0.0], [1.0, -3.5]])


def test_wrapper_refuses_a_non_box_space_infinite_bounds_and_bad_actions():
    with pytest.raises(ValueError, match="DiscreteBoxActions needs a gymnasium.spaces.Box"):
        DiscreteBoxActions(gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match="finite bounds"):
        DiscreteBoxActions(RecordingBoxEnv(low=[-np.inf, 0.0], high=[1.0, 1.0]))
    env = DiscreteBoxActions(RecordingBoxEnv())
    env.reset(seed=0)
    for bad in (-1, 7):
        with pytest.raises(ValueError, match=r"action must be in 0\.\.6"):
            env.step(bad)


def test_box_space_error_names_the_wrapper_and_its_use():
    with pytest.raises(ValueError, match="Discrete") as error:
        # A multi-agent env's Box agent (the continuous path is single-agent).
        validate_action_space(gym.spaces.Box(-1.0, 1.0, (2,)), whose="Agent 'a'")
    message = str(error.value)
    assert "rllib_staq.DiscreteBoxActions" in message
    assert "DiscreteBoxActions(gymnasium.make('Hopper-v5'))" in message


def test_box_env_trains_once_wrapped(ray_session):
    # (Pendulum-v1 itself trains with the continuous path: tests/test_continuous.py.)
    # The one line of the error message's example, on Pendulum (1 joint: 3 actions).
    tune.register_env(
        "test-discrete-pendulum", lambda cfg: DiscreteBoxActions(gym.make("Pendulum-v1"))
    )
    algo = tiny_config().environment("test-discrete-pendulum").build_algo()
    try:
        result = algo.train()
        assert result["env_runners"]["num_env_steps_sampled_lifetime"] == 100
        assert algo.get_module().action_space == gym.spaces.Discrete(3)
    finally:
        algo.stop()


def test_missing_extra_names_its_install_command():
    with pytest.raises(ImportError, match=r'pip install -e "\.\[minatar\]"'):
        envs.require_extra("rllib_staq_no_such_module", "minatar")


def test_minatar_settings_are_checked_before_import():
    with pytest.raises(ValueError, match="MinAtar game must be one of"):
        envs.make_minatar("Pong", {})
    with pytest.raises(ValueError, match=r"allowed: \['sticky_action_prob'"):
        envs.make_minatar("Breakout", {"sticky_actions": 0.0})


def test_registered_names():
    registered = envs.register_envs()
    assert sorted(registered) == sorted(envs.MINATAR_ENV_NAMES + envs.MUJOCO_ENV_NAMES)
    assert "StaQ/MinAtar-Breakout-v1" in registered and "StaQ/Humanoid-v5" in registered
    for name in registered:
        assert tune.registry._global_registry.contains(tune.registry.ENV_CREATOR, name)


@pytest.mark.parametrize("game", envs.MINATAR_GAMES)
def test_default_cnn_builds_for_each_minatar_game(game):
    channels, num_actions = envs.MINATAR_CHANNELS[game], envs.MINATAR_NUM_ACTIONS[game]
    module = RLModuleSpec(
        module_class=DefaultStaQTorchRLModule,
        observation_space=gym.spaces.Box(0.0, 1.0, (10, 10, channels), np.float32),
        action_space=gym.spaces.Discrete(num_actions),
        model_config={"stack_size": 2, "num_q_networks": 2, "epsilon": 0.05},
    ).build()
    # The paper's MinAtar network: conv 16x3x3 stride 1 -> dense 128 -> head.
    conv = module.q_nets[0].convs[0]
    assert tuple(conv.weight.shape) == (16, channels, 3, 3)
    assert module.q_nets[0].denses[0].weight.shape == (128, 16 * 8 * 8)
    module.push_onto_stack(alpha=0.1, beta=0.9, correction=1.0)
    assert module.stack_logits(torch.rand(5, 10, 10, channels)).shape == (5, num_actions)


@pytest.mark.parametrize("game", envs.MINATAR_GAMES)
def test_minatar_env_as_the_official_code_builds_it(game):
    pytest.importorskip("minatar", reason='needs the minatar extra: pip install -e ".[minatar]"')
    env = envs.make_minatar(game, {})
    channels = envs.MINATAR_CHANNELS[game]
    assert env.observation_space == gym.spaces.Box(0.0, 1.0, (10, 10, channels), np.float32)
    assert env.action_space == gym.spaces.Discrete(envs.MINATAR_NUM_ACTIONS[game])
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (10, 10, channels)
    assert set(np.unique(obs)) <= {0.0, 1.0} and obs.sum() > 0
    # The bool state of the game, cast: the same cells are set.
    np.testing.assert_array_equal(obs, env.unwrapped.game.state().astype(np.float32))
    assert env.spec.max_episode_steps == 5000
    assert env.unwrapped.game.sticky_action_prob == 0.1  # MinAtar's default, kept
    tuned = envs.make_minatar(game, {"sticky_action_prob": 0.0, "max_episode_steps": 3})
    assert tuned.unwrapped.game.sticky_action_prob == 0.0
    tuned.reset(seed=0)
    ends = [tuned.step(0)[2:4] for _ in range(3)]  # (terminated, truncated)
    assert ends == [(False, False), (False, False), (False, True)]


def test_minatar_reaches_a_remote_env_runner(ray_session):
    pytest.importorskip("minatar", reason='needs the minatar extra: pip install -e ".[minatar]"')
    config = (
        tiny_config(env_steps_per_iteration=60)
        .environment("StaQ/MinAtar-Breakout-v1")
        .env_runners(num_env_runners=1, num_envs_per_env_runner=2)
        .rl_module(model_config={"conv_filters": [[4, 3, 1]], "head_fcnet_hiddens": [8]})
    )
    algo = config.build_algo()
    try:
        result = algo.train()
        assert 60 <= result["env_runners"]["num_env_steps_sampled_lifetime"] <= 62
        # The remote runner (its own process) built the env through the registered creator.
        spaces = algo.env_runner_group.foreach_env_runner(
            lambda runner: (runner.env.single_observation_space, runner.env.single_action_space),
            local_env_runner=False,
        )
        assert spaces == [
            (gym.spaces.Box(0.0, 1.0, (10, 10, 4), np.float32), gym.spaces.Discrete(3))
        ]
    finally:
        algo.stop()


# Action dimensions of the gymnasium -v5 robots.
ROBOT_DIMS = {"Hopper": 3, "Walker2d": 6, "HalfCheetah": 6, "Ant": 8, "Humanoid": 17}


@pytest.mark.parametrize("robot", envs.MUJOCO_ROBOTS)
def test_registered_robot_has_2d_plus_1_actions(robot):
    pytest.importorskip("mujoco", reason='needs the mujoco extra: pip install -e ".[mujoco]"')
    creator = tune.registry._global_registry.get(tune.registry.ENV_CREATOR, f"StaQ/{robot}-v5")
    env = creator({})
    dims = ROBOT_DIMS[robot]
    assert env.action_space == gym.spaces.Discrete(2 * dims + 1)
    box = env.unwrapped.action_space
    env.reset(seed=0)
    env.step(dims + 1)  # joint 0 at its high bound
    ctrl = env.unwrapped.data.ctrl
    np.testing.assert_allclose(ctrl[0], box.high[0])
    np.testing.assert_allclose(ctrl[1:], ((box.low + box.high) / 2)[1:])
    env.close()


EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "tuned_examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "example, extra_module, kwargs, env",
    [
        ("mountaincar_staq", None, {}, "MountainCar-v0"),
        ("lunarlander_staq", "Box2D", {}, "LunarLander-v3"),
    ]
    + [
        ("minatar_staq", "minatar", {"game": game}, f"StaQ/MinAtar-{game}-v1")
        for game in envs.MINATAR_GAMES
    ]
    + [
        ("mujoco_staq", "mujoco", {"robot": robot}, f"StaQ/{robot}-v5")
        for robot in envs.MUJOCO_ROBOTS
    ]
    + [
        ("mujoco_continuous_staq", "mujoco", {"robot": robot}, f"{robot}-v5")
        for robot in envs.MUJOCO_ROBOTS
    ],
)
def test_tuned_example_configs_validate(example, extra_module, kwargs, env):
    if extra_module:
        pytest.importorskip(extra_module, reason=f"needs the extra that installs {extra_module}")
    config = load_example(example).build_config(seed=3, **kwargs)
    config.validate()
    assert config.env == env and config.seed == 3
    # With vector envs, RLlib's episode-count evaluation favours short episodes.
    if config.get_evaluation_config_object().num_envs_per_env_runner > 1:
        assert config.custom_evaluation_function is first_episode_evaluation


@pytest.mark.parametrize(
    "example, flag",
    [("minatar_staq", "game"), ("mujoco_staq", "robot"), ("mujoco_continuous_staq", "robot")],
)
def test_family_example_refuses_an_unknown_member(example, flag):
    module = load_example(example)
    with pytest.raises(ValueError, match=f"{flag} must be one of"):
        module.build_config(**{flag: "Pong"})
    with pytest.raises(SystemExit):
        module.parser.parse_args([f"--{flag}", "Pong"])
