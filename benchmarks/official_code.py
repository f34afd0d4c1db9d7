"""Timings of the official StaQ code, for the side-by-side rows of the README.

The official implementation (github.com/JoachimJobard/StaQ, commit 8c3a2a39) is not part
of this repository. Check it out into a scratch folder, install its requirements there,
and run this script with that environment's Python (it needs torch, gymnasium and
tensorboard, not rllib_staq):

    python staq.py --experiment StaQ-classic --env-name CartPole-v1 --seed 0 --no-wandb \
        --device cpu --timesteps 15000 --logging-dir logs_cp        # in the official folder
    python benchmarks/official_code.py timings OFFICIAL_DIR/logs_cp
    python benchmarks/official_code.py full-stack --official-dir OFFICIAL_DIR

``timings`` prints the per-iteration seconds that the official ``staq.py`` logs to
TensorBoard (``timings/rollout``: the iteration's env steps; ``timings/precompute``: the
next-state logits over the replay; ``timings/training``: precompute, gradient steps and
push; ``timings/total``: cumulative) and the env steps per second of each iteration.

``full-stack`` times the official code's two stack-dependent phases in the steady state of
a long run, without training for 300 iterations first: it builds the official ensemble
(2 members, 2x256, memory 300), pushes 305 perturbed copies with ``update_sigq`` (the
official stack then holds its maximum of 301 networks per member), and times
``Sampler.rollouts`` with ``numpy_egreedy_softpolicy`` (acting, as ``run()`` does) and the
next-state logits over a full 50,000-row replay in chunks of 200 (as ``run()`` does). Its
gradient steps do not involve the stack; take them from an early iteration's
``training - precompute`` in ``timings``.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import time


def run_dirs(root: str) -> list:
    """Folders under ``root`` holding TensorBoard event files."""
    files = glob.glob(os.path.join(root, "**", "events.out.tfevents.*"), recursive=True)
    return sorted({os.path.dirname(path) for path in files})


def timing_scalars(run_dir: str) -> dict:
    """``{tag: {env_step: seconds}}`` for the official ``timings/*`` scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    tags = [tag for tag in events.Tags().get("scalars", []) if tag.startswith("timings/")]
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in tags}


def print_timings(args) -> None:
    columns = ("env steps", "rollout", "precompute", "train-precompute", "iteration", "env-steps/s")
    for run_dir in run_dirs(args.log_dir):
        scalars = timing_scalars(run_dir)
        print(f"## {run_dir} (seconds per iteration)")
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
        previous_step, previous_total = 0, 0.0
        for step in sorted(scalars.get("timings/total", {})):
            total = scalars["timings/total"][step]
            iteration = total - previous_total
            precompute = scalars["timings/precompute"].get(step, math.nan)
            training = scalars["timings/training"].get(step, math.nan)
            row = (
                scalars["timings/rollout"].get(step, math.nan),
                precompute,
                training - precompute,
                iteration,
                (step - previous_step) / iteration,
            )
            print(f"| {step} | " + " | ".join(f"{value:.2f}" for value in row) + " |")
            previous_step, previous_total = step, total


def time_full_stack(args) -> None:
    sys.path.insert(0, os.path.abspath(args.official_dir))
    import gymnasium as gym
    import numpy as np
    import staq as official
    import torch
    from rl_tools import Sampler

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    cpu = torch.device("cpu")
    ensemble = [
        official.StaQNet(
            4,
            2,
            nb_hidden=2,
            hidden_width=256,
            memory_size=300,
            use_w_correction=1,
            kl_weight=20.0,
            entropy_weight=2.0 / np.log(2),
            device=cpu,
            network_type="mlp",
            cnn_config=None,
        )
        for _ in range(2)
    ]
    with torch.no_grad():
        for member in ensemble:
            for _ in range(305):
                for param in member.parameters():
                    param.add_(torch.randn_like(param), alpha=0.01)
                member.update_sigq()
    networks = ensemble[0].froz_feat.sweights[0].shape[0]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"official stack: {networks} networks per ensemble member, 2 members"
    )

    sampler = Sampler(gym.make("CartPole-v1"))
    policy = lambda obs: official.numpy_egreedy_softpolicy(obs, ensemble, 0.05, cpu)  # noqa: E731
    sampler.rollouts(policy, min_trans=50, max_trans=50)  # warm-up
    start = time.perf_counter()
    sampler.rollouts(policy, min_trans=args.env_steps, max_trans=args.env_steps)
    acting = time.perf_counter() - start
    print(
        f"acting: {acting / args.env_steps * 1e3:.2f} ms per env step "
        f"({args.env_steps} steps, {acting:.1f} s)"
    )

    next_obs = torch.randn(args.replay_rows, 4)
    start = time.perf_counter()
    with torch.no_grad():
        logits = torch.zeros(args.replay_rows, 2)
        for first in range(0, args.replay_rows, 200):
            rows = slice(first, first + 200)
            logits[rows] = official.get_logits_ensemble_torch(ensemble, next_obs[rows])
    print(f"next-state logits over {args.replay_rows} rows: {time.perf_counter() - start:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parts = parser.add_subparsers(dest="part", required=True)
    timings = parts.add_parser("timings", help="per-iteration timings of an official run")
    timings.add_argument("log_dir", help="the official run's --logging-dir (or a folder below)")
    full = parts.add_parser("full-stack", help="official acting and next-state logits, full stack")
    full.add_argument("--official-dir", required=True, help="folder holding staq.py, rl_tools.py")
    full.add_argument("--env-steps", type=int, default=5000)
    full.add_argument("--replay-rows", type=int, default=50_000)
    full.add_argument("--threads", type=int, default=2, help="as the official run() sets")
    args = parser.parse_args()
    if args.part == "timings":
        print_timings(args)
    else:
        time_full_stack(args)


if __name__ == "__main__":
    main()
