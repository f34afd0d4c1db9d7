"""Train with a self-explaining progress display (one line per iteration).

One plain line per iteration, under a header that names every column: the same
text in a terminal, a log file and CI (a redrawn progress bar, as tqdm or rich
draw it, turns into control characters or repeated lines there).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Dict, Optional

from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core import ALL_MODULES
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    EPISODE_MODULE_RETURN_MEAN,
    EPISODE_RETURN_MEAN,
    EVALUATION_RESULTS,
    LEARNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
)

from rllib_staq.staq_learner import (
    KL_NEW_OLD_KEY,
    MEAN_Q_KEY,
    POLICY_ENTROPY_KEY,
    STACK_FILL_KEY,
    TD_LOSS_KEY,
)

NAN = float("nan")

# Why a run stopped (TrainingOutcome.stop_reason).
STOP_TIMESTEPS = "env-step budget reached"
STOP_ITERS = "iteration budget reached"
STOP_REWARD = "greedy return reached --stop-reward"
STOP_INTERRUPTED = "interrupted"


def metric_at(result: Dict[str, Any], *keys, default=NAN):
    for key in keys:
        if not isinstance(result, dict) or key not in result:
            return default
        result = result[key]
    return result


@dataclasses.dataclass
class Budget:
    """When training stops: whichever of the budgets is reached first."""

    stop_timesteps: Optional[int] = None
    stop_iters: Optional[int] = None
    # Stop early once a fresh greedy evaluation reaches this return.
    stop_reward: Optional[float] = None

    def fraction_done(self, env_steps: int, iteration: int) -> float:
        """Share of the budget spent: the larger of the env-step and iteration shares."""
        shares = [0.0]
        if self.stop_timesteps:
            shares.append(env_steps / self.stop_timesteps)
        if self.stop_iters:
            shares.append(iteration / self.stop_iters)
        return min(max(shares), 1.0)

    def exhausted(self, env_steps: int, iteration: int) -> Optional[str]:
        if self.stop_timesteps is not None and env_steps >= self.stop_timesteps:
            return STOP_TIMESTEPS
        if self.stop_iters is not None and iteration >= self.stop_iters:
            return STOP_ITERS
        return None


@dataclasses.dataclass
class IterationRecord:
    """The per-iteration numbers a user keeps (one CSV row, one progress line)."""

    iteration: int
    env_steps: int
    time_s: float
    env_steps_per_s: float
    training_return: float
    # NaN unless this iteration ran a greedy evaluation (RLlib repeats old ones).
    greedy_return: float
    td_loss: float
    mean_q: float
    policy_entropy: float
    kl_pi_k_pi_k_plus_1: float
    stack_fill: int
    # Multi-agent only: each policy's greedy return (its agents' sum), when evaluated.
    # Not a CSV column of its own: RunFolder writes one column per policy.
    policy_greedy_returns: Dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_result(
        cls, algo: Algorithm, result: Dict[str, Any], time_s: float, env_steps_per_s: float
    ) -> "IterationRecord":
        learner = policies_mean(result)
        greedy, policy_greedy = NAN, {}
        if evaluated_this_iteration(algo, result):
            greedy = metric_at(result, EVALUATION_RESULTS, ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN)
            if algo.config.is_multi_agent:
                policy_greedy = policy_returns(result[EVALUATION_RESULTS])
        return cls(
            iteration=int(result["training_iteration"]),
            env_steps=int(
                metric_at(result, ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME, default=0)
            ),
            time_s=time_s,
            env_steps_per_s=env_steps_per_s,
            training_return=metric_at(result, ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN),
            greedy_return=greedy,
            td_loss=metric_at(learner, TD_LOSS_KEY),
            mean_q=metric_at(learner, MEAN_Q_KEY),
            policy_entropy=metric_at(learner, POLICY_ENTROPY_KEY),
            kl_pi_k_pi_k_plus_1=metric_at(learner, KL_NEW_OLD_KEY),
            stack_fill=int(metric_at(learner, STACK_FILL_KEY, default=0)),
            policy_greedy_returns=policy_greedy,
        )


def policy_returns(results: Dict[str, Any]) -> Dict[str, float]:
    """``{policy: mean episode return of its agents}`` from RLlib's per-module metric."""
    per_module = metric_at(results, ENV_RUNNER_RESULTS, EPISODE_MODULE_RETURN_MEAN, default={})
    return {str(module_id): float(value) for module_id, value in sorted(per_module.items())}


def format_policy_returns(returns: Dict[str, float]) -> str:
    return ", ".join(f"{module_id} {value:.2f}" for module_id, value in returns.items())


def policies_mean(result: Dict[str, Any]) -> Dict[str, float]:
    """The learner metrics of the progress line; with several policies, their mean
    (the stack fill: the smallest), so a multi-agent run shows one line too."""
    learners = metric_at(result, LEARNER_RESULTS, default={})
    policies = [
        metrics
        for module_id, metrics in learners.items()
        if module_id != ALL_MODULES and isinstance(metrics, dict) and TD_LOSS_KEY in metrics
    ]
    if not policies:
        return {}
    keys = (TD_LOSS_KEY, MEAN_Q_KEY, POLICY_ENTROPY_KEY, KL_NEW_OLD_KEY)
    mean = {key: float(sum(p[key] for p in policies) / len(policies)) for key in keys}
    mean[STACK_FILL_KEY] = min(p[STACK_FILL_KEY] for p in policies)
    return mean


