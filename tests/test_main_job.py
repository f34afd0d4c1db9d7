"""The main job (--no-tune): run folder, checkpoints, final evaluation, resume, Ctrl-C.

These tests start and stop Ray themselves (the main job calls ray.init), so
they live apart from the tests that share a module-wide Ray session.
"""

import csv
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from rllib_staq import cli

from conftest import parse_example_flags as parse
from conftest import tiny_config, tiny_evaluated_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_tune_run_writes_csv_curve_checkpoints_and_evaluates_on_new_seeds(tmp_path, monkeypatch):
    from ray.rllib.algorithms.algorithm import Algorithm

    run_dir = tmp_path / "run"
    args = parse(
        "--no-tune",
        "--stop-iters",
        "4",
        "--checkpoint-freq",
        "2",
        "--run-dir",
        str(run_dir),
        "--final-eval-episodes",
        "3",
        "--num-cpus",
        "2",
    )
    lines = []
    # Where RLlib's Trainable makes its folder for an Algorithm built outside Tune
    # (~/ray_results, shared by every process): a private one for this test.
    import ray.tune.trainable.trainable as trainable_module

    default_logdirs = tmp_path / "ray_results"
    monkeypatch.setattr(trainable_module, "DEFAULT_STORAGE_PATH", str(default_logdirs))
    status = cli.run_without_tune(
        cli.apply_example_flags(tiny_evaluated_config(), args), args, print_fn=lines.append
    )
    assert status == 0
    # RLlib's Trainable made an empty folder there; the run removed it.
    assert default_logdirs.is_dir() and list(default_logdirs.iterdir()) == []
    with open(run_dir / "progress.csv") as csv_file:
        rows = list(csv.DictReader(csv_file))
    assert [int(row["iteration"]) for row in rows] == [1, 2, 3, 4]
    # Greedy returns only where an evaluation ran (RLlib repeats them otherwise).
    assert [row["greedy_return"] != "" for row in rows] == [False, True, False, True]
    assert all(float(row["env_steps_per_s"]) > 0 for row in rows)
    with open(run_dir / "learning_curve.png", "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "checkpoint_iter_000002").is_dir()
    assert (run_dir / "checkpoint_iter_000004").is_dir()
    output = "\n".join(lines)
    assert "Stopped: iteration budget reached, after 4 iterations" in output
    assert "over 3 episodes on env seeds the in-training evaluations never use" in output
    for name in ("progress.csv", "learning_curve.png", "checkpoint"):
        assert str(run_dir / name) in output

    # The final checkpoint resumes: the stack holds the 4 pushes and grows on.
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        algo = Algorithm.from_checkpoint(str(run_dir / "checkpoint"))
        assert algo.get_module().stack_fill == 3  # stack_size of the tiny config
        assert algo.train()["training_iteration"] == 5
        algo.stop()
    finally:
        ray.shutdown()


CTRL_C_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config
    from rllib_staq.cli import example_parser, main

    def build_config(num_env_runners=0, seed=0):
        return tiny_config(grad_steps_per_iteration=200)

    main(example_parser(default_reward=1e9, default_timesteps=10**9), build_config)
    """
)


def test_ctrl_c_stops_cleanly_with_a_summary_a_checkpoint_and_exit_status_130(tmp_path):
    script = tmp_path / "tiny_example.py"
    script.write_text(CTRL_C_SCRIPT.format(tests=os.path.join(REPO, "tests")))
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, str(script), "--no-tune", "--run-dir", str(run_dir), "--num-cpus", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    deadline = time.time() + 120
    for line in process.stdout:  # Interrupt once the first iteration is done.
        lines.append(line)
        if re.match(r"\s*\d+\.\d%\s*\|\s*1\s*\|", line) or time.time() > deadline:
            break
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=120)
    output = "".join(lines) + rest
    assert process.returncode == cli.EXIT_INTERRUPTED, output
    assert "Interrupted: finishing the current iteration" in output
    assert "Stopped: interrupted" in output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert (run_dir / "checkpoint").is_dir() and (run_dir / "progress.csv").is_file()


def policy_per_agent(agent_id, episode, **kwargs):
    return f"p{agent_id}"


def test_no_tune_multi_agent_run_reports_each_policy(tmp_path, monkeypatch):
    import ray.tune.trainable.trainable as trainable_module
    from ray.rllib.examples.envs.classes.multi_agent import MultiAgentCartPole

    monkeypatch.setattr(trainable_module, "DEFAULT_STORAGE_PATH", str(tmp_path / "ray_results"))
    run_dir = tmp_path / "run"
    args = parse(
        "--no-tune", "--stop-iters", "2", "--run-dir", str(run_dir),
        "--final-eval-episodes", "2", "--num-cpus", "2",
    )  # fmt: skip
    config = (
        tiny_config()
        .environment(MultiAgentCartPole, env_config={"num_agents": 2})
        .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=policy_per_agent)
    ).evaluation(evaluation_interval=2, evaluation_duration=1, evaluation_config={"explore": False})
    lines = []
    assert cli.run_without_tune(config, args, print_fn=lines.append) == 0
    with open(run_dir / "progress.csv") as csv_file:
        rows = list(csv.DictReader(csv_file))
    assert [row["greedy_return/p0"] != "" for row in rows] == [False, True]
    evaluated = rows[1]
    # RLlib's multi-agent return is the sum over agents, one agent per policy here.
    total = float(evaluated["greedy_return/p0"]) + float(evaluated["greedy_return/p1"])
    assert total == pytest.approx(float(evaluated["greedy_return"]))
    output = "\n".join(lines)
    assert "greedy return per policy: p0 " in output and ", p1 " in output
    assert "over 2 episodes on env seeds the in-training evaluations never use" in output
    with open(run_dir / "learning_curve.png", "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"


def test_curve_draws_a_training_return_that_only_some_iterations_have(tmp_path, monkeypatch):
    """Freeway's 2500-step episodes end in one iteration of 40: the line joins those points."""
    import math

    import matplotlib.figure

    from rllib_staq.progress import IterationRecord
    from rllib_staq.run_folder import RunFolder

    folder = RunFolder(str(tmp_path))
    for iteration, training_return in enumerate([math.nan, 3.0, math.nan, math.nan, 5.0], 1):
        folder.record(
            IterationRecord(
                iteration=iteration, env_steps=1000 * iteration, time_s=1.0 * iteration,
                env_steps_per_s=1000.0, training_return=training_return,
                greedy_return=2.0 if iteration == 4 else math.nan, td_loss=1.0, mean_q=1.0,
                policy_entropy=0.5, kl_pi_k_pi_k_plus_1=0.01, stack_fill=iteration,
            )
        )  # fmt: skip
    figures = []
    monkeypatch.setattr(
        matplotlib.figure.Figure, "savefig", lambda figure, *a, **k: figures.append(figure)
    )
    folder.plot("sparse returns")
    lines = {line.get_label(): line for line in figures[0].axes[0].get_lines()}
    training = lines["training return (epsilon-softmax)"]
    assert list(training.get_xdata()) == [2000, 5000]
    assert list(training.get_ydata()) == [3.0, 5.0]
    assert list(lines["greedy return (evaluation)"].get_xdata()) == [4000]
