"""Compare StaQ with RLlib's DQN, PPO and SAC: one Tune experiment per algorithm and env.

    python -m rllib_staq.compare --env CartPole-v1 --algos StaQ DQN PPO --seeds 2 \\
        --stop-timesteps 20000 --out DIR

Every algorithm runs under the same protocol: ``num_env_runners`` (default 0), a greedy
evaluation of 10 episodes every ``--eval-every`` env steps (each the first episode of its env,
on the same env seeds for every algorithm: ``rllib_staq.evaluation.first_episode_evaluation``;
RLlib's own rule, the first 10 episodes to end, favours short ones where a preset has vector
envs), the same env-step budget, one
``tune.Tuner`` per (algorithm, env) with a grid over the seeds. Baselines use the named
presets of ``rllib_staq.presets`` (RLlib's own tuned settings where it has them for that env,
else its CartPole ones, and the preset's source says so), StaQ its tuned example of that env;
``--config-module FILE.py`` replaces both with the module's
``build_config(algo: str, env: str) -> AlgorithmConfig``.

Outputs in ``--out``:
- ``curves.csv``: one row per greedy evaluation (algorithm, env, seed, iteration, env_steps,
  wall_time_s, greedy_return, training_return, trial_status). RLlib repeats an evaluation's
  results in the following iterations' results; only the iterations that evaluated are kept
  (``rllib_staq.progress.evaluated_this_iteration``, called inside each trial by an
  ``on_train_result`` callback).
- ``results.md``: per env, final score (mean of the last 3 evaluations per seed; mean and
  95% bootstrap CI over seeds), env steps to the threshold, wall time, and the oscillation
  measures of ``rllib_staq.reliability`` (IQM over runs, 95% CI).
- PNGs: ``curves_<env>_env_steps.png`` and ``curves_<env>_wall_time.png`` (IQM over seeds with
  a 95% bootstrap band, thin per-seed lines); on random-normalised final scores,
  ``aggregate_intervals.png`` (IQM, median, mean, optimality gap), ``performance_profile.png``
  and ``probability_of_improvement.png`` (P(reference > X) for each other algorithm).
- ``tune/``: the Tune experiments. Running the same command again restores them with
  ``Tuner.restore``: finished trials are kept, unfinished ones start again from scratch (no
  mid-run checkpoints: RLlib's replay buffers are not in new-stack checkpoints, so a resumed
  off-policy run would not be the run an uninterrupted one would have been).

Ctrl-C stops the running experiment (Tune's handler) and no further one starts; the outputs
are written from what was measured, the runs that stopped before the budget are
``UNFINISHED`` in ``curves.csv`` and listed in ``results.md``, and the exit status is 130.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import pathlib
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from typing import Callable

import numpy as np
from ray.tune import Callback

from rllib_staq import presets, reliability
from rllib_staq._commit import ARCHIVE_COMMIT
from rllib_staq.evaluation import first_episode_evaluation, first_episode_evaluation_errors
from rllib_staq.progress import evaluated_this_iteration, format_return, metric_at

EVAL_RETURN = "evaluation/env_runners/episode_return_mean"
TRAIN_RETURN = "env_runners/episode_return_mean"
ENV_STEPS = "env_runners/num_env_steps_sampled_lifetime"
# Result key set by `mark_evaluated` inside each trial.
EVALUATED = "evaluated_this_iteration"
CSV_COLUMNS = [
    "algorithm",
    "env",
    "seed",
    "iteration",
    "env_steps",
    "wall_time_s",
    "greedy_return",
    "training_return",
    "trial_status",
]
# The shell's code for a run ended by Ctrl-C (128 + SIGINT).
INTERRUPTED_EXIT_CODE = 130
EVALUATION_EPISODES = 10
FINAL_EVALUATIONS = 3
RANDOM_EPISODES = 100
BOOTSTRAP_REPS = 2000


@dataclasses.dataclass
class Experiment:
    """One Tuner: an algorithm (or ablation variant) ``label`` on ``env``."""

    label: str
    env: str
    config: object  # AlgorithmConfig
    source: str


# --------------------------------------------------------------------------- protocol


def mark_evaluated(*, algorithm, result, **kwargs) -> None:
    """``on_train_result`` callback: whether this iteration's evaluation results are new."""
    result[EVALUATED] = int(evaluated_this_iteration(algorithm, result))


def env_steps_per_iteration(config) -> int:
    """Env steps one ``train()`` samples under the common protocol (``num_env_runners=0``)."""
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.algorithms.sac import SACConfig

    from rllib_staq.staq import StaQConfig

    if isinstance(config, StaQConfig):
        return config.env_steps_per_iteration
    if isinstance(config, (DQNConfig, SACConfig)):
        return config.min_sample_timesteps_per_iteration
    if isinstance(config, PPOConfig):
        return config.total_train_batch_size
    raise ValueError(
        f"{type(config).__name__}: the comparison knows the env steps per iteration of "
        "StaQConfig, DQNConfig, SACConfig and PPOConfig only"
    )


