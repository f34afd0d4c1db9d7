"""The bfloat16 acting stack (``stack_dtype``) against float32: policy error and speed.

    python benchmarks/stack_dtype.py                       # both parts
    python benchmarks/stack_dtype.py --part error --train-iterations 10
    python benchmarks/stack_dtype.py --part speed --stack-sizes 1,30,300 --num-envs 1,16

Parts, each side by side in one run:

* ``error``: trains StaQ on CartPole for ``--train-iterations`` iterations (a
  real stack), then fills the rest of an M=300 stack with copies of the trained
  ensemble perturbed by 1% of each tensor's spread. On the replay table's
  next-states (states the policy really visits) it compares the bf16 EnvRunner
  stack's logits with the learner's float32 stack: relative error, largest
  logit error (after centring, since a softmax ignores a shared offset), the
  total-variation distance between the two epsilon-softmax policies, and the
  greedy-action agreement. Under a maximal coupling the two policies pick
  different actions with probability TV, so TV bounds the per-step effect.
* ``speed``: EnvRunner milliseconds per env step and the iteration time (1000
  env steps + ``--grad-steps`` gradient steps of 256, a full replay of 50,000
  random-policy rows, a pre-filled stack of M pushes) for each M, number of
  vector envs and dtype. The two dtypes alternate within each cell.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from throughput import prefill, staq_config

from rllib_staq import pmd

DTYPES = ("float32", "bfloat16")
ERROR_STACK_SIZE = 300
TV_BOUND = 1e-3  # what "negligible for sampling" means here (see the docstring)


def _learner_module(algo):
    learner = algo.learner_group._learner
    return learner, learner.module[DEFAULT_MODULE_ID].unwrapped()


def _acting_copy(module, stack_dtype: str):
    """An EnvRunner-like (inference-only) copy of ``module`` storing ``stack_dtype``."""
    copy = type(module)(
        observation_space=module.observation_space,
        action_space=module.action_space,
        inference_only=True,
        model_config={**module.model_config, "stack_dtype": stack_dtype},
    )
    copy.set_state(module.get_state(inference_only=True))
    return copy


@torch.no_grad()
def _fill_with_perturbed_copies(module, num_pushes: int, alpha, beta, correction) -> None:
    """Pushes copies of the trained ensemble, each perturbed by 1% of a tensor's std."""
    trained = [p.detach().clone() for p in module.q_nets.parameters()]
    for _ in range(num_pushes):
        for param, value in zip(module.q_nets.parameters(), trained):
            param.copy_(value + 0.01 * value.std() * torch.randn_like(value))
        module.push_onto_stack(alpha, beta, correction)
    for param, value in zip(module.q_nets.parameters(), trained):
        param.copy_(value)


def _policy_error(exact_module, acting_module, states, epsilon: float) -> dict:
    with torch.no_grad():
        exact = exact_module.stack_logits(states)
        approx = acting_module.stack_logits(states)
    centred = (approx - exact) - (approx - exact).mean(-1, keepdim=True)
    p_exact = pmd.epsilon_softmax_probs(exact, epsilon)
    p_approx = pmd.epsilon_softmax_probs(approx, epsilon)
    tv = 0.5 * (p_exact - p_approx).abs().sum(-1)
    return {
        "fill": exact_module.stack_fill,
        "logit_range": float((exact.max(-1).values - exact.min(-1).values).mean()),
        "relative": float((approx - exact).norm() / exact.norm()),
        "max_centred": float(centred.abs().max()),
        "tv_mean": float(tv.mean()),
        "tv_max": float(tv.max()),
        "greedy_agree": float((approx.argmax(-1) == exact.argmax(-1)).float().mean()),
    }


