"""The tuned examples' flags, the --no-tune run folder, Ctrl-C, and the progress display."""

import math
import re

import pytest

from rllib_staq import cli
from rllib_staq.progress import (
    STOP_ITERS,
    STOP_REWARD,
    STOP_TIMESTEPS,
    Budget,
    header,
    train_with_progress,
)

from conftest import cartpole_example, one_by_one_greedy_returns, tiny_config, tiny_evaluated_config
from conftest import parse_example_flags as parse


# --------------------------------------------------------------------------- #
# Flags: refused with a reason, or applied to the config.
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--algo", "DQN"], "--algo"),
        (["--env", "Acrobot-v1"], "--env"),
        (["--framework", "tf2"], "--framework"),
        (["--num-agents", "2"], "--num-agents"),
        (["--old-api-stack"], "--old-api-stack"),
        (["--num-aggregator-actors-per-learner", "1"], "--num-aggregator-actors-per-learner"),
        (["--no-tune", "--num-samples", "3"], "--num-samples"),
        (["--no-tune", "--max-concurrent-trials", "2"], "--max-concurrent-trials"),
        (["--no-tune", "--wandb-key", "k"], "--wandb-key"),
        (["--run-dir", "/tmp/x"], "--run-dir"),  # Tune path
        (["--no-tune", "--final-eval-episodes", "-1"], "--final-eval-episodes"),
    ],
)
def test_flags_staq_cannot_honour_are_refused_before_anything_runs(argv, flag):
    messages = cli.refused_flags(parse(*argv))
    assert any(message.startswith(flag) for message in messages), messages
    with pytest.raises(SystemExit, match=re.escape(flag)):
        cli.run_example(parse(*argv), cartpole_example().build_config)


def test_the_default_flags_are_all_accepted_in_both_paths():
    assert cli.refused_flags(parse()) == []
    assert cli.refused_flags(parse("--no-tune")) == []


def test_flags_reach_the_config_in_both_paths(tmp_path):
    argv = [
        "--seed",
        "7",
        "--num-env-runners",
        "2",
        "--num-envs-per-env-runner",
        "4",
        "--num-learners",
        "1",
        "--num-cpus-per-learner",
        "1",
        "--evaluation-duration",
        "3",  # without --evaluation-interval: still applied
        "--evaluation-num-env-runners",
        "1",
        "--log-level",
        "ERROR",
        "--output",
        str(tmp_path / "episodes"),
    ]
    for path_flags in ([], ["--no-tune"]):
        config = cli.apply_example_flags(
            cartpole_example().build_config(), parse(*argv, *path_flags)
        )
        assert config.seed == 7
        assert config.num_env_runners == 2 and config.num_envs_per_env_runner == 4
        assert config.num_learners == 1 and config.num_cpus_per_learner == 1
        assert config.evaluation_duration == 3 and config.evaluation_num_env_runners == 1
        assert config.evaluation_interval == 5  # the example's own schedule stays
        assert config.log_level == "ERROR"
        assert config.output == str(tmp_path / "episodes")


def test_tune_path_stops_and_judges_on_the_greedy_evaluation(monkeypatch):
    captured = {}

    def fake_experiment(config, args, stop, success_metric, trainable, keep_config):
        captured.update(stop=stop, success_metric=success_metric, keep_config=keep_config)

    import ray.rllib.examples.utils as rllib_example_utils

    monkeypatch.setattr(rllib_example_utils, "run_rllib_example_script_experiment", fake_experiment)
    args = parse("--stop-reward", "450", "--stop-iters", "9", "--stop-timesteps", "1234")
    cli.run_example(args, cartpole_example().build_config)
    assert captured["stop"] == {
        "env_runners/num_env_steps_sampled_lifetime": 1234,
        "training_iteration": 9,
        "evaluation/env_runners/episode_return_mean": 450.0,
    }
    assert captured["success_metric"] == {"evaluation/env_runners/episode_return_mean": 450.0}
    assert captured["keep_config"]  # flags were applied once, by apply_example_flags


def test_env_step_budget_binds_before_an_iteration_limit_unless_one_is_given():
    # RLlib's example scripts stop at 200 iterations by default: 300k env steps at 1000 per
    # iteration would stop at 200k. The tuned examples' default never binds first.
    budget = cli.budget_from_args(parse("--stop-timesteps", "300000"))
    assert budget.exhausted(env_steps=200_000, iteration=200) is None
    assert budget.exhausted(env_steps=300_000, iteration=300) == STOP_TIMESTEPS
    assert not cli.given(parse(), "stop_iters")
    given_limit = parse("--stop-iters", "200")
    assert cli.given(given_limit, "stop_iters")
    assert cli.budget_from_args(given_limit).exhausted(env_steps=1000, iteration=200) == STOP_ITERS


# --------------------------------------------------------------------------- #
# Budget and progress display.
# --------------------------------------------------------------------------- #
def test_budget_share_is_the_larger_of_env_steps_and_iterations():
    budget = Budget(stop_timesteps=1000, stop_iters=10)
    assert budget.fraction_done(env_steps=200, iteration=5) == 0.5
    assert budget.fraction_done(env_steps=900, iteration=1) == 0.9
    assert budget.exhausted(1000, 1) == STOP_TIMESTEPS
    assert budget.exhausted(10, 10) == STOP_ITERS
    assert budget.exhausted(999, 9) is None