def with_common_protocol(experiment: Experiment, eval_every: int, num_env_runners: int):
    """A copy of the config with the shared runners, evaluation schedule and callback."""
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.algorithms.sac import SACConfig

    config = experiment.config.copy(copy_frozen=False)
    config.env_runners(num_env_runners=num_env_runners)
    if isinstance(config, (DQNConfig, SACConfig)):
        # A reporting setting (how many env steps one train() call samples), not a
        # training one: the update-to-data ratio stays the preset's.
        config.reporting(min_sample_timesteps_per_iteration=min(1000, eval_every))
    steps = env_steps_per_iteration(config)
    if steps <= 0 or eval_every % steps:
        raise ValueError(
            f"--eval-every ({eval_every}) must be a multiple of the env steps per iteration of "
            f"{experiment.label} on {experiment.env} ({steps})"
        )
    evaluation_config = dict(config.evaluation_config or {})
    evaluation_config["explore"] = False
    config.evaluation(
        evaluation_interval=eval_every // steps,
        evaluation_duration=EVALUATION_EPISODES,
        evaluation_duration_unit="episodes",
        evaluation_num_env_runners=0,
        evaluation_config=evaluation_config,
        # Each env's first episode, not the first to end: RLlib's rule favours short
        # episodes wherever a preset has vector envs (DQN on MinAtar: 16).
        custom_evaluation_function=first_episode_evaluation,
    )
    errors = first_episode_evaluation_errors(config)
    if errors:
        raise ValueError(f"{experiment.label} on {experiment.env}: {errors[0]}")
    existing = config.callbacks_on_train_result
    if existing is None:
        callbacks = mark_evaluated
    else:
        callbacks = list(existing) if isinstance(existing, (list, tuple)) else [existing]
        callbacks = callbacks + [mark_evaluated]
    config.callbacks(on_train_result=callbacks)
    return config


def load_config_module(path: str) -> Callable[[str, str], object]:
    """``build_config(algo, env)`` of a user's module file."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(f"--config-module {path!r}: no such file")
    spec = importlib.util.spec_from_file_location(f"rllib_staq_user_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "build_config", None)):
        raise ValueError(  # noqa: TRY004
            f"--config-module {path!r} must define build_config(algo: str, env: str) "
            "returning an AlgorithmConfig"
        )
    return module.build_config


def build_experiments(algos, envs, config_module: str | None = None) -> list[Experiment]:
    if config_module:
        build = load_config_module(config_module)
        return [
            Experiment(algo, env, build(algo, env), f"{config_module}:build_config")
            for env in envs
            for algo in algos
        ]
    presets.check_names(algos, envs)
    return [
        Experiment(algo, env, presets.preset_config(algo, env), presets.preset_source(algo, env))
        for env in envs
        for algo in algos
    ]


# --------------------------------------------------------------------------- running


def experiment_name(experiment: Experiment) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{experiment.label}__{experiment.env}")


class ProgressReporter(Callback):
    """A Tune callback printing each trial's progress and every failure with its error."""

    def __init__(self, label: str, env: str, stop_timesteps: int):
        # No print function is kept: Tune pickles its callbacks with the experiment.
        self.label, self.env, self.stop = label, env, stop_timesteps
        self.latest_greedy: dict[str, str] = {}

    def _states(self, trials) -> str:
        counts = collections.Counter(trial.status for trial in trials)
        return ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        steps = int(metric_at(result, "env_runners", "num_env_steps_sampled_lifetime", default=0))
        if result.get(EVALUATED):
            greedy = metric_at(result, "evaluation", "env_runners", "episode_return_mean")
            self.latest_greedy[trial.trial_id] = f"{greedy:8.2f} @{steps}"
        training = metric_at(result, "env_runners", "episode_return_mean")
        print(
            f"[{self.label} {self.env} seed {trial.config.get('seed')}] "
            f"{100 * min(steps / self.stop, 1):5.1f}% steps {steps:7d} "
            # "-" until an episode ends in an iteration, as in the tuned examples' line.
            f"| train {format_return(training):>8} "
            f"| greedy {self.latest_greedy.get(trial.trial_id, '-'):>16} "
            f"| {result.get('time_total_s', 0):7.1f}s | trials: {self._states(trials)}",
            flush=True,
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        print(
            f"[{self.label} {self.env} seed {trial.config.get('seed')}] FAILED: "
            f"{trial_error_text(trial)}",
            flush=True,
        )


def trial_error_text(trial) -> str:
    error_file = getattr(trial, "error_file", None)
    if error_file and os.path.exists(error_file):
        lines = [line for line in pathlib.Path(error_file).read_text().splitlines() if line]
        return " | ".join(lines[-3:])
    return str(getattr(trial, "error_msg", None) or "unknown error")


def run_experiment(
    experiment: Experiment,
    seeds: Sequence[int],
    stop_timesteps: int,
    eval_every: int,
    storage: pathlib.Path,
    num_env_runners: int = 0,
    max_concurrent_trials: int | None = None,
    print_fn=print,
):
    """Fits (or restores and finishes) one Tuner; returns its ``ResultGrid``."""
    from ray import tune

    config = with_common_protocol(experiment, eval_every, num_env_runners)
    param_space = config.debugging(seed=tune.grid_search(list(seeds)))
    # The class, not RLlib's registry name: looking "DQN" up imports every
    # RLlib algorithm (DreamerV3 needs Pillow).
    trainable = config.algo_class
    name = experiment_name(experiment)
    path = storage / name
    reporter = ProgressReporter(experiment.label, experiment.env, stop_timesteps)
    if tune.Tuner.can_restore(str(path)):
        print_fn(f"Restoring {path} (finished trials are kept)", flush=True)
        tuner = tune.Tuner.restore(
            str(path),
            trainable=trainable,
            param_space=param_space,
            resume_unfinished=True,
            restart_errored=True,
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent_trials),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(storage),
                stop={ENV_STEPS: stop_timesteps},
                verbose=0,
                callbacks=[reporter],
            ),
        )
    return tuner.fit()


# trial_status in curves.csv: Tune's TERMINATED and ERROR, and our UNFINISHED.
FINISHED, FAILED, UNFINISHED = "TERMINATED", "ERROR", "UNFINISHED"


