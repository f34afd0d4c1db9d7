"""Entry point shared by the tuned examples (RLlib example-script conventions).

Every flag of RLlib's ``add_rllib_example_script_args`` either works in both
paths (Tune, and ``--no-tune``'s plain loop) or is refused with a message that
says why, before anything runs. The plain loop writes a run folder
(``rllib_staq/run_folder.py``): a CSV per iteration, a PNG curve and checkpoints.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import signal
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from ray.rllib.examples.utils import add_rllib_example_script_args
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    EPISODE_RETURN_MEAN,
    EVALUATION_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
)
from ray.tune.result import TRAINING_ITERATION

from rllib_staq.evaluation import greedy_episode_returns, greedy_multi_agent_episode_returns
from rllib_staq.progress import STOP_INTERRUPTED, Budget, TrainingOutcome, train_with_progress
from rllib_staq.run_folder import RunFolder
from rllib_staq.staq import StaQ, StaQConfig

# Exit status of a run stopped by Ctrl-C (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 128 + signal.SIGINT
# The final evaluation's episodes reset with seeds from here on. RLlib's
# evaluation EnvRunners reseed with `seed + worker_index + 1e6` at every
# evaluation, so these episodes start from states the run has not evaluated.
FINAL_EVAL_FIRST_SEED = 2_000_000
GREEDY_RETURN = f"{EVALUATION_RESULTS}/{ENV_RUNNER_RESULTS}/{EPISODE_RETURN_MEAN}"

RLLIB_DEFAULTS = {
    action.dest: action.default for action in add_rllib_example_script_args()._actions
}
# The flags the tuned examples add to RLlib's, and the one RLlib default they replace, with
# their defaults. RLlib's example scripts stop at 200 iterations, which cuts a tuned example
# short of its env-step budget wherever that budget is over 200 iterations (300k env steps
# at 1000 per iteration stopped at 200k). The examples' budget is in env steps, so the
# iteration limit defaults to one that never binds first.
OWN_DEFAULTS = {"seed": 0, "run_dir": None, "final_eval_episodes": 20, "stop_iters": 1_000_000}

# Flags no StaQ tuned example can honour, with the reason (both paths).
REFUSED_ALWAYS = {
    "algo": "the tuned examples train StaQ; compare other algorithms with `python -m "
    "rllib_staq.compare`",
    "framework": "StaQ is implemented in torch only",
    "env": "each tuned example trains the environment it was tuned for",
    "num_agents": "the tuned examples are single-agent",
    "old_api_stack": "StaQ runs on RLlib's new API stack only",
    "num_gpus": "an old-API-stack flag; use --num-gpus-per-learner",
    "num_aggregator_actors_per_learner": "StaQ's learner reads episodes directly, "
    "without aggregator actors",
}
# Flags of the Tune path that the plain loop cannot honour.
REFUSED_WITHOUT_TUNE = {
    "num_samples": "one run without Tune; run several with Tune (drop --no-tune)",
    "max_concurrent_trials": "a Tune setting (drop --no-tune)",
    "tune_max_report_freq": "a Tune setting (drop --no-tune)",
    "wandb_key": "logging to WandB goes through Tune (drop --no-tune)",
    "wandb_project": "logging to WandB goes through Tune (drop --no-tune)",
    "wandb_run_name": "logging to WandB goes through Tune (drop --no-tune)",
    "as_release_test": "a Tune setting (use --as-test)",
}
REFUSED_WITH_TUNE = {
    "run_dir": "Tune writes its trial folders under ~/ray_results (use --no-tune for a run folder)",
    "final_eval_episodes": "the final evaluation is part of --no-tune",
}
EVALUATION_FLAGS = (
    "evaluation_num_env_runners",
    "evaluation_interval",
    "evaluation_duration",
    "evaluation_duration_unit",
    "evaluation_parallel_to_training",
)


def example_parser(default_reward: float, default_timesteps: int) -> argparse.ArgumentParser:
    """RLlib's example-script flags plus ``--seed``, ``--run-dir`` and ``--final-eval-episodes``."""
    parser = add_rllib_example_script_args(
        default_reward=default_reward,
        default_timesteps=default_timesteps,
        default_iters=OWN_DEFAULTS["stop_iters"],
    )
    parser.add_argument(
        "--seed", type=int, default=OWN_DEFAULTS["seed"], help="Seed of the run (config.seed)."
    )
    parser.add_argument(
        "--run-dir",
        default=OWN_DEFAULTS["run_dir"],
        help="--no-tune only: folder for the CSV, the PNG curve and the checkpoints "
        "(default: staq_runs/<env>_seed<seed>_<date-time>).",
    )
    parser.add_argument(
        "--final-eval-episodes",
        type=int,
        default=OWN_DEFAULTS["final_eval_episodes"],
        help="--no-tune only: greedy episodes of the final evaluation, on env seeds that "
        "the in-training evaluations do not use.",
    )
    return parser


def given(args: argparse.Namespace, name: str) -> bool:
    """Whether a flag was set to something other than its default."""
    return getattr(args, name) != {**RLLIB_DEFAULTS, **OWN_DEFAULTS}[name]


