"""The comparison command: argument errors, the analysis on known curves, a tiny real run."""

import functools
import importlib.util
import io
import json
import os
import pathlib
import re
import signal
import subprocess
import tarfile

import numpy as np
import pandas as pd
import pytest

from rllib_staq import ablate, compare, envs, first_episode_evaluation, presets

REPO = pathlib.Path(__file__).resolve().parents[1]

TINY_CONFIGS = """
from ray.rllib.algorithms.dqn import DQNConfig

from rllib_staq import StaQConfig


def build_config(algo, env):
    if algo == "StaQ":
        return (
            StaQConfig().environment(env)
            .rl_module(model_config={"fcnet_hiddens": [16, 16]})
            .training(stack_size=3, env_steps_per_iteration=100, grad_steps_per_iteration=10,
                      train_batch_size_per_learner=32, replay_buffer_config={"capacity": 1000})
        )
    if algo == "DQN":
        return (
            DQNConfig().environment(env)
            .rl_module(model_config={"fcnet_hiddens": [16], "head_fcnet_hiddens": []})
            .training(train_batch_size_per_learner=32, num_steps_sampled_before_learning_starts=300,
                      replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": 1000})
        )
    raise ValueError(f"unknown algo {algo}")
"""


# ----------------------------------------------------------------------------- arguments