def trial_status(result, stop_timesteps: int) -> str:
    """ERROR for a trial that raised; UNFINISHED for one that stopped without an error before
    its env-step budget (Tune's only stop criterion here), which is what an interrupt (Ctrl-C,
    SIGUSR1) leaves; else TERMINATED."""
    if result.error:
        return FAILED
    frame = result.metrics_dataframe
    reported = frame is not None and ENV_STEPS in frame and len(frame) > 0
    return FINISHED if reported and frame[ENV_STEPS].iloc[-1] >= stop_timesteps else UNFINISHED


def tidy_rows(result, label: str, env: str, status: str) -> list[dict]:
    """One row per evaluation of one trial (iterations that did not evaluate dropped), each
    carrying the trial's ``status``."""
    frame = result.metrics_dataframe
    if frame is None or EVALUATED not in frame:
        return []
    frame = frame[frame[EVALUATED] == 1]
    return [
        {
            "algorithm": label,
            "env": env,
            "seed": int(result.config["seed"]),
            "iteration": int(record["training_iteration"]),
            "env_steps": int(record[ENV_STEPS]),
            "wall_time_s": float(record["time_total_s"]),
            "greedy_return": float(record[EVAL_RETURN]),
            "training_return": float(record.get(TRAIN_RETURN, math.nan)),
            "trial_status": status,
        }
        for _, record in frame.iterrows()
    ]


def trial_seed(result):
    """The seed of a trial, also when it failed before reporting its config."""
    if result.config and "seed" in result.config:
        return result.config["seed"]
    match = re.search(r"seed=(\d+)", str(result.path))
    return int(match.group(1)) if match else None


def error_summary(error: BaseException) -> str:
    """The exception's last line (RLlib wraps the cause in a long traceback)."""
    cause = getattr(error, "cause", None) or error
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1].strip() if lines else ''}"


def sorted_curves(frame):
    """The tidy rows in the order ``curves.csv`` keeps them, so that the same results always
    give the same file."""
    order = ["algorithm", "env", "seed", "env_steps"]
    return frame.sort_values(order, kind="stable").reset_index(drop=True)


def run_comparison(
    experiments: Sequence[Experiment],
    seeds: Sequence[int],
    stop_timesteps: int,
    eval_every: int,
    out: pathlib.Path,
    num_env_runners: int = 0,
    max_concurrent_trials: int | None = None,
    print_fn=print,
):
    """Runs every experiment; returns (tidy DataFrame, failures [(label, env, seed, error)]).

    An interrupted experiment (Ctrl-C: Tune stops its trials, and ``fit`` returns) ends the
    run: the experiments after it do not start, and its trials are marked UNFINISHED.
    """
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    # Checks every config against the protocol before anything runs.
    for experiment in experiments:
        with_common_protocol(experiment, eval_every, num_env_runners)
    rows, failures = [], []
    for experiment in experiments:
        print_fn(
            f"== {experiment.label} on {experiment.env} ({experiment.source}); "
            f"seeds {list(seeds)}, {stop_timesteps} env steps",
            flush=True,
        )
        grid = run_experiment(
            experiment,
            seeds,
            stop_timesteps,
            eval_every,
            out.resolve() / "tune",
            num_env_runners,
            max_concurrent_trials,
            print_fn,
        )
        seeds_with_rows, experiment_rows, stopped_early = set(), [], False
        for result in grid:
            status = trial_status(result, stop_timesteps)
            trial_rows = tidy_rows(result, experiment.label, experiment.env, status)
            # Reported, then stopped early without an error: an interrupt. (A trial that never
            # reported is listed as a failure below: Tune may have lost it.)
            stopped_early |= status == UNFINISHED and result.metrics_dataframe is not None
            experiment_rows.extend(trial_rows)
            seeds_with_rows |= {row["seed"] for row in trial_rows}
            if result.error:
                seed, error = trial_seed(result), error_summary(result.error)
                failures.append((experiment.label, experiment.env, seed, error))
                print_fn(
                    f"FAILED trial {experiment.label} {experiment.env} seed {seed}: {error} "
                    f"(full traceback under {result.path})",
                    flush=True,
                )
        # Tune's result order is not the seed order (and differs after a restore).
        rows.extend(sorted(experiment_rows, key=lambda row: (row["seed"], row["iteration"])))
        # A trial that died before its first result, or that Tune lost on a restore, has
        # no rows and may carry no error: it is a failure too.
        reported = {
            seed
            for label, env, seed, _ in failures
            if (label, env) == (experiment.label, experiment.env)
        }
        for seed in sorted(set(seeds) - seeds_with_rows - reported):
            failures.append(
                (
                    experiment.label,
                    experiment.env,
                    seed,
                    "no evaluation results (the trial did not report any)",
                )
            )
            print_fn(
                f"FAILED trial {experiment.label} {experiment.env} seed {seed}: "
                "no evaluation results",
                flush=True,
            )
        if stopped_early:
            print_fn(
                f"Interrupted during {experiment.label} on {experiment.env}: the experiments "
                "after it were not started. Run the same command again to finish (finished "
                "trials are kept, unfinished ones start again).",
                flush=True,
            )
            break
    # Tune returns trials in no fixed order (a restore reorders them): sort, so the
    # same results always give the same file.
    frame = sorted_curves(pd.DataFrame(rows, columns=CSV_COLUMNS))
    frame.to_csv(out / "curves.csv", index=False)
    return frame, failures


# --------------------------------------------------------------------------- analysis