def test_progress_display_explains_itself_and_stops_at_reward(ray_session):
    algo = tiny_evaluated_config().build_algo()
    lines = []
    try:
        outcome = train_with_progress(algo, Budget(stop_timesteps=1000), print_fn=lines.append)
        assert outcome.result["training_iteration"] == 10 and outcome.stop_reason == STOP_TIMESTEPS
        legend, head, rows = lines[0], lines[1], lines[2:]
        assert "epsilon-softmax" in legend and "reward_scale" in legend and "\n" in legend
        assert head == header()
        for column in ("done", "env steps", "steps/s", "ETA", "train return", "greedy return"):
            assert column in head
        assert len(rows) == 10
        # No evaluation before iteration 2; later lines show the latest one and its step.
        assert " - |" in rows[0] and "@200 " in rows[1] and "@200 " in rows[2]
        assert "@400 " in rows[3] and rows[-1].lstrip().startswith("100.0%")

        # Any greedy return reaches -1: stops at the next evaluation, at an honest share.
        lines.clear()
        outcome = train_with_progress(
            algo, Budget(stop_timesteps=10_000, stop_reward=-1.0), print_fn=lines.append
        )
        assert outcome.result["training_iteration"] == 12 and len(lines) == 4
        assert outcome.stop_reason == STOP_REWARD
        assert outcome.fraction_done == pytest.approx(1200 / 10_000)
    finally:
        algo.stop()


# --------------------------------------------------------------------------- #
# Env steps per iteration with vector envs and several runners.
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("num_envs, num_runners", [(1, 0), (2, 0), (4, 0), (1, 2), (2, 2)])
def test_env_steps_per_iteration_within_rllibs_vector_env_bound(ray_session, num_envs, num_runners):
    steps = 100
    config = tiny_config(env_steps_per_iteration=steps).env_runners(
        num_env_runners=num_runners, num_envs_per_env_runner=num_envs
    )
    algo = config.build_algo()
    try:
        previous = 0
        for _ in range(3):
            total = algo.train()["env_runners"]["num_env_steps_sampled_lifetime"]
            sampled, previous = total - previous, total
            # RLlib steps a vector env in lockstep and stops at the first step
            # that reaches its share, so each runner may overshoot by envs - 1.
            assert steps <= sampled <= steps + max(num_runners, 1) * (num_envs - 1)
            if num_envs == 1:
                assert sampled == steps
    finally:
        algo.stop()


def test_final_evaluation_uses_the_current_stack_with_remote_env_runners(ray_session):
    config = tiny_config().env_runners(num_env_runners=1)
    algo = config.build_algo()
    try:
        algo.train()
        algo.train()
        assert algo.get_module().stack_fill == 2
        returns = cli.final_greedy_evaluation(algo, num_episodes=2, seed=0)
        assert len(returns) == 2 and all(math.isfinite(r) and r >= 1 for r in returns)
    finally:
        algo.stop()


def test_batched_final_evaluation_returns_what_episodes_one_by_one_return(ray_session):
    import functools

    import gymnasium

    from rllib_staq import evaluation

    algo = tiny_config().build_algo()
    try:
        for _ in range(3):
            algo.train()
        make_env = functools.partial(gymnasium.make, "CartPole-v1")
        # 5 episodes in chunks of 2, 2 and 1, so that the seeds of later chunks are checked too.
        batched = evaluation.greedy_episode_returns(
            algo.get_module(), make_env, 5, 100, max_in_parallel=2
        )
        expected = one_by_one_greedy_returns(algo.get_module(), make_env, range(100, 105))
        assert batched == expected
        assert len(set(expected)) > 1  # episodes of different lengths: a mixed-up seed shows
    finally:
        algo.stop()


def test_progress_line_averages_the_policies_of_a_multi_agent_run():
    from rllib_staq.progress import policies_mean

    policy = {
        "td_loss": 1.0,
        "mean_q": 2.0,
        "policy_entropy": 0.5,
        "kl_pi_k_pi_k_plus_1": 0.1,
        "stack_fill": 4,
    }
    result = {
        "learners": {
            "p0": policy,
            "p1": {**policy, "td_loss": 3.0, "stack_fill": 2},
            "__all_modules__": {"num_env_steps_trained": 10},
        }
    }
    mean = policies_mean(result)
    assert mean["td_loss"] == 2.0 and mean["policy_entropy"] == 0.5 and mean["stack_fill"] == 2
    assert policies_mean({"learners": {"default_policy": policy}})["td_loss"] == 1.0


def test_progress_line_shows_a_dash_until_the_first_episode_ends():
    from rllib_staq.progress import IterationRecord, progress_line

    def line(training_return):
        record = IterationRecord(
            iteration=3, env_steps=3000, time_s=9.0, env_steps_per_s=333.0,
            training_return=training_return, greedy_return=math.nan, td_loss=1.5, mean_q=2.0,
            policy_entropy=0.9, kl_pi_k_pi_k_plus_1=0.01, stack_fill=3,
        )  # fmt: skip
        return [cell.strip() for cell in progress_line(record, 0.5, 9.0, "-").split("|")]

    train_return = [name.strip() for name in header().split("|")].index("train return")
    assert line(math.nan)[train_return] == "-"
    assert "nan" not in " ".join(line(math.nan))
    assert line(12.345)[train_return] == "12.35"