def test_unknown_algorithm_or_env_is_refused_naming_the_allowed_values(capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(["--algos", "StaQ", "A2C", "--out", "x"])
    error = capsys.readouterr().err
    assert "'A2C'" in error and "['StaQ', 'DQN', 'PPO', 'SAC']" in error
    with pytest.raises(SystemExit):
        compare.parse_args(["--env", "Pong-v5", "--out", "x"])
    error = capsys.readouterr().err
    assert "'Pong-v5'" in error and "CartPole-v1" in error and "Acrobot-v1" in error
    with pytest.raises(ValueError, match=r"allowed algorithms are \['StaQ', 'DQN', 'PPO', 'SAC'\]"):
        presets.check_names(["TD3"], ["CartPole-v1"])
    with pytest.raises(SystemExit):
        ablate.parse_args(["--study", "depth", "--out", "x"])
    assert "stack-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.parse_args(["--seeds", "0", "--out", "x"])
    assert "--seeds must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.parse_args(["--algos", "StaQ", "DQN", "--reference", "PPO", "--out", "x"])
    assert "--reference 'PPO'" in capsys.readouterr().err


def test_evaluation_schedule_must_fit_every_algorithm():
    # PPO's preset samples 4000 env steps per iteration: evaluating every 5000 cannot be
    # the same schedule for it, so the command refuses before anything runs.
    experiment = compare.build_experiments(["PPO"], ["CartPole-v1"])[0]
    with pytest.raises(ValueError, match=r"--eval-every \(5000\).*PPO on CartPole-v1 \(4000\)"):
        compare.with_common_protocol(experiment, eval_every=5000, num_env_runners=0)
    config = compare.with_common_protocol(experiment, eval_every=8000, num_env_runners=0)
    assert config.evaluation_interval == 2 and config.evaluation_duration == 10
    assert config.evaluation_config["explore"] is False
    assert config.custom_evaluation_function is first_episode_evaluation
    assert config.callbacks_on_train_result is compare.mark_evaluated
    # The DQN preset keeps its training settings; only its reporting stride is set.
    dqn = compare.with_common_protocol(
        compare.build_experiments(["DQN"], ["CartPole-v1"])[0], 4000, 0
    )
    assert dqn.min_sample_timesteps_per_iteration == 1000 and dqn.evaluation_interval == 4
    assert dqn.train_batch_size_per_learner == 32 and dqn.n_step == (2, 5)


def test_a_config_the_common_evaluation_cannot_run_is_refused_before_anything_runs():
    experiment = compare.build_experiments(["PPO"], ["CartPole-v1"])[0]
    experiment.config.env_runners(env_to_module_connector=lambda *args: [])
    with pytest.raises(ValueError, match="PPO on CartPole-v1: .*env_to_module_connector"):
        compare.with_common_protocol(experiment, eval_every=8000, num_env_runners=0)


def test_presets_build_the_baselines_of_every_env():
    for env in presets.ENVS:
        for algo in presets.algos_for_env(env):
            config = presets.preset_config(algo, env)
            assert config.env == env
            assert type(config).__name__ == f"{algo}Config"
    assert "no Acrobot-v1 settings" in presets.preset_source("DQN", "Acrobot-v1")
    assert presets.preset_source("StaQ", "CartPole-v1") == "tuned_examples/cartpole_staq.py"


# ------------------------------------------------------- presets of the paper's other envs

MINATAR_ENV = "StaQ/MinAtar-Breakout-v1"


def test_every_preset_validates_and_its_module_acts_on_the_env():
    """All (algorithm, env) presets: validate(), build the RLModule for the env's spaces and
    act on a real observation (the MinAtar baselines through the 10x10 CNN)."""
    import torch

    for env in presets.ENVS:
        environment = compare.make_env(env)
        obs, _ = environment.reset(seed=0)
        # float32, the modules' dtype (the MuJoCo robots observe float64).
        batch = {"obs": torch.as_tensor(np.stack([obs, obs]), dtype=torch.float32)}
        for algo in presets.algos_for_env(env)[1:]:  # the baselines
            config = presets.preset_config(algo, env)
            config.validate()
            module = config.get_rl_module_spec(env=environment).build()
            with torch.no_grad():
                out = module.forward_inference(batch)
            if algo == "DQN":
                assert out["actions"].shape == (2,), (algo, env)
            elif env in presets.CONTINUOUS_ENVS:  # a Gaussian's mean and log-std per dimension
                width = 2 * environment.action_space.shape[0]
                assert out["action_dist_inputs"].shape == (2, width), (algo, env)
            else:
                assert out["action_dist_inputs"].shape == (2, environment.action_space.n)
        environment.close()


def test_minatar_baselines_get_the_staq_cnn():
    import torch

    for game, channels in envs.MINATAR_CHANNELS.items():
        env = envs.minatar_env_name(game)
        environment = compare.make_env(env)
        assert environment.observation_space.shape == (10, 10, channels)
        for algo in presets.BASELINE_ALGOS:
            module = presets.preset_config(algo, env).get_rl_module_spec(env=environment).build()
            convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
            linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
            # conv 16 3x3 stride 1, valid padding: 10x10 -> 8x8x16 = 1024 features -> 128.
            assert {tuple(c.weight.shape) for c in convs} == {(16, channels, 3, 3)}, algo
            assert {c.stride for c in convs} == {(1, 1)}
            assert {(m.in_features, m.out_features) for m in linears if m.in_features == 1024} == {
                (1024, 128)
            }
    ppo = presets.preset_config("PPO", MINATAR_ENV)
    assert ppo.num_epochs == 6 and ppo.model_config["vf_share_layers"] is True
    assert presets.preset_config("SAC", MINATAR_ENV).gamma == 0.95
    # StaQ on MinAtar is the tuned example for that game.
    staq = presets.preset_config("StaQ", envs.minatar_env_name("Seaquest"))
    assert staq.env == "StaQ/MinAtar-Seaquest-v1" and staq.reward_scale == 200.0


def test_minatar_dqn_is_minatars_own_dqn_at_staqs_update_to_data_ratio():
    from ray.rllib.algorithms.dqn.dqn import calculate_rr_weights

    staq = presets.preset_config("StaQ", MINATAR_ENV)
    staq_replayed_per_env_step = (
        staq.grad_steps_per_iteration
        * staq.train_batch_size_per_learner
        / staq.env_steps_per_iteration
    )
    for game in envs.MINATAR_GAMES:
        dqn = presets.preset_config("DQN", envs.minatar_env_name(game))
        dqn.validate()
        assert dqn.training_intensity == staq_replayed_per_env_step == 64
        assert dqn.train_batch_size_per_learner == staq.train_batch_size_per_learner
        assert dqn.num_envs_per_env_runner == staq.num_envs_per_env_runner == 16
        # RLlib's round robin: one sampling round (16 env steps), then 4 updates of 256.
        assert calculate_rr_weights(dqn) == [1, 4]
        # MinAtar's examples/dqn.py: plain DQN, replay 100k, target every 1000 steps,
        # 5000 random steps, then epsilon 1.0 -> 0.1 over 100k.
        assert (dqn.double_q, dqn.dueling, dqn.n_step) == (False, False, 1)
        assert dqn.replay_buffer_config == {"type": "EpisodeReplayBuffer", "capacity": 100_000}
        assert (dqn.lr, dqn.gamma, dqn.target_network_update_freq) == (2.5e-4, 0.99, 1000)
        assert dqn.num_steps_sampled_before_learning_starts == 5000
        assert dqn.epsilon == [(0, 1.0), (5000, 1.0), (105000, 0.1)]
    assert "kenjyoung/MinAtar/examples/dqn.py" in presets.preset_source("DQN", MINATAR_ENV)


def test_preset_sources_say_which_settings_and_where_they_were_not_tuned():
    for env in presets.ENVS:
        for algo in presets.algos_for_env(env)[1:]:
            source = presets.preset_source(algo, env)
            # The file the settings were read from: Ray's, or MinAtar's own DQN.
            assert "rllib/" in source or "MinAtar/" in source, source
            tuned = (algo, env) in presets.TUNED_BASELINES
            assert (f"not tuned for {env}" in source) != tuned, source
    assert presets.preset_source("DQN", "LunarLander-v3") == (
        "RLlib's CartPole DQN example (rllib/examples/algorithms/dqn/cartpole_dqn.py), "
        "not tuned for LunarLander-v3: RLlib has no LunarLander-v3 settings"
    )
    assert presets.preset_source("PPO", MINATAR_ENV) == (
        "RLlib's CartPole PPO example (rllib/examples/algorithms/ppo/cartpole_ppo.py), "
        f"not tuned for {MINATAR_ENV}: RLlib has no MinAtar settings; the CartPole training "
        "settings with the MinAtar CNN (conv 16 3x3 stride 1, dense 128) instead of its MLP"
    )
    assert presets.preset_source("SAC", "MountainCar-v0") == (
        "RLlib's MountainCar-v0 SAC (discrete) example "
        "(rllib/examples/algorithms/sac/mountaincar_sac.py)"
    )
    assert "not tuned for MountainCar-v0" in presets.preset_source("DQN", "MountainCar-v0")
    assert presets.preset_source("StaQ", MINATAR_ENV) == "tuned_examples/minatar_staq.py"
    sac = presets.preset_config("SAC", "MountainCar-v0")
    assert (sac.actor_lr, sac.critic_lr, sac.alpha_lr) == (2e-4, 8e-4, 9e-4)
    assert sac.replay_buffer_config["alpha"] == 1.0 and sac.train_batch_size_per_learner == 256


def test_pendulum_presets_are_rllibs_continuous_examples_and_dqn_is_refused():
    assert presets.algos_for_env("Pendulum-v1") == ("StaQ", "PPO", "SAC")
    sac = presets.preset_config("SAC", "Pendulum-v1")
    assert (sac.actor_lr, sac.critic_lr, sac.alpha_lr, sac.n_step) == (2e-4, 8e-4, 9e-4, (2, 5))
    assert "fusionnet_hiddens" not in sac.model_config  # the discrete mode's net only
    assert presets.preset_config("SAC", "MountainCar-v0").model_config == {
        **sac.model_config,
        "fusionnet_hiddens": [256, 256, 256],
        "fusionnet_activation": "relu",
    }
    ppo = presets.preset_config("PPO", "Pendulum-v1")
    assert (ppo.lambda_, ppo.vf_clip_param, ppo.num_epochs) == (0.1, 10.0, 6)
    staq = presets.preset_config("StaQ", "Pendulum-v1")
    assert staq.stack_size == 10 and staq.env == "Pendulum-v1"
    with pytest.raises(
        ValueError, match=r"DQN has no preset on Pendulum-v1.*\['StaQ', 'PPO', 'SAC'\]"
    ):
        presets.check_names(["DQN"], ["Pendulum-v1"])
    with pytest.raises(SystemExit):
        compare.parse_args(["--env", "Pendulum-v1", "--algos", "StaQ", "DQN", "--out", "x"])


def test_mujoco_presets_are_rllibs_mujoco_benchmarks_and_staqs_continuous_example():
    assert presets.algos_for_env("Hopper-v5") == ("StaQ", "PPO", "SAC")
    sac = presets.preset_config("SAC", "Hopper-v5")
    assert (sac.actor_lr, sac.critic_lr, sac.alpha_lr) == (3e-4, 3e-4, 3e-4)
    assert (sac.n_step, sac.tau, sac.initial_alpha, sac.train_batch_size_per_learner) == (
        1,
        0.005,
        1.001,
        256,
    )
    assert sac.replay_buffer_config["capacity"] == 1_000_000
    assert compare.env_steps_per_iteration(sac) == 1000
    ppo = presets.preset_config("PPO", "Walker2d-v5")
    assert (ppo.lambda_, ppo.num_epochs, ppo.minibatch_size) == (0.95, 15, 4096)
    assert compare.env_steps_per_iteration(ppo) == 16_384
    staq = presets.preset_config("StaQ", "Humanoid-v5")
    assert staq.env == "Humanoid-v5" and staq.actor_steps_per_iteration == 250
    assert presets.preset_source("StaQ", "Hopper-v5") == "tuned_examples/mujoco_continuous_staq.py"
    assert "benchmark_sac_mujoco.py" in presets.preset_source("SAC", "Ant-v5")
    with pytest.raises(ValueError, match="DQN has no preset on Hopper-v5"):
        presets.check_names(["DQN"], ["Hopper-v5"])


def test_thresholds_are_the_tuned_examples_targets():
    assert set(presets.THRESHOLDS) == set(presets.ENVS)
    minatar = presets.load_tuned_example("minatar_staq")
    for game, target in minatar.TARGET_RETURNS.items():
        assert presets.THRESHOLDS[envs.minatar_env_name(game)] == target
    for env in (
        "CartPole-v1",
        "Acrobot-v1",
        "LunarLander-v3",
        "MountainCar-v0",
        "Pendulum-v1",
        "Hopper-v5",
    ):
        parser = presets.load_tuned_example(presets.STAQ_EXAMPLES[env]).parser
        assert presets.THRESHOLDS[env] == parser.get_default("stop_reward"), env
    assert presets.THRESHOLDS["LunarLander-v3"] == 200.0
    assert presets.THRESHOLDS["MountainCar-v0"] == -150.0


def test_a_missing_extra_names_its_install_command(monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    missing = {"Box2D", "minatar"}
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in missing else find_spec(name, *a),
    )
    with pytest.raises(ImportError, match=re.escape('pip install -e ".[box2d]"')):
        presets.preset_config("DQN", "LunarLander-v3")
    with pytest.raises(ImportError, match=re.escape('pip install -e ".[minatar]"')):
        presets.preset_config("SAC", MINATAR_ENV)
    with pytest.raises(SystemExit):
        compare.parse_args(["--env", MINATAR_ENV, "--algos", "PPO", "--out", "x"])
    assert 'pip install -e ".[minatar]"' in capsys.readouterr().err
    # The core-install envs need no extra.
    presets.check_extras(["CartPole-v1", "MountainCar-v0"])


def test_random_scores_of_mountaincar_and_minatar(monkeypatch):
    from ray.tune.registry import _global_registry

    # MountainCar: the random policy never reaches the flag in 200 steps (-1 per step).
    assert compare.random_score("MountainCar-v0", episodes=5) == -200.0
    # MinAtar through its registered name (issue 12 measured 0.3 for Breakout), also where
    # Tune's registry no longer knows it: the report is written after ray.shutdown().
    monkeypatch.setattr(_global_registry, "contains", lambda *args: False)
    assert 0.0 <= compare.random_score(MINATAR_ENV, episodes=20) < 2.0
    assert compare.make_env(MINATAR_ENV).observation_space.dtype == np.float32


@pytest.mark.parametrize("algo", presets.BASELINE_ALGOS)
def test_minatar_baseline_trains_one_iteration(algo, ray_session):
    """The MinAtar CNN of each baseline preset through RLlib's real learner (tiny sizes)."""
    from ray.rllib.algorithms.ppo import PPOConfig

    config = presets.preset_config(algo, MINATAR_ENV).env_runners(num_env_runners=0)
    if isinstance(config, PPOConfig):
        config.training(train_batch_size_per_learner=64, minibatch_size=32, num_epochs=1)
    else:
        config.training(
            num_steps_sampled_before_learning_starts=32, train_batch_size_per_learner=16
        )
        config.reporting(min_sample_timesteps_per_iteration=100)
    algorithm = config.build_algo()
    try:
        result = algorithm.train()
    finally:
        algorithm.stop()
    losses = result["learners"]["default_policy"]
    assert any(key.endswith("loss") and np.isfinite(value) for key, value in losses.items())


def test_config_module_must_define_build_config(tmp_path):
    module = tmp_path / "empty.py"
    module.write_text("X = 1\n")
    with pytest.raises(ValueError, match="must define build_config"):
        compare.build_experiments(["StaQ"], ["CartPole-v1"], str(module))
    with pytest.raises(ValueError, match="no such file"):
        compare.build_experiments(["StaQ"], ["CartPole-v1"], str(tmp_path / "missing.py"))


def test_ablation_variants():
    variants = ablate.study_variants("stack-size", None, 10)
    assert list(variants) == ["StaQ M=300", "StaQ M=1", "StaQ M=10", "StaQ M=50"]
    correction = ablate.study_variants("weight-correction", None, 5)
    assert [v["weight_correction"] for v in correction.values()] == [True, False]
    assert {v["stack_size"] for v in correction.values()} == {5}
    assert ablate.study_variants("epsilon", None, 10) == {
        "StaQ epsilon=0.05": {"epsilon": 0.05},
        "StaQ epsilon=0": {"epsilon": 0.0},
    }
    experiments = ablate.build_experiments("epsilon", ["Acrobot-v1"], None, 10)
    assert [e.config.epsilon for e in experiments] == [0.05, 0.0]
    assert all(e.config.kl_coeff == 5.0 for e in experiments)  # Acrobot's tuned example


# ----------------------------------------------------------------------------- analysis


def synthetic_frame():
    """Two algorithms, two envs, three seeds; curves with known final scores."""
    rows = []
    for env, offset in (("CartPole-v1", 0.0), ("Acrobot-v1", -500.0)):
        for seed in range(3):
            for index in range(6):
                steps = 1000 * (index + 1)
                rows.append(
                    {
                        "algorithm": "A",
                        "env": env,
                        "seed": seed,
                        "iteration": index + 1,
                        "env_steps": steps,
                        "wall_time_s": 10.0 * (index + 1),
                        "greedy_return": offset + 100.0 * (index + 1),
                        "training_return": offset,
                        "trial_status": "TERMINATED",
                    }
                )
                rows.append(
                    {
                        "algorithm": "B",
                        "env": env,
                        "seed": seed,
                        "iteration": index + 1,
                        "env_steps": steps,
                        "wall_time_s": 5.0 * (index + 1),
                        "greedy_return": offset + 50.0 + seed,
                        "training_return": offset,
                        "trial_status": "TERMINATED",
                    }
                )
    return pd.DataFrame(rows, columns=compare.CSV_COLUMNS)


def test_final_scores_thresholds_and_normalisation_on_known_curves():
    frame = synthetic_frame()
    seeds, steps, _, returns = compare.score_grid(frame, "A", "CartPole-v1")
    assert seeds == [0, 1, 2] and returns.shape == (3, 6)
    np.testing.assert_allclose(steps, 1000 * np.arange(1, 7))
    np.testing.assert_allclose(compare.final_scores(returns), [500.0] * 3)  # mean of 400..600
    runs = frame[(frame["algorithm"] == "A") & (frame["env"] == "CartPole-v1")]
    assert compare.steps_to_threshold(runs, 350.0) == [4000, 4000, 4000]
    assert compare.steps_to_threshold(runs, 1e9) == [None, None, None]
    randoms = {"CartPole-v1": 0.0, "Acrobot-v1": -500.0}
    scores, reason = compare.normalised_final_scores(
        frame, ["CartPole-v1", "Acrobot-v1"], ["A", "B"], randoms
    )
    assert reason is None
    np.testing.assert_allclose(scores["A"], np.ones((3, 2)))  # A is best on both envs
    np.testing.assert_allclose(scores["B"][:, 0], [0.1, 0.102, 0.104])  # (50+seed)/500
    versus = functools.partial(compare.compare_to_reference, "A", fewest_seeds=3)
    assert versus((5, 4, 6), (1, 0, 2)) == "A higher (CIs disjoint)"
    assert versus((5, 4, 6), (5.5, 3, 7)) == "inside the CIs"
    assert versus((1, 0, 2), (5, 4, 6)) == "A lower (CIs disjoint)"
    # One run each: the "interval" is the point, so no CI claim.
    one_seed = functools.partial(compare.compare_to_reference, "A", fewest_seeds=1)
    assert one_seed((5, 5, 5), (1, 1, 1)) == "A higher (1 seed: no CI)"
    assert one_seed((1, 1, 1), (5, 5, 5)) == "A lower (1 seed: no CI)"
    assert one_seed((1, 1, 1), (1, 1, 1)) == "A level (1 seed: no CI)"


def test_report_writes_the_table_and_every_png(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "BOOTSTRAP_REPS", 300)  # seconds, not a minute
    monkeypatch.setattr(
        compare, "random_score", lambda env: {"CartPole-v1": 0.0, "Acrobot-v1": -500.0}[env]
    )
    frame = synthetic_frame()
    failures = [("B", "Acrobot-v1", 7, "RuntimeError('boom')")]
    path = compare.write_report(
        frame,
        failures,
        tmp_path,
        "A",
        presets.THRESHOLDS,
        ["python -m rllib_staq.compare", "--out", "x"],
        print_fn=print,
    )
    text = path.read_text()
    assert "| A | 3 | 500.0 [500.0, 500.0] | - | 5,000, 5,000, 5,000 |" in text
    assert "| B | 3 | 51.0 [50.0, 52.0] | A higher (CIs disjoint) |" in text
    # A rises by 100 at each evaluation: the late half 400, 500, 600 has std 81.6; the
    # differences are all 100: no dispersion, CVaR 100, no drawdown.
    assert "| A | 81.6 [81.6, 81.6] | 0.0 [0.0, 0.0] | 100.0 [100.0, 100.0] | 0.0 [0.0, 0.0] |" in (
        text
    )
    assert "- B Acrobot-v1 seed 7: RuntimeError('boom')" in text
    assert "| A,B | 1.00 [1.00, 1.00] |" in text
    for name in [
        "curves_CartPole-v1_env_steps.png",
        "curves_CartPole-v1_wall_time.png",
        "curves_Acrobot-v1_env_steps.png",
        "curves_Acrobot-v1_wall_time.png",
        "aggregate_intervals.png",
        "performance_profile.png",
        "probability_of_improvement.png",
    ]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"![{name}]({name})" in text


def test_report_only_rebuilds_the_report_from_curves_csv(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare, "BOOTSTRAP_REPS", 300)
    monkeypatch.setattr(
        compare, "random_score", lambda env: {"CartPole-v1": 0.0, "Acrobot-v1": -500.0}[env]
    )
    frame = synthetic_frame()
    # B's seed 2 on Acrobot failed after reporting: curves.csv says so in trial_status.
    failed = (frame["algorithm"] == "B") & (frame["env"] == "Acrobot-v1") & (frame["seed"] == 2)
    frame.loc[failed, "trial_status"] = "ERROR"
    frame.to_csv(tmp_path / "curves.csv", index=False)
    assert compare.main(["--out", str(tmp_path), "--report-only"]) == 0
    text = (tmp_path / "results.md").read_text()
    assert "report rebuilt from curves.csv" in text
    assert "| A | 3 | 500.0 [500.0, 500.0] | - | 5,000, 5,000, 5,000 |" in text
    assert "- B Acrobot-v1 seed 2: status ERROR in curves.csv" in text
    assert (tmp_path / "curves_Acrobot-v1_env_steps.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match="curves.csv"):
        compare.main(["--out", str(tmp_path / "empty"), "--report-only"])
    with pytest.raises(ValueError, match="--reference 'C' must be one of"):
        compare.main(["--out", str(tmp_path), "--report-only", "--reference", "C"])


def test_more_seeds_go_to_a_new_out_and_a_changed_protocol_is_refused(tmp_path):
    args = compare.parse_args(["--out", "x", "--seeds", "2", "--first-seed", "2"])
    assert compare.run_seeds(args) == [2, 3]
    assert compare.run_seeds(compare.parse_args(["--out", "x"])) == [0, 1, 2]
    for argv in (["--first-seed", "-1"], ["--include", "a.csv"]):
        with pytest.raises(SystemExit):
            compare.parse_args(["--out", "x"] + argv)
    protocol = compare.run_protocol(args)
    compare.check_or_record_protocol(tmp_path, protocol)
    compare.check_or_record_protocol(tmp_path, protocol)  # the same command again
    assert json.loads((tmp_path / compare.PROTOCOL_FILE).read_text())["seeds"] == [2, 3]
    with pytest.raises(ValueError, match=r"seeds: ran with \[2, 3\], asked \[0, 1\].*--first-seed"):
        compare.check_or_record_protocol(tmp_path, dict(protocol, seeds=[0, 1]))


def test_report_only_include_merges_the_seeds_of_two_runs(tmp_path, monkeypatch, capsys):
    """Seeds 0-1 in one folder and seed 2 in another give the report of all three."""
    monkeypatch.setattr(compare, "BOOTSTRAP_REPS", 300)
    monkeypatch.setattr(
        compare, "random_score", lambda env: {"CartPole-v1": 0.0, "Acrobot-v1": -500.0}[env]
    )
    full = synthetic_frame()
    first, more = tmp_path / "first", tmp_path / "more"
    first.mkdir(), more.mkdir()
    full[full["seed"] < 2].to_csv(first / "curves.csv", index=False)
    full[full["seed"] == 2].to_csv(more / "curves.csv", index=False)
    argv = ["--out", str(first), "--report-only", "--include", str(more / "curves.csv")]
    assert compare.main(argv) == 0
    merged = pd.read_csv(first / "curves.csv")
    order = ["algorithm", "env", "seed", "env_steps"]
    expected = full.sort_values(order, kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(merged, expected)
    text = (first / "results.md").read_text()
    assert "| B | 3 | 51.0 [50.0, 52.0] |" in text  # seeds 0, 1, 2: 50, 51, 52
    # The same seed twice, and a run on another evaluation schedule, are refused.
    with pytest.raises(ValueError, match=r"runs already in the report: \[\('A', 'Acrobot-v1', 2\)"):
        compare.main(argv)
    # Vector envs: the same schedule a few env steps off (each iteration samples a few more).
    jittered = full[full["seed"] == 2].assign(seed=4, env_steps=lambda f: f["env_steps"] + 37)
    jittered.to_csv(more / "jittered.csv", index=False)
    assert (
        compare.main(
            ["--out", str(first), "--report-only", "--include", str(more / "jittered.csv")]
        )
        == 0
    )
    text = (first / "results.md").read_text()
    assert "| A | 4 | 500.0 [500.0, 500.0] | - | 5,000, 5,000, 5,000, 5,037 |" in text
    shifted = full[full["seed"] == 2].assign(seed=5, env_steps=lambda f: f["env_steps"] * 2)
    shifted.to_csv(more / "shifted.csv", index=False)
    with pytest.raises(ValueError, match="A on Acrobot-v1 evaluated at env steps"):
        compare.main(["--out", str(first), "--report-only", "--include", str(more / "shifted.csv")])


def test_ablation_report_only_compares_with_the_studys_reference(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "BOOTSTRAP_REPS", 300)
    monkeypatch.setattr(compare, "random_score", lambda env: -500.0)
    frame = synthetic_frame()
    frame = frame[frame["env"] == "Acrobot-v1"].replace(
        {"algorithm": {"A": "StaQ epsilon=0.05", "B": "StaQ epsilon=0"}}
    )
    frame.to_csv(tmp_path / "curves.csv", index=False)
    argv = ["--study", "epsilon", "--env", "Acrobot-v1", "--out", str(tmp_path), "--report-only"]
    assert ablate.main(argv) == 0
    text = (tmp_path / "results.md").read_text()
    # "StaQ epsilon=0" sorts first in the CSV; the study's reference is epsilon 0.05.
    assert "# StaQ ablation: epsilon (report rebuilt from curves.csv)" in text
    assert "| vs StaQ epsilon=0.05 |" in text


def test_reports_name_the_commit_of_an_exported_tree():
    assert compare.archived_commit("$Format:%h$") is None  # a checkout: ask git
    assert compare.archived_commit("abc1234") == "abc1234"
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    # git archive replaces the placeholder (export-subst in .gitattributes).
    exported = subprocess.run(
        ["git", "archive", "HEAD", "rllib_staq/_commit.py"], cwd=REPO, capture_output=True
    )
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    with tarfile.open(fileobj=io.BytesIO(exported.stdout)) as archive:
        text = archive.extractfile("rllib_staq/_commit.py").read().decode()
    assert f'ARCHIVE_COMMIT = "{head}"' in text


def test_random_score_of_cartpole():
    # The uniform random policy on CartPole lasts about 22 steps on average.
    assert 15.0 < compare.random_score("CartPole-v1", episodes=50) < 30.0


# ----------------------------------------------------------------------------- real runs


def tiny_comparison_argv(tmp_path):
    module = tmp_path / "tiny_configs.py"
    module.write_text(TINY_CONFIGS)
    return [
        "--env",
        "CartPole-v1",
        "--algos",
        "StaQ",
        "DQN",
        "--seeds",
        "2",
        "--stop-timesteps",
        "400",
        "--eval-every",
        "200",
        "--config-module",
        str(module),
        "--out",
        str(tmp_path / "out"),
    ]


def test_tiny_comparison_through_tune(tmp_path, ray_session, capsys):
    """StaQ and DQN on CartPole, 2 seeds, 400 env steps, through the real Tuner path."""
    argv, out = tiny_comparison_argv(tmp_path), tmp_path / "out"
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    assert "[StaQ CartPole-v1 seed 1]" in printed and "trials:" in printed

    csv = pd.read_csv(out / "curves.csv")
    assert list(csv.columns) == compare.CSV_COLUMNS
    assert len(csv) == 2 * 2 * 2  # algorithms x seeds x evaluations
    assert set(csv["env_steps"]) == {200, 400} and set(csv["trial_status"]) == {"TERMINATED"}
    assert csv["greedy_return"].notna().all() and (csv["wall_time_s"] > 0).all()
    # StaQ: 100 env steps per iteration, evaluation every 2nd; Tune's raw history still
    # carries RLlib's repeated evaluation results at iterations 3 (and 1 has none).
    staq = csv[csv["algorithm"] == "StaQ"]
    assert set(staq["iteration"]) == {2, 4}
    trial_results = next((out / "tune" / "StaQ__CartPole-v1").glob("*/result.json"))
    history = [json.loads(line) for line in trial_results.read_text().splitlines()]
    assert [result["training_iteration"] for result in history] == [1, 2, 3, 4]
    greedy = [
        result.get("evaluation", {}).get("env_runners", {}).get("episode_return_mean")
        for result in history
    ]
    assert greedy[0] is None and greedy[2] == greedy[1]  # iteration 3 repeats iteration 2
    assert [result[compare.EVALUATED] for result in history] == [0, 1, 0, 1]
    text = (out / "results.md").read_text()
    assert "### CartPole-v1" in text and "## Failed trials\n\nNone." in text
    assert (out / "curves_CartPole-v1_env_steps.png").exists()
    assert (out / "curves_CartPole-v1_wall_time.png").exists()


def test_progress_line_shows_a_dash_until_an_episode_ends(capsys):
    """An iteration in which no training episode ended prints "-", not nan."""

    class FakeTrial:
        trial_id, status, config = "t0", "RUNNING", {"seed": 3}

    reporter = compare.ProgressReporter("StaQ", "LunarLander-v3", stop_timesteps=1000)
    no_episode_yet = {"env_runners": {"num_env_steps_sampled_lifetime": 100}}
    with_episode = {
        "env_runners": {"num_env_steps_sampled_lifetime": 200, "episode_return_mean": -12.5}
    }
    for result in (no_episode_yet, with_episode):
        reporter.on_trial_result(0, [FakeTrial()], FakeTrial(), result)
    first, second = capsys.readouterr().out.splitlines()
    assert "| train        - |" in first and "nan" not in first
    assert "| train   -12.50 |" in second


def test_interrupt_stops_the_run_and_marks_its_trials_unfinished(
    tmp_path, ray_session, capsys, monkeypatch
):
    """Tune's stop signal (Ctrl-C; SIGUSR1 here, which Tune handles the same way and pytest
    does not) after StaQ's first evaluation: DQN never starts and StaQ's rows say UNFINISHED."""
    report_result = compare.ProgressReporter.on_trial_result

    def interrupt_after_the_first_evaluation(self, iteration, trials, trial, result, **info):
        report_result(self, iteration, trials, trial, result, **info)
        if result.get(compare.EVALUATED):
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(
        compare.ProgressReporter, "on_trial_result", interrupt_after_the_first_evaluation
    )
    argv = tiny_comparison_argv(tmp_path)
    argv[argv.index("--seeds") + 1] = "1"
    argv[argv.index("--stop-timesteps") + 1] = "600"
    out = tmp_path / "out"
    assert compare.main(argv) == compare.INTERRUPTED_EXIT_CODE
    printed = capsys.readouterr().out
    assert "Interrupted during StaQ on CartPole-v1" in printed and "[DQN" not in printed
    csv = pd.read_csv(out / "curves.csv")
    assert set(csv["algorithm"]) == {"StaQ"} and set(csv["trial_status"]) == {"UNFINISHED"}
    assert csv["env_steps"].max() < 600
    text = (out / "results.md").read_text()
    assert "- StaQ CartPole-v1 seed 0: last evaluation at 200 env steps" in text
    # One evaluation has no first differences: the oscillation measures are not defined.
    assert "| StaQ | - (one evaluation) |" in text
    assert "## Failed trials\n\nNone." in text


@pytest.mark.slow
def test_rerun_restores_the_finished_experiments(tmp_path, ray_session, capsys):
    """The same command again: Tuner.restore keeps both finished experiments (same CSV)."""
    argv, out = tiny_comparison_argv(tmp_path), tmp_path / "out"
    assert compare.main(argv) == 0
    first = pd.read_csv(out / "curves.csv")
    capsys.readouterr()
    assert compare.main(argv) == 0
    assert capsys.readouterr().out.count("Restoring") == 2
    pd.testing.assert_frame_equal(pd.read_csv(out / "curves.csv"), first)


def test_failed_trial_is_reported_with_its_error(tmp_path, ray_session, capsys):
    module = tmp_path / "broken.py"
    module.write_text(
        TINY_CONFIGS
        + """

from ray import tune


def broken_env(config):
    raise RuntimeError("this env cannot be built")


tune.register_env("BrokenEnv", broken_env)
"""
    )
    out = tmp_path / "out"
    argv = [
        "--env",
        "BrokenEnv",
        "--algos",
        "StaQ",
        "--seeds",
        "1",
        "--stop-timesteps",
        "200",
        "--eval-every",
        "200",
        "--config-module",
        str(module),
        "--out",
        str(out),
    ]
    assert compare.main(argv) == 1
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "this env cannot be built" in printed
    text = (out / "results.md").read_text()
    assert "- StaQ BrokenEnv seed 0: " in text and "this env cannot be built" in text


def test_tune_search_example_on_a_tiny_budget(tmp_path, ray_session):
    from conftest import tiny_config

    spec = importlib.util.spec_from_file_location(
        "tune_search_staq", REPO / "tuned_examples" / "tune_search_staq.py"
    )
    search = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(search)
    tuner = search.build_tuner(
        tiny_config(entropy_coeff=[[0, 2.0], [1000, 0.4]]),
        num_samples=2,
        stop_timesteps=200,
        eval_every=100,
        grace_period=100,
        max_concurrent_trials=2,
        storage_path=str(tmp_path),
    )
    results = tuner.fit()
    assert len(results) == 2 and not results.errors
    for result in results:
        assert result.metrics["env_steps"] in (100, 200)  # ASHA may stop one at its rung
        assert np.isfinite(result.metrics[search.METRIC])
        assert result.config["stack_size"] in (10, 50, 100, 300)
        assert 2.0 <= result.config["kl_coeff"] <= 50.0 and 1e-4 <= result.config["lr"] <= 1e-3
    assert search.entropy_schedule([[0, 2.0], [500, 0.4]], 25_000) == [[0, 2.0], [25_000, 0.4]]
    with pytest.raises(ValueError, match="entropy_coeff must be a schedule"):
        search.entropy_schedule(0.5, 1000)


def test_preset_registers_its_env_in_the_current_ray_session():
    """Tune's env registry lives in the Ray session: the names registered at import are
    gone after ray.shutdown() and a new ray.init(); preset_config registers them again."""
    import ray
    from ray.tune.registry import ENV_CREATOR, _global_registry

    was_running = ray.is_initialized()
    ray.shutdown()
    for _ in range(2):  # the first session flushes the import-time names, the second lacks them
        ray.init(num_cpus=1, include_dashboard=False)
        ray.shutdown()
    ray.init(num_cpus=1, include_dashboard=False)
    try:
        assert not _global_registry.contains(ENV_CREATOR, MINATAR_ENV)
        presets.preset_config("DQN", MINATAR_ENV)
        assert _global_registry.contains(ENV_CREATOR, MINATAR_ENV)
    finally:
        ray.shutdown()
        if was_running:
            ray.init(num_cpus=2, include_dashboard=False)