def make_env(env: str):
    """The env ``env`` names, with an empty env_config: the package's registered MinAtar and
    robot names (``rllib_staq.envs``), a ``ray.tune.register_env`` name while Ray runs (Tune's
    registry is Ray's), else a gymnasium id."""
    import gymnasium as gym
    from ray.rllib.env.env_context import EnvContext
    from ray.tune.registry import ENV_CREATOR, _global_registry

    from rllib_staq import envs

    minatar = dict(zip(envs.MINATAR_ENV_NAMES, envs.MINATAR_GAMES))
    robots = dict(zip(envs.MUJOCO_ENV_NAMES, envs.MUJOCO_ROBOTS))
    if env in minatar:
        return envs.make_minatar(minatar[env], {})
    if env in robots:
        return envs.make_discrete_robot(robots[env], {})
    if _global_registry.contains(ENV_CREATOR, env):
        return _global_registry.get(ENV_CREATOR, env)(EnvContext({}, worker_index=0))
    return gym.make(env)


def random_score(env: str, episodes: int = RANDOM_EPISODES, seed: int = 0) -> float:
    """Mean return of the uniform random policy (the 0 of the normalised scores)."""
    environment = make_env(env)
    environment.action_space.seed(seed)
    total = 0.0
    for episode in range(episodes):
        environment.reset(seed=seed + episode)
        done = False
        while not done:
            _, reward, terminated, truncated, _ = environment.step(
                environment.action_space.sample()
            )
            total += float(reward)
            done = terminated or truncated
    environment.close()
    return total / episodes


def completed_runs(frame):
    """Rows of the runs that did not fail (failed runs are listed in the report instead;
    unfinished ones are kept, and listed too)."""
    return frame[frame["trial_status"] != FAILED]


def unfinished_runs(frame) -> list[str]:
    """One line per run that stopped before its budget, with the env steps it reached."""
    unfinished = frame[frame["trial_status"] == UNFINISHED]
    last_steps = unfinished.groupby(["algorithm", "env", "seed"], sort=False)["env_steps"].max()
    return [
        f"- {algo} {env} seed {seed}: last evaluation at {steps:,} env steps"
        for (algo, env, seed), steps in last_steps.items()
    ]


def score_grid(frame, algo: str, env: str):
    """[seeds, evaluations] greedy returns, evaluation index on the common schedule.

    Returns (seeds, env_steps [T] (mean over seeds), wall_time [seeds, T], returns [seeds, T]),
    truncated to the evaluations every seed has.
    """
    runs = frame[(frame["algorithm"] == algo) & (frame["env"] == env)]
    seeds = sorted(runs["seed"].unique())
    curves = [runs[runs["seed"] == seed].sort_values("env_steps") for seed in seeds]
    length = min(len(curve) for curve in curves)
    returns = np.array([curve["greedy_return"].to_numpy()[:length] for curve in curves])
    wall = np.array([curve["wall_time_s"].to_numpy()[:length] for curve in curves])
    steps = np.mean([curve["env_steps"].to_numpy()[:length] for curve in curves], axis=0)
    return seeds, steps, wall, returns


def iqm_band(returns: np.ndarray, seed: int = 0):
    """IQM over seeds at each evaluation and its 95% stratified-bootstrap band."""
    from rliable import library as rly
    from scipy import stats

    def per_evaluation_iqm(scores):  # scores [runs, T]
        # rliable's aggregate_iqm (trim_mean of 25%) taken along the runs axis.
        return stats.trim_mean(scores, proportiontocut=0.25, axis=0)

    with reliability.seeded_numpy_global_rng(seed):
        points, intervals = rly.get_interval_estimates(
            {"x": returns},
            per_evaluation_iqm,
            reps=BOOTSTRAP_REPS,
            random_state=np.random.RandomState(seed),
        )
    return points["x"], intervals["x"][0], intervals["x"][1]


def final_scores(returns: np.ndarray) -> np.ndarray:
    """Mean of each seed's last 3 evaluations [seeds]."""
    return returns[:, -FINAL_EVALUATIONS:].mean(axis=1)


def steps_to_threshold(runs, threshold: float) -> list[int | None]:
    reached = []
    for _, curve in sorted(runs.groupby("seed")):
        hits = curve.sort_values("env_steps")
        hits = hits[hits["greedy_return"] >= threshold]
        reached.append(int(hits["env_steps"].iloc[0]) if len(hits) else None)
    return reached


