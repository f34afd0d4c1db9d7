"""Train with a compact progress display and a final greedy evaluation."""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    EPISODE_RETURN_MEAN,
    EVALUATION_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
)


def metric_at(result: Dict[str, Any], *keys, default=float("nan")):
    for key in keys:
        if not isinstance(result, dict) or key not in result:
            return default
        result = result[key]
    return result


def train_with_progress(
    algo: Algorithm,
    stop_timesteps: int,
    stop_reward: Optional[float] = None,
    print_fn=print,
) -> Dict[str, Any]:
    """Trains until ``stop_timesteps`` env steps (or a greedy evaluation >= ``stop_reward``).

    Prints one line per iteration: env steps, training return (epsilon-softmax),
    the latest greedy evaluation return and the env step it was taken at, TD
    loss, policy entropy, stack fill.
    """
    start = time.time()
    result: Dict[str, Any] = {}
    env_steps = 0
    latest_eval = f"{'-':>8} {'':8}"
    while env_steps < stop_timesteps:
        result = algo.train()
        env_steps = metric_at(result, ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME, default=0)
        learner = metric_at(result, "learners", "default_policy", default={})
        eval_return = None
        if evaluated_this_iteration(algo, result):
            eval_return = metric_at(result, EVALUATION_RESULTS, ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN)
            latest_eval = f"{eval_return:8.2f} @{int(env_steps):<7d}"
        print_fn(
            f"[{100 * min(env_steps / stop_timesteps, 1):5.1f}%] iter {result['training_iteration']:4d} "
            f"| steps {int(env_steps):8d} "
            f"| return {metric_at(result, ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN):8.2f} "
            f"| eval {latest_eval} "
            f"| td {metric_at(learner, 'td_loss'):9.3f} "
            f"| H(pi) {metric_at(learner, 'policy_entropy'):5.3f} "
            f"| stack {int(metric_at(learner, 'stack_fill', default=0)):4d} "
            f"| {time.time() - start:7.1f}s"
        )
        if stop_reward is not None and eval_return is not None and eval_return >= stop_reward:
            break
    return result


def evaluated_this_iteration(algo: Algorithm, result: Dict[str, Any]) -> bool:
    """Whether this iteration ran an evaluation.

    RLlib repeats an evaluation's results in the next iteration's result, so
    the presence of evaluation keys does not tell.
    """
    interval = algo.config.evaluation_interval
    return bool(interval) and result["training_iteration"] % interval == 0


def evaluate_greedy(algo: Algorithm, print_fn=print) -> float:
    """Runs RLlib's evaluation (greedy argmax policy) once; returns the mean return."""
    results = algo.evaluate()
    mean_return = metric_at(results, ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN)
    episodes = metric_at(results, ENV_RUNNER_RESULTS, "num_episodes", default="?")
    print_fn(f"Final greedy evaluation: mean return {mean_return:.2f} over {episodes} episodes")
    return mean_return