@dataclasses.dataclass
class TrainingOutcome:
    result: Dict[str, Any]
    stop_reason: str
    fraction_done: float
    latest_greedy_return: float = NAN
    latest_greedy_env_steps: int = 0


# (header, width) of each column of the progress line.
COLUMNS = (
    ("done", 6),
    ("iter", 5),
    ("env steps", 9),
    ("steps/s", 7),
    ("ETA", 7),
    ("train return", 12),
    ("greedy return @ step", 20),
    ("TD loss", 9),
    ("H(pi)", 6),
    ("KL", 8),
    ("stack", 5),
)


def legend(algo: Algorithm) -> str:
    """What each column means, one line per column group."""
    return "\n".join(
        (
            "Columns:",
            "  done: share of the env-step or iteration budget spent (whichever is larger)",
            "  train return: mean return of the latest episodes of the epsilon-softmax "
            "behaviour policy (- until the first episode ends)",
            "  greedy return @ step: latest argmax evaluation, and the env step it ran at",
            f"  TD loss: on rewards x {algo.config.reward_scale} (reward_scale); it grows while "
            "the Q-values rise towards their fixed point, then falls",
            "  H(pi): policy entropy (nats); KL: KL(pi_k || pi_k+1); stack: Q-networks per member",
            "  (with several policies: returns are the sum over agents, TD loss, H(pi) and KL "
            "the policies' mean, stack the smallest; each evaluation adds a line with every "
            "policy's greedy return, the sum over its agents)",
        )
    )


def header() -> str:
    return " | ".join(f"{name:>{width}}" for name, width in COLUMNS)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def format_return(value: float) -> str:
    """A return, or "-" while there is none yet (no episode has ended: Freeway's take 2500
    steps, so a run with 16 vector envs ends its first ones after 40,000 env steps)."""
    return "-" if math.isnan(value) else f"{value:.2f}"


def progress_line(record: IterationRecord, fraction: float, eta_s: float, greedy: str) -> str:
    cells = (
        f"{100 * fraction:5.1f}%",
        f"{record.iteration}",
        f"{record.env_steps}",
        f"{record.env_steps_per_s:.0f}",
        format_duration(eta_s),
        format_return(record.training_return),
        greedy,
        f"{record.td_loss:.3f}",
        f"{record.policy_entropy:.3f}",
        f"{record.kl_pi_k_pi_k_plus_1:.4f}",
        f"{record.stack_fill}",
    )
    return " | ".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, COLUMNS))


def eta_seconds(fraction: float, elapsed_s: float) -> float:
    if fraction <= 0.0:
        return NAN
    return elapsed_s * (1.0 - fraction) / fraction


def train_with_progress(
    algo: Algorithm,
    budget: Budget,
    print_fn: Callable[[str], None] = print,
    on_iteration: Optional[Callable[[IterationRecord, Dict[str, Any]], None]] = None,
    should_stop: Callable[[], bool] = lambda: False,
    verbose: bool = True,
) -> TrainingOutcome:
    """Trains until the budget is spent, a fresh greedy evaluation reaches
    ``budget.stop_reward``, or ``should_stop()`` (checked between iterations).

    Prints a header, a legend and one line per iteration (unless not ``verbose``);
    ``on_iteration`` receives each :class:`IterationRecord` and the raw result.
    """
    if verbose:
        print_fn(legend(algo))
        print_fn(header())
    start = time.time()
    outcome = TrainingOutcome(result={}, stop_reason=STOP_TIMESTEPS, fraction_done=0.0)
    latest_greedy = f"{'-':>20}"
    previous_steps, previous_time = 0, start
    while True:
        if should_stop():
            outcome.stop_reason = STOP_INTERRUPTED
            break
        result = algo.train()
        now = time.time()
        env_steps = int(
            metric_at(result, ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME, default=0)
        )
        record = IterationRecord.from_result(
            algo, result, now - start, (env_steps - previous_steps) / max(now - previous_time, 1e-9)
        )
        previous_steps, previous_time = env_steps, now
        outcome.result = result
        outcome.fraction_done = budget.fraction_done(record.env_steps, record.iteration)
        if not math.isnan(record.greedy_return):
            outcome.latest_greedy_return = record.greedy_return
            outcome.latest_greedy_env_steps = record.env_steps
            latest_greedy = f"{record.greedy_return:.2f} @{record.env_steps}"
        if on_iteration is not None:
            on_iteration(record, result)
        if verbose:
            eta = eta_seconds(outcome.fraction_done, now - start)
            print_fn(progress_line(record, outcome.fraction_done, eta, latest_greedy))
            if record.policy_greedy_returns:
                per_policy = format_policy_returns(record.policy_greedy_returns)
                print_fn(f"  greedy return per policy: {per_policy}")
        reached = budget.stop_reward is not None and record.greedy_return >= budget.stop_reward
        if reached:
            outcome.stop_reason = STOP_REWARD
            break
        exhausted = budget.exhausted(record.env_steps, record.iteration)
        if exhausted:
            outcome.stop_reason = exhausted
            break
    return outcome


def evaluated_this_iteration(algo: Algorithm, result: Dict[str, Any]) -> bool:
    """Whether this iteration ran an evaluation.

    RLlib repeats an evaluation's results in the next iteration's result, so
    the presence of evaluation keys does not tell.
    """
    interval = algo.config.evaluation_interval
    return bool(interval) and result["training_iteration"] % interval == 0
