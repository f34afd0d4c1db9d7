"""A Ray Tune search over StaQ's own knobs, with ASHA and Optuna (Tune's integration).

    pip install -e ".[compare]"     # optuna is in the compare extra
    python tuned_examples/tune_search_staq.py --env CartPole-v1 --num-samples 16 \\
        --stop-timesteps 50000 --max-concurrent-trials 2

Searched: ``stack_size`` (M), ``kl_coeff`` (1/eta), the env step at which the entropy
schedule reaches its final tau, and ``lr``. Everything else is StaQ's tuned example of
that env. Each trial trains with a greedy evaluation (10 episodes) every
``--eval-every`` env steps and reports ``greedy_return`` and ``env_steps`` at each
evaluation; ASHA stops the worst trials at env-step rungs (``--grace-period``, then
doubling), and Optuna's TPE sampler proposes the next configurations from the finished
ones. The trainable is a function so that the schedule end can be one searched number
(RLlib's schedules are lists, which Tune's searchers do not sample into).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ray import tune
from ray.tune.schedulers import ASHAScheduler

from rllib_staq.progress import evaluated_this_iteration, metric_at

METRIC = "greedy_return"
SEARCH_SPACE = {
    "stack_size": tune.choice([10, 50, 100, 300]),
    "kl_coeff": tune.loguniform(2.0, 50.0),
    "entropy_end_step": tune.choice([25_000, 50_000, 100_000]),
    "lr": tune.loguniform(1e-4, 1e-3),
}


def entropy_schedule(base_schedule, end_step: int):
    """The base schedule's first and last tau, reached at ``end_step`` env steps."""
    if not isinstance(base_schedule, (list, tuple)):
        raise ValueError(  # noqa: TRY004
            f"entropy_coeff must be a schedule [[0, start], [end, final]] to search its end, "
            f"got {base_schedule!r}"
        )
    return [[0, base_schedule[0][1]], [int(end_step), base_schedule[-1][1]]]


def configure(base_config, params: dict, eval_every: int):
    """``base_config`` with the searched values and the greedy-evaluation schedule."""
    steps = base_config.env_steps_per_iteration
    if eval_every % steps:
        raise ValueError(
            f"--eval-every ({eval_every}) must be a multiple of env_steps_per_iteration ({steps})"
        )
    return (
        base_config.copy(copy_frozen=False)
        .training(
            stack_size=int(params["stack_size"]),
            kl_coeff=float(params["kl_coeff"]),
            entropy_coeff=entropy_schedule(base_config.entropy_coeff, params["entropy_end_step"]),
            lr=float(params["lr"]),
        )
        .evaluation(
            evaluation_interval=eval_every // steps,
            evaluation_duration=10,
            evaluation_duration_unit="episodes",
            evaluation_config={"explore": False},
        )
    )


def train_staq(params: dict, base_config, stop_timesteps: int, eval_every: int) -> None:
    """Tune function trainable: reports at every greedy evaluation."""
    algo = configure(base_config, params, eval_every).build_algo()
    try:
        env_steps = 0
        while env_steps < stop_timesteps:
            result = algo.train()
            env_steps = int(metric_at(result, "env_runners", "num_env_steps_sampled_lifetime"))
            if evaluated_this_iteration(algo, result):
                tune.report(
                    {
                        METRIC: metric_at(
                            result, "evaluation", "env_runners", "episode_return_mean"
                        ),
                        "env_steps": env_steps,
                        "training_return": metric_at(result, "env_runners", "episode_return_mean"),
                    }
                )
    finally:
        algo.stop()


def build_tuner(
    base_config,
    num_samples: int,
    stop_timesteps: int,
    eval_every: int,
    grace_period: int,
    max_concurrent_trials: int | None = None,
    storage_path: str | None = None,
    seed: int = 0,
    search_space: dict | None = None,
) -> tune.Tuner:
    from ray.tune.search.optuna import OptunaSearch

    trainable = tune.with_parameters(
        train_staq, base_config=base_config, stop_timesteps=stop_timesteps, eval_every=eval_every
    )
    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=search_space or SEARCH_SPACE,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent_trials,
            search_alg=OptunaSearch(seed=seed),
            scheduler=ASHAScheduler(
                time_attr="env_steps",
                max_t=stop_timesteps,
                grace_period=grace_period,
                reduction_factor=2,
            ),
        ),
        run_config=tune.RunConfig(name="staq_search", storage_path=storage_path, verbose=1),
    )


def main(argv: Sequence[str] | None = None) -> None:
    import ray

    from rllib_staq import presets

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="CartPole-v1", choices=presets.ENVS)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--stop-timesteps", type=int, default=50_000)
    parser.add_argument("--eval-every", type=int, default=5000)
    parser.add_argument("--grace-period", type=int, default=10_000, help="env steps")
    parser.add_argument("--max-concurrent-trials", type=int, default=None)
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--storage-path", default=None)
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    try:
        tuner = build_tuner(
            presets.preset_config("StaQ", args.env).env_runners(num_env_runners=0),
            args.num_samples,
            args.stop_timesteps,
            args.eval_every,
            args.grace_period,
            args.max_concurrent_trials,
            os.path.abspath(args.storage_path) if args.storage_path else None,
        )
        best = tuner.fit().get_best_result()
        print(
            f"Best greedy return {best.metrics[METRIC]:.1f} at {best.metrics['env_steps']} "
            f"env steps with {best.config}"
        )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