def refused_flags(args: argparse.Namespace) -> List[str]:
    """One message per flag this run cannot honour."""
    refused = dict(REFUSED_ALWAYS)
    refused.update(REFUSED_WITHOUT_TUNE if args.no_tune else REFUSED_WITH_TUNE)
    messages = []
    for name, reason in refused.items():
        if hasattr(args, name) and given(args, name):
            messages.append(f"--{name.replace('_', '-')}: {reason}")
    if args.no_tune and args.checkpoint_freq < 0:
        messages.append("--checkpoint-freq: must be >= 0")
    if args.final_eval_episodes < 0:
        messages.append("--final-eval-episodes: must be >= 0")
    return messages


def apply_example_flags(config: StaQConfig, args: argparse.Namespace) -> StaQConfig:
    """Applies the flags that set the algorithm's config (the same in both paths)."""
    config.debugging(seed=args.seed)
    if args.num_env_runners is not None:
        config.env_runners(num_env_runners=args.num_env_runners)
    if args.num_envs_per_env_runner is not None:
        config.env_runners(num_envs_per_env_runner=args.num_envs_per_env_runner)
    learners = {
        name: getattr(args, name)
        for name in ("num_learners", "num_cpus_per_learner", "num_gpus_per_learner")
        if getattr(args, name) is not None
    }
    if learners:
        config.learners(**learners)
    # Each evaluation flag that is given overrides the example's own schedule.
    evaluation = {name: getattr(args, name) for name in EVALUATION_FLAGS if given(args, name)}
    if evaluation:
        config.evaluation(**evaluation)
    if args.log_level is not None:
        config.debugging(log_level=args.log_level)
    if args.output is not None:
        config.offline_data(output=args.output)
    return config


def budget_from_args(args: argparse.Namespace) -> Budget:
    return Budget(
        stop_timesteps=args.stop_timesteps, stop_iters=args.stop_iters, stop_reward=args.stop_reward
    )


def run_example(args: argparse.Namespace, build_config: Callable[..., StaQConfig]):
    """``--no-tune``: plain loop with progress, a run folder and a final greedy
    evaluation; otherwise RLlib's ``run_rllib_example_script_experiment`` (Tune).

    Both stop at ``--stop-timesteps`` env steps or ``--stop-iters`` iterations,
    or earlier once a greedy evaluation reaches ``--stop-reward``.
    """
    messages = refused_flags(args)
    if messages:
        raise SystemExit("Refused flags:\n  " + "\n  ".join(messages))
    config = apply_example_flags(build_config(), args)
    config.validate()  # Bad settings fail here, before Ray starts.
    if config.num_env_runners or config.evaluation_num_env_runners:
        # Ray gives its actors OMP_NUM_THREADS = their num_cpus; say so for the
        # driver too, so the main process does not oversubscribe the 2 cores.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not args.no_tune:
        return run_with_tune(config, args)
    return run_without_tune(config, args)


def run_with_tune(config: StaQConfig, args: argparse.Namespace):
    from ray.rllib.examples.utils import run_rllib_example_script_experiment

    stop: Dict[str, Any] = {
        f"{ENV_RUNNER_RESULTS}/{NUM_ENV_STEPS_SAMPLED_LIFETIME}": args.stop_timesteps,
        TRAINING_ITERATION: args.stop_iters,
    }
    success_metric = None
    if config.evaluation_interval:
        # Stop and judge on the greedy evaluation, as the plain loop does.
        stop[GREEDY_RETURN] = args.stop_reward
        success_metric = {GREEDY_RETURN: args.stop_reward}
    else:
        stop[f"{ENV_RUNNER_RESULTS}/{EPISODE_RETURN_MEAN}"] = args.stop_reward
    return run_rllib_example_script_experiment(
        config, args, stop=stop, success_metric=success_metric, trainable=StaQ, keep_config=True
    )


class GracefulInterrupt:
    """First Ctrl-C: finish the current iteration, then save and stop. Second: abort."""

    def __init__(self, print_fn=print):
        self.requested = False
        self._print = print_fn
        self._previous = None

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)
        return False

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._print(
            "Interrupted: finishing the current iteration, then saving a checkpoint "
            "(Ctrl-C again to abort without saving)."
        )


def default_run_dir(config: StaQConfig, seed: int) -> str:
    env_name = str(config.env).replace("/", "-")
    return os.path.join("staq_runs", f"{env_name}_seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}")