def plot_env_curves(frame, env: str, algos: Sequence[str], out: pathlib.Path) -> list[str]:
    """Greedy return vs env steps and vs wall time: IQM + 95% band, thin per-seed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    safe_env = re.sub(r"[^A-Za-z0-9_.-]+", "_", env)
    for axis_name, xlabel in (("env_steps", "env steps"), ("wall_time", "wall time (s)")):
        figure, axes = plt.subplots(figsize=(6.4, 4.2))
        for index, algo in enumerate(algos):
            color = f"C{index}"
            _, steps, wall, returns = score_grid(frame, algo, env)
            point, low, high = iqm_band(returns)
            xs = steps if axis_name == "env_steps" else np.median(wall, axis=0)
            for run_index, run in enumerate(returns):
                run_x = steps if axis_name == "env_steps" else wall[run_index]
                axes.plot(run_x, run, color=color, linewidth=0.7, alpha=0.35)
            axes.plot(
                xs, point, color=color, linewidth=2, label=f"{algo} (IQM, {len(returns)} seeds)"
            )
            axes.fill_between(xs, low, high, color=color, alpha=0.2)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(f"greedy return ({EVALUATION_EPISODES} episodes)")
        axes.set_title(f"{env}: IQM over seeds, 95% bootstrap band, thin lines = seeds")
        axes.title.set_fontsize(9)
        axes.legend(fontsize=8)
        figure.tight_layout()
        path = out / f"curves_{safe_env}_{axis_name}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path.name)
    return written


def normalised_final_scores(frame, envs, algos, random_scores: dict[str, float]):
    """{algo: [runs, envs]} random-normalised final scores, or (None, reason).

    Normalisation (openrlbenchmark's "maxmin"): (score - random) / (best - random), with
    best the highest mean final score of any algorithm on that env.
    """
    by_algo = {algo: [] for algo in algos}
    for env in envs:
        finals = {algo: final_scores(score_grid(frame, algo, env)[3]) for algo in algos}
        best = max(values.mean() for values in finals.values())
        if best <= random_scores[env]:
            return None, f"no algorithm's mean final score beat the random policy on {env}"
        for algo in algos:
            by_algo[algo].append((finals[algo] - random_scores[env]) / (best - random_scores[env]))
    counts = {len(column) for columns in by_algo.values() for column in columns}
    if len(counts) != 1:
        return None, "the algorithms have different numbers of completed runs"
    return {algo: np.stack(columns, axis=1) for algo, columns in by_algo.items()}, None


def plot_aggregates(scores: dict[str, np.ndarray], reference: str, out: pathlib.Path):
    """rliable's interval estimates, performance profile and probability of improvement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import library as rly
    from rliable import metrics, plot_utils

    state = np.random.RandomState(0)

    def aggregates(x):
        return np.array(
            [
                metrics.aggregate_iqm(x),
                metrics.aggregate_median(x),
                metrics.aggregate_mean(x),
                metrics.aggregate_optimality_gap(x),
            ]
        )

    with reliability.seeded_numpy_global_rng(0):
        points, intervals = rly.get_interval_estimates(
            scores, aggregates, reps=BOOTSTRAP_REPS, random_state=state
        )
    names = ["IQM", "Median", "Mean", "Optimality Gap"]
    figure, _ = plot_utils.plot_interval_estimates(
        points,
        intervals,
        metric_names=names,
        algorithms=list(scores),
        xlabel="random-normalised final score",
    )
    figure.savefig(out / "aggregate_intervals.png", dpi=110, bbox_inches="tight")
    plt.close(figure)

    every_score = np.concatenate([values.ravel() for values in scores.values()])
    tau_list = np.linspace(min(0.0, every_score.min()), max(1.0, every_score.max()), 81)
    with reliability.seeded_numpy_global_rng(0):
        profiles, profile_cis = rly.create_performance_profile(
            scores, tau_list, reps=BOOTSTRAP_REPS
        )
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    plot_utils.plot_performance_profiles(
        profiles,
        tau_list,
        performance_profile_cis=profile_cis,
        ax=axes,
        xlabel=r"random-normalised final score ($\tau$)",
    )
    axes.legend(list(scores), fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "performance_profile.png", dpi=110)
    plt.close(figure)

    pairs = {
        f"{reference},{other}": (scores[reference], scores[other])
        for other in scores
        if other != reference and reference in scores
    }
    improvement = {}
    if pairs:
        with reliability.seeded_numpy_global_rng(0):
            probabilities, probability_cis = rly.get_interval_estimates(
                pairs, metrics.probability_of_improvement, reps=BOOTSTRAP_REPS, random_state=state
            )
        axes = plot_utils.plot_probability_of_improvement(probabilities, probability_cis)
        axes.figure.savefig(out / "probability_of_improvement.png", dpi=110, bbox_inches="tight")
        plt.close(axes.figure)
        improvement = {
            pair: (float(probabilities[pair]), *map(float, probability_cis[pair].ravel()))
            for pair in pairs
        }
    return points, intervals, names, improvement


def format_interval(point: float, low: float, high: float, digits: int = 1) -> str:
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def compare_to_reference(reference: str, reference_ci, other_ci, fewest_seeds: int) -> str:
    """Where ``reference`` stands against another algorithm, from the two 95% CIs.

    ``fewest_seeds``: the smaller of the two algorithms' numbers of runs. A
    bootstrap interval over one run is that run's score, so with one seed the
    row gives the direction only, not "CIs disjoint".
    """
    if fewest_seeds < 2:
        gap = reference_ci[0] - other_ci[0]
        direction = "higher" if gap > 0 else "lower" if gap < 0 else "level"
        return f"{reference} {direction} (1 seed: no CI)"
    if reference_ci[1] > other_ci[2]:
        return f"{reference} higher (CIs disjoint)"
    if reference_ci[2] < other_ci[1]:
        return f"{reference} lower (CIs disjoint)"
    return "inside the CIs"


def environment_tables(frame, env, algos, reference, threshold, random_value) -> list[str]:

    finals, measures, lines = {}, {}, []
    for algo in algos:
        _, _, _, returns = score_grid(frame, algo, env)
        finals[algo] = final_scores(returns)
        if returns.shape[1] < 2:
            continue  # the oscillation measures need first differences (an interrupted run)
        per_run = [reliability.curve_measures(run) for run in returns]
        measures[algo] = {
            name: np.array([run[name] for run in per_run]) for name in reliability.MEASURES
        }
    final_ci = reliability.interval_over_runs(finals, statistic="mean", reps=BOOTSTRAP_REPS)
    lines += [
        f"### {env}",
        "",
        (
            f"Random policy: {random_value:.1f} (mean of {RANDOM_EPISODES} episodes). "
            f"Threshold: {threshold:g}."
        ),
        "",
        (
            f"| algorithm | seeds | final score (mean of last {FINAL_EVALUATIONS} evals, mean "
            f"[95% CI]) | vs {reference} | env steps to >= {threshold:g} (per seed) | "
            "wall time per run (s) | env steps/s |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for algo in algos:
        runs = frame[(frame["algorithm"] == algo) & (frame["env"] == env)]
        last = runs.sort_values("env_steps").groupby("seed").tail(1)
        reached = steps_to_threshold(runs, threshold)
        versus = (
            "-"
            if algo == reference or reference not in finals
            else compare_to_reference(
                reference,
                final_ci[reference],
                final_ci[algo],
                fewest_seeds=min(len(finals[reference]), len(finals[algo])),
            )
        )
        lines.append(
            f"| {algo} | {len(finals[algo])} | {format_interval(*final_ci[algo])} | "
            f"{versus} | "
            + ", ".join("not reached" if r is None else f"{r:,}" for r in reached)
            + f" | {last['wall_time_s'].mean():.0f} | "
            f"{(last['env_steps'] / last['wall_time_s']).mean():.0f} |"
        )
    lines += [
        "",
        (
            "Oscillation (per run, IQM over runs [95% CI]; `rllib_staq/reliability.py`): centred "
            "late std = std of the last half of the evaluations around the run's own mean; "
            "DT = IQR of first differences; SRT = CVaR 5% of first differences (more negative = "
            "larger drops); LRT = max drawdown."
        ),
        "",
        (
            "| algorithm | centred late std | DT (IQR of diffs) | SRT (CVaR 5% of diffs) | "
            "LRT (max drawdown) |"
        ),
        "|---|---|---|---|---|",
    ]
    intervals = {
        name: reliability.interval_over_runs(
            {a: measures[a][name] for a in measures}, reps=BOOTSTRAP_REPS
        )
        for name in reliability.MEASURES
    }
    for algo in algos:
        cells = (
            [format_interval(*intervals[name][algo]) for name in reliability.MEASURES]
            if algo in measures
            else ["- (one evaluation)"] * len(reliability.MEASURES)
        )
        lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    return lines + [""]


def archived_commit(text: str) -> str | None:
    """The commit ``git archive`` wrote into ``_commit.py``; None in a checkout."""
    return None if text.startswith("$Format") else text


def source_commit() -> str:
    """The package's git commit, marked when its checkout has uncommitted changes; in a tree
    exported with ``git archive`` (no ``.git``), the commit it was exported from."""

    def git(*arguments) -> str:
        return subprocess.run(
            ["git", *arguments],
            capture_output=True,
            text=True,
            check=False,
            cwd=pathlib.Path(__file__).resolve().parent,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        commit = ""
    if not commit:
        exported = archived_commit(ARCHIVE_COMMIT)
        return f"{exported} (exported tree)" if exported else "unknown"
    return f"{commit} with uncommitted changes" if changed else commit


def run_header(command: Sequence[str]) -> list[str]:
    import ray
    import torch

    now = datetime.datetime.now(datetime.timezone.utc)
    return [
        "Command: `" + " ".join(command) + "`",
        "",
        f"Date {now:%Y-%m-%d %H:%M} UTC, commit {source_commit()}, {platform.machine()} "
        f"{os.cpu_count()} CPUs ({platform.platform()}), ray {ray.__version__}, "
        f"torch {torch.__version__}, Python {platform.python_version()}.",
        "",
    ]


def write_report(
    frame,
    failures,
    out: pathlib.Path,
    reference: str,
    thresholds: dict[str, float],
    command: Sequence[str],
    title: str = "Comparison",
    print_fn=print,
) -> pathlib.Path:
    """PNGs and ``results.md`` from the tidy frame; returns the Markdown path."""
    done = completed_runs(frame)
    envs = list(dict.fromkeys(done["env"]))
    algos = list(dict.fromkeys(done["algorithm"]))
    lines = [f"# {title}", ""] + run_header(command)
    lines += [
        (
            f"Protocol: greedy evaluation of {EVALUATION_EPISODES} episodes at the same env-step "
            "interval for every algorithm; wall time = Tune's `time_total_s` (training and "
            "evaluation)."
        ),
        "",
    ]
    random_scores = {env: random_score(env) for env in envs}
    pictures = []
    for env in envs:
        env_algos = [a for a in algos if len(done[(done["algorithm"] == a) & (done["env"] == env)])]
        pictures += plot_env_curves(done, env, env_algos, out)
        lines += environment_tables(
            done, env, env_algos, reference, thresholds.get(env, math.inf), random_scores[env]
        )
    if envs:
        scores, reason = normalised_final_scores(done, envs, algos, random_scores)
    else:
        scores, reason = None, "no trial completed"
    lines += ["## Across envs (random-normalised final scores)", ""]
    if scores is None:
        lines += [f"Not drawn: {reason}.", ""]
        print_fn(f"Aggregate plots not drawn: {reason}")
    else:
        points, intervals, names, improvement = plot_aggregates(scores, reference, out)
        pictures += ["aggregate_intervals.png", "performance_profile.png"]
        lines += [
            (
                "Normalised as (score - random) / (best - random), best = the highest mean final "
                "score on that env (openrlbenchmark's maxmin). rliable, stratified bootstrap "
                f"({BOOTSTRAP_REPS} reps), 95% CIs."
            ),
            "",
            "| algorithm | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for algo in algos:
            lines.append(
                f"| {algo} | "
                + " | ".join(
                    format_interval(
                        points[algo][i], intervals[algo][0, i], intervals[algo][1, i], 2
                    )
                    for i in range(len(names))
                )
                + " |"
            )
        if improvement:
            pictures.append("probability_of_improvement.png")
            lines += ["", "| pair | P(X > Y) [95% CI] |", "|---|---|"]
            lines += [
                f"| {pair} | {format_interval(*value, 2)} |" for pair, value in improvement.items()
            ]
        lines.append("")
    lines += ["## Failed trials", ""]
    lines += [f"- {label} {env} seed {seed}: {error}" for label, env, seed, error in failures] or [
        "None."
    ]
    lines += ["", "## Unfinished runs (interrupted before the budget)", ""]
    unfinished = unfinished_runs(frame)
    if unfinished:
        lines += unfinished + [
            "",
            "The tables and curves above are cut to the evaluations that every seed of an "
            "algorithm reached. Running the same command again starts these runs again.",
        ]
    else:
        lines.append("None.")
    lines += ["", "## Pictures", ""] + [f"![{name}]({name})" for name in pictures] + [""]
    path = out / "results.md"
    path.write_text("\n".join(lines))
    return path


# --------------------------------------------------------------------------- command line


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """Arguments shared with ``rllib_staq.ablate``."""
    parser.add_argument(
        "--env",
        action="append",
        default=None,
        help=f"env id, repeatable (presets: {', '.join(presets.ENVS)})",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="number of seeds (--first-seed, --first-seed + 1, ...)",
    )
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="the first seed (default 0); more seeds for an earlier run go to a new --out, "
        "merged with --report-only --include",
    )
    parser.add_argument("--stop-timesteps", type=int, default=100_000)
    parser.add_argument(
        "--eval-every",
        type=int,
        default=4000,
        help="env steps between greedy evaluations (all algorithms)",
    )
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs given to Ray")
    parser.add_argument("--max-concurrent-trials", type=int, default=None)
    parser.add_argument("--num-env-runners", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder (CSV, PNGs, table, tune/)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rebuild results.md and the PNGs from OUT/curves.csv",
    )
    parser.add_argument(
        "--include",
        action="append",
        default=None,
        metavar="CSV",
        help="--report-only: add another run's curves.csv (more seeds of the same protocol, "
        "say); OUT/curves.csv is rewritten with the union; repeatable",
    )


def run_seeds(args: argparse.Namespace) -> list[int]:
    """The seeds of a run: ``--seeds`` consecutive ones from ``--first-seed``."""
    return list(range(args.first_seed, args.first_seed + args.seeds))


def check_run_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("seeds", "stop_timesteps", "eval_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.first_seed < 0:
        parser.error(f"--first-seed must be >= 0, got {args.first_seed}")
    if args.include and not args.report_only:
        parser.error("--include merges curves.csv files and applies only with --report-only")
    if args.max_concurrent_trials is not None and args.max_concurrent_trials < 1:
        parser.error("--max-concurrent-trials must be >= 1")
    if not args.env:
        args.env = ["CartPole-v1"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rllib_staq.compare", description=__doc__.split("\n")[0]
    )
    add_run_args(parser)
    parser.add_argument(
        "--algos",
        nargs="+",
        default=["StaQ", "DQN", "PPO"],
        help=f"algorithms (presets: {', '.join(presets.ALGOS)})",
    )
    parser.add_argument(
        "--config-module",
        default=None,
        help="a .py file with build_config(algo, env) -> AlgorithmConfig; replaces the presets",
    )
    parser.add_argument(
        "--reference",
        default=None,
        help="the algorithm the others are compared with (default: the first of --algos; "
        "with --report-only, StaQ if the CSV has it, else its first)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_run_args(parser, args)
    if args.report_only:  # The algorithms and the reference come from the CSV.
        return args
    if not args.config_module:
        try:
            presets.check_names(args.algos, args.env)
            presets.check_extras(args.env)
        except (ValueError, ImportError) as error:
            parser.error(str(error))
    args.reference = args.reference or args.algos[0]
    if args.reference not in args.algos:
        parser.error(f"--reference {args.reference!r} must be one of --algos {args.algos}")
    return args


def execute(experiments, args, reference: str, title: str, command, print_fn=print) -> int:
    """Runs the experiments (Ray started here unless it runs already) and writes the report."""
    import ray

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = not ray.is_initialized()
    if started:
        ray.init(
            address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False
        )
    try:
        out = pathlib.Path(args.out)
        check_or_record_protocol(out, run_protocol(args))
        frame, failures = run_comparison(
            experiments,
            run_seeds(args),
            args.stop_timesteps,
            args.eval_every,
            out,
            args.num_env_runners,
            args.max_concurrent_trials,
            print_fn,
        )
    finally:
        if started:
            ray.shutdown()
    thresholds = dict(presets.THRESHOLDS)
    report = write_report(frame, failures, out, reference, thresholds, command, title, print_fn)
    print_fn(f"Wrote {out / 'curves.csv'}, {report} and the PNGs in {out}")
    if failures:
        print_fn(f"{len(failures)} trial(s) failed (listed in {report})")
        return 1
    if unfinished_runs(frame):
        print_fn(f"Interrupted: unfinished runs are listed in {report}")
        return INTERRUPTED_EXIT_CODE
    return 0


def failures_in_csv(frame) -> list[tuple]:
    """The failed trials that ``curves.csv`` records (a trial with rows and status ERROR);
    a trial that died before its first result left no row, and only the run's own report
    lists it."""
    failed = frame[frame["trial_status"] == FAILED]
    keys = failed[["algorithm", "env", "seed"]].drop_duplicates().itertuples(index=False)
    return [(algo, env, seed, "status ERROR in curves.csv") for algo, env, seed in keys]


PROTOCOL_FILE = "protocol.json"


def run_protocol(args: argparse.Namespace) -> dict:
    """The settings that every trial in one ``--out`` must share."""
    return {
        "seeds": run_seeds(args),
        "stop_timesteps": args.stop_timesteps,
        "eval_every": args.eval_every,
        "num_env_runners": args.num_env_runners,
    }


def check_or_record_protocol(out: pathlib.Path, protocol: dict) -> None:
    """Writes OUT/protocol.json on the first run; refuses a rerun with other settings.

    A rerun restores OUT's Tune experiments, which keep the seeds and budget they were
    started with: other settings would be silently ignored for the restored trials.
    """
    path = out / PROTOCOL_FILE
    if path.is_file():
        recorded = json.loads(path.read_text())
        changed = {k: (recorded.get(k), v) for k, v in protocol.items() if recorded.get(k) != v}
        if changed:
            details = "; ".join(
                f"{k}: ran with {old}, asked {new}" for k, (old, new) in changed.items()
            )
            raise ValueError(
                f"{out} holds a run with other settings ({details}). Use a new --out (more "
                "seeds: --first-seed), then merge with --report-only --include."
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(protocol, indent=1) + "\n")


def on_the_same_schedule(steps: list, known: list) -> bool:
    """Whether a run's evaluations (env steps, sorted) fall on the marks of ``known``.

    With vector envs an iteration samples a few env steps more or less than its nominal
    size, so the i-th evaluations of two seeds land some env steps apart (RLlib's DQN on
    MinAtar Breakout, seeds 0 and 1: 20268 and 20205; at most 163 apart over StaQ's and
    DQN's 9 evaluations there, every 20k).
    Another ``--eval-every``, off by more than a tenth, moves the first evaluation by more
    than a tenth of an interval. Only the shorter run's length is compared: an unfinished
    run is on the schedule too.
    """
    tolerance = known[0] / 10  # a tenth of the first interval
    return all(abs(mine - theirs) < tolerance for mine, theirs in zip(steps, known))


def merge_curves(frame, included: dict[str, object]):
    """``frame`` plus the rows of each included CSV (name -> DataFrame), sorted as
    ``curves.csv`` keeps them. A run (algorithm, env, seed) in two files is refused, and
    so is a run whose evaluations are not on the schedule of the same algorithm and env."""
    import pandas as pd

    def schedules(rows):  # (algorithm, env) -> the longest env-step list of any seed
        longest = {}
        for (algo, env, _), run in rows.groupby(["algorithm", "env", "seed"]):
            steps = sorted(run["env_steps"])
            if len(steps) > len(longest.get((algo, env), [])):
                longest[(algo, env)] = steps
        return longest

    merged = frame
    for name, extra in included.items():
        if list(extra.columns) != CSV_COLUMNS:
            raise ValueError(
                f"--include {name}: columns {list(extra.columns)}, expected {CSV_COLUMNS}"
            )
        runs = ["algorithm", "env", "seed"]
        both = merged[runs].drop_duplicates().merge(extra[runs].drop_duplicates())
        if len(both):
            raise ValueError(
                f"--include {name}: runs already in the report: "
                f"{[tuple(row) for row in both.itertuples(index=False)]}"
            )
        known = schedules(merged)
        for key, steps in schedules(extra).items():
            if key in known and not on_the_same_schedule(steps, known[key]):
                raise ValueError(
                    f"--include {name}: {key[0]} on {key[1]} evaluated at env steps "
                    f"{steps[:4]}..., the report's runs at {known[key][:4]}... "
                    "(another --eval-every)"
                )
        merged = pd.concat([merged, extra], ignore_index=True)
    return sorted_curves(merged)


def report_from_csv(args, command, title: str, reference: str | None = None) -> int:
    """``--report-only``: the report of an earlier run, recomputed from its tidy CSV (with the
    rows of ``--include`` CSVs merged in and written back to ``OUT/curves.csv``)."""
    import pandas as pd

    out = pathlib.Path(args.out)
    csv_path = out / "curves.csv"
    paths = [csv_path] + [pathlib.Path(p) for p in args.include or []]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"--report-only reads {path}, which does not exist.")
    frame = pd.read_csv(csv_path)
    if args.include:
        frame = merge_curves(frame, {str(p): pd.read_csv(p) for p in paths[1:]})
        frame.to_csv(csv_path, index=False)
        print(f"Merged {len(paths) - 1} CSV(s) into {csv_path}")
    algos = list(dict.fromkeys(frame["algorithm"]))
    # The CSV is sorted by name, so its first algorithm says nothing: StaQ where it ran.
    reference = reference or args.reference or ("StaQ" if "StaQ" in algos else algos[0])
    if reference not in algos:
        raise ValueError(f"--reference {reference!r} must be one of the CSV's algorithms {algos}")
    report = write_report(
        frame,
        failures_in_csv(frame),
        out,
        reference,
        dict(presets.THRESHOLDS),
        command,
        f"{title} (report rebuilt from curves.csv)",
    )
    print(f"Wrote {report} and the PNGs in {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = ["python -m rllib_staq.compare"] + list(sys.argv[1:] if argv is None else argv)
    if args.report_only:
        return report_from_csv(args, command, "StaQ and RLlib baselines")
    experiments = build_experiments(args.algos, args.env, args.config_module)
    return execute(experiments, args, args.reference, "StaQ and RLlib baselines", command)


if __name__ == "__main__":
    sys.exit(main())