def run_error(args) -> None:
    config = staq_config(args, ERROR_STACK_SIZE, 1000, 1000, 1)
    algo = config.build_algo()
    try:
        for _ in range(args.train_iterations):
            result = algo.train()
        learner, module = _learner_module(algo)
        table = learner._tables[DEFAULT_MODULE_ID]
        states = table.filled(Columns.NEXT_OBS)[-args.error_states :]
        rows = [_policy_error(module, _acting_copy(module, "bfloat16"), states, 0.05)]
        tau = learner.entropy_coeff(DEFAULT_MODULE_ID)
        alpha, beta = pmd.pmd_step_sizes(config.kl_coeff, tau)
        correction = pmd.weight_correction(beta, ERROR_STACK_SIZE, config.weight_correction)
        _fill_with_perturbed_copies(
            module, ERROR_STACK_SIZE - module.stack_fill, alpha, beta, correction
        )
        rows.append(_policy_error(module, _acting_copy(module, "bfloat16"), states, 0.05))
        training_return = result["env_runners"].get("episode_return_mean")
    finally:
        algo.stop()
    print(
        f"\n## bf16 acting stack vs float32: policy error on {states.shape[0]} replay "
        f"next-states after {args.train_iterations} CartPole iterations (1000 env + 1000 "
        f"grad steps each, E=2, 2x256), epsilon 0.05; last training return {training_return}"
    )
    print(
        "| stack | mean logit range | relative error | max centred logit error "
        "| TV mean | TV max | greedy agreement |"
    )
    print("|---|---|---|---|---|---|---|")
    labels = ("trained (real members)", f"M={ERROR_STACK_SIZE}: trained + perturbed copies")
    for label, row in zip(labels, rows):
        print(
            f"| {label}, fill {row['fill']} | {row['logit_range']:.3g} | {row['relative']:.2e} "
            f"| {row['max_centred']:.2e} | {row['tv_mean']:.2e} | {row['tv_max']:.2e} "
            f"| {100 * row['greedy_agree']:.2f}% |"
        )
    worst = max(row["tv_max"] for row in rows)
    verdict = "within" if worst <= TV_BOUND else "OVER"
    print(f"Largest TV {worst:.2e}: {verdict} the bound {TV_BOUND:g} used for 'negligible'.")


def _time_cell(args, stack_size: int, num_envs: int, stack_dtype: str) -> tuple:
    config = staq_config(args, stack_size, 1000, args.grad_steps, num_envs).training(
        stack_dtype=stack_dtype
    )
    algo = config.build_algo()
    try:
        prefill(algo, args.replay_fill, stack_size + 1)
        runner = algo.env_runner
        steps = args.acting_forwards * num_envs
        runner.sample(num_timesteps=num_envs * 10, random_actions=False)  # warm-up
        start = time.perf_counter()
        runner.sample(num_timesteps=steps, random_actions=False)
        acting_ms = 1000 * (time.perf_counter() - start) / steps
        algo.train()  # warm-up (allocations, first sync)
        start = time.perf_counter()
        for _ in range(args.iterations):
            algo.train()
        iteration_s = (time.perf_counter() - start) / args.iterations
    finally:
        algo.stop()
    return acting_ms, iteration_s


def run_speed(args) -> None:
    print(
        f"\n## Acting stack dtype: ms per env step and s per iteration (1000 env + "
        f"{args.grad_steps} grad steps of 256, replay {args.replay_fill}, E=2, 2x256, "
        f"{torch.get_num_threads()} torch thread(s)); mean of {args.iterations} iterations"
    )
    print(
        "| M | envs | acting fp32 | acting bf16 | ratio | iteration fp32 | iteration bf16 "
        "| ratio | iteration / iteration(M=1), fp32, bf16 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    baseline = {}
    for num_envs in args.num_envs:
        for stack_size in args.stack_sizes:
            cell = {dtype: _time_cell(args, stack_size, num_envs, dtype) for dtype in DTYPES}
            (act32, it32), (act16, it16) = cell["float32"], cell["bfloat16"]
            baseline.setdefault(num_envs, (it32, it16))
            b32, b16 = baseline[num_envs]
            print(
                f"| {stack_size} | {num_envs} | {act32:.3f} | {act16:.3f} | "
                f"{act32 / act16:.2f}x | {it32:.2f} | {it16:.2f} | {it32 / it16:.2f}x | "
                f"{it32 / b32:.2f}x, {it16 / b16:.2f}x |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="all", choices=["all", "error", "speed"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--train-iterations", type=int, default=10)
    parser.add_argument("--error-states", type=int, default=5000)
    parser.add_argument("--stack-sizes", default="1,30,300")
    parser.add_argument("--num-envs", default="1,16")
    parser.add_argument("--grad-steps", type=int, default=250)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--replay-fill", type=int, default=50_000)
    parser.add_argument("--acting-forwards", type=int, default=200)
    args = parser.parse_args()
    args.stack_sizes = [int(m) for m in args.stack_sizes.split(",")]
    args.num_envs = [int(n) for n in args.num_envs.split(",")]
    np.random.seed(0)
    torch.manual_seed(0)
    if args.part in ("all", "error"):
        run_error(args)
    if args.part in ("all", "speed"):
        run_speed(args)


if __name__ == "__main__":
    main()