def run_without_tune(config: StaQConfig, args: argparse.Namespace, print_fn=print) -> int:
    """The plain loop; returns the process exit status (0, or EXIT_INTERRUPTED)."""
    import ray

    budget = budget_from_args(args)
    run_folder = RunFolder(
        args.run_dir or default_run_dir(config, args.seed),
        policy_ids=config.policies if config.is_multi_agent else (),
    )
    iteration_limit = f" or {budget.stop_iters} iterations" if given(args, "stop_iters") else ""
    print_fn(
        f"StaQ on {config.env}, seed {args.seed}: up to {budget.stop_timesteps} env "
        f"steps{iteration_limit}, stopping early once a greedy evaluation reaches "
        f"{budget.stop_reward}. Run folder: {run_folder.path}"
    )
    ray.init(num_cpus=args.num_cpus or None, include_dashboard=False)
    algo = None
    try:
        algo = config.build_algo()
        with GracefulInterrupt(print_fn) as interrupt:
            outcome = train_with_progress(
                algo,
                budget,
                print_fn=print_fn,
                on_iteration=lambda record, result: _after_iteration(
                    algo, run_folder, record, args.checkpoint_freq, print_fn
                ),
                should_stop=lambda: interrupt.requested,
                verbose=args.verbose > 0,
            )
        if interrupt.requested:
            outcome.stop_reason = STOP_INTERRUPTED
        algo.save_to_path(run_folder.final_checkpoint_path)
        final_returns = None
        if not interrupt.requested and args.final_eval_episodes:
            final_returns = final_greedy_evaluation(algo, args.final_eval_episodes, args.seed)
        curve = run_folder.plot(f"StaQ on {config.env}, seed {args.seed}")
        print_summary(outcome, final_returns, run_folder, curve, print_fn)
        if interrupt.requested:
            return EXIT_INTERRUPTED
        if args.as_test:
            check_as_test(outcome, final_returns, args.stop_reward)
        return 0
    finally:
        if algo is not None:
            _remove_empty_default_logdir(algo)
            algo.stop()
        ray.shutdown()


def _after_iteration(algo, run_folder: RunFolder, record, checkpoint_freq: int, print_fn) -> None:
    run_folder.record(record)
    if checkpoint_freq and record.iteration % checkpoint_freq == 0:
        path = algo.save_to_path(run_folder.periodic_checkpoint_path(record.iteration))
        print_fn(f"checkpoint: {path}")


def final_greedy_evaluation(algo: StaQ, num_episodes: int, seed: int) -> List[float]:
    """Greedy returns on fresh env seeds, with the local EnvRunner's synced module."""
    first_seed = FINAL_EVAL_FIRST_SEED + 1000 * seed
    if not algo.config.is_multi_agent:
        make_env = functools.partial(algo.env_creator, dict(algo.config.env_config))
        return greedy_episode_returns(algo.get_module(), make_env, num_episodes, first_seed)
    env = algo.env_creator(dict(algo.config.env_config))
    try:
        modules = {module_id: algo.get_module(module_id) for module_id in algo.config.policies}
        # RLlib's mapping functions take (agent_id, episode); the examples' ignore the episode.
        mapping_fn = algo.config.policy_mapping_fn
        return greedy_multi_agent_episode_returns(
            modules, lambda agent_id: mapping_fn(agent_id, None), env, num_episodes, first_seed
        )
    finally:
        env.close()


def print_summary(
    outcome: TrainingOutcome,
    final_returns: Optional[List[float]],
    run_folder: RunFolder,
    curve_path: str,
    print_fn=print,
) -> None:
    result = outcome.result
    env_steps = result.get(ENV_RUNNER_RESULTS, {}).get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0)
    print_fn(
        f"Stopped: {outcome.stop_reason}, after {result.get(TRAINING_ITERATION, 0)} iterations, "
        f"{int(env_steps)} env steps ({100 * outcome.fraction_done:.1f}% of the budget), "
        f"{result.get('time_total_s', 0.0):.0f} s."
    )
    if not math.isnan(outcome.latest_greedy_return):
        print_fn(
            f"Latest in-training greedy evaluation: {outcome.latest_greedy_return:.2f} "
            f"at {outcome.latest_greedy_env_steps} env steps."
        )
    if final_returns:
        print_fn(
            f"Final greedy evaluation: mean return {statistics.fmean(final_returns):.2f} "
            f"(min {min(final_returns):.2f}, max {max(final_returns):.2f}) over "
            f"{len(final_returns)} episodes on env seeds the in-training evaluations "
            "never use."
        )
    print_fn(f"Run folder: {run_folder.path}")
    print_fn(f"  per-iteration CSV: {run_folder.csv_path}")
    print_fn(f"  learning curve:    {curve_path}")
    print_fn(f"  final checkpoint:  {run_folder.final_checkpoint_path}")


def check_as_test(
    outcome: TrainingOutcome, final_returns: Optional[List[float]], stop_reward: float
) -> None:
    judged = statistics.fmean(final_returns) if final_returns else outcome.latest_greedy_return
    if not judged >= stop_reward:
        raise SystemExit(f"--as-test failed: greedy return {judged:.1f} < {stop_reward}")


def _remove_empty_default_logdir(algo) -> None:
    """RLlib's Trainable makes an (unused) folder under ~/ray_results for every
    Algorithm built outside Tune; the run folder holds this run's files instead."""
    logdir = getattr(algo, "logdir", None)
    if logdir and os.path.isdir(logdir) and not os.listdir(logdir):
        os.rmdir(logdir)


def main(parser: argparse.ArgumentParser, build_config: Callable[..., StaQConfig]) -> None:
    """What a tuned example's ``__main__`` calls: parse, run, exit with the run's status."""
    status = run_example(parser.parse_args(), build_config)
    sys.exit(status if isinstance(status, int) else 0)
