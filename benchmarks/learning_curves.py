"""Learning curves of a tuned example (or RLlib's DQN/PPO on its env) over seeds, with Tune.

    python benchmarks/learning_curves.py --example cartpole_staq --seeds 0,1,2 \\
        --stop-timesteps 100000 --out curves_cartpole.csv
    python benchmarks/learning_curves.py --example cartpole_staq --algo dqn --seeds 0,1,2
    python benchmarks/learning_curves.py --example acrobot_staq --grid '{"lr": [1e-4, 3e-4]}'

Every (grid point, seed) is one Tune trial using one CPU (``num_env_runners=0``),
so trials run concurrently. The CSV holds one row per evaluation (greedy, 10
episodes). The script prints each grid point's curves (greedy return per seed at
every evaluation) and a table with the env steps at which each seed's greedy
return first reached ``--threshold``, the mean of each seed's last three
evaluations and the env-steps/s. ``--experiment DIR`` summarises a finished run
(the folder the script prints) without training again.

``--algo dqn`` and ``--algo ppo`` run RLlib's built-in agents on the example's
environment with the settings of RLlib's own CartPole examples (DQN: dueling
double DQN, prioritised replay, n-step 2-5, lr 5e-4, batch 32; PPO: lr 3e-4,
6 epochs), 2x256 networks and the same evaluation as StaQ.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import pathlib
from typing import Any, Dict, List

import numpy as np
import ray
from ray import tune
from ray.rllib.algorithms.dqn import DQNConfig
from ray.rllib.algorithms.ppo import PPOConfig

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "tuned_examples"
EVAL_RETURN = "evaluation/env_runners/episode_return_mean"
ENV_STEPS = "env_runners/num_env_steps_sampled_lifetime"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluation_settings(config, interval: int):
    return config.evaluation(
        evaluation_interval=interval,
        evaluation_duration=10,
        evaluation_duration_unit="episodes",
        evaluation_config={"explore": False},
    )


def baseline_config(algo: str, env: str):
    """RLlib's DQN or PPO with the settings of RLlib's own CartPole examples."""
    if algo == "dqn":
        return (
            DQNConfig()
            .environment(env)
            .rl_module(model_config={"fcnet_hiddens": [256, 256], "head_fcnet_hiddens": []})
            .training(
                lr=5e-4,
                train_batch_size_per_learner=32,
                replay_buffer_config={
                    "type": "PrioritizedEpisodeReplayBuffer",
                    "capacity": 50_000,
                    "alpha": 0.6,
                    "beta": 0.4,
                },
                n_step=(2, 5),
                double_q=True,
                dueling=True,
                epsilon=[(0, 1.0), (10_000, 0.02)],
            )
            .reporting(min_sample_timesteps_per_iteration=1000)
        )
    return (
        PPOConfig()
        .environment(env)
        .rl_module(model_config={"fcnet_hiddens": [256, 256], "vf_share_layers": True})
        .training(lr=3e-4, num_epochs=6, vf_loss_coeff=0.01)
    )


def build_param_space(args) -> Any:
    example = load_example(args.example)
    staq_config = example.build_config(seed=0)
    if args.algo == "staq":
        config = staq_config
        grid = {key: tune.grid_search(values) for key, values in args.grid.items()}
        if grid:
            config = config.training(**grid)
        iterations_per_eval = max(1, args.eval_every // config.env_steps_per_iteration)
    else:
        config = baseline_config(args.algo, staq_config.env)
        # DQN iterations sample >= 1000 steps, PPO iterations 4000.
        steps_per_iteration = 1000 if args.algo == "dqn" else 4000
        iterations_per_eval = max(1, args.eval_every // steps_per_iteration)
    config = evaluation_settings(config, iterations_per_eval)
    return config.env_runners(num_env_runners=0).debugging(seed=tune.grid_search(args.seeds))


def trial_label(result, grid_keys: List[str]) -> str:
    training = result.config
    return ", ".join(f"{key}={training.get(key)}" for key in grid_keys) or "default"


def print_curves(by_label: Dict[str, Dict[int, List[Dict[str, Any]]]]) -> None:
    """One column per seed: the greedy return at each evaluation."""
    for label, seeds in by_label.items():
        seed_ids = sorted(seeds)
        returns = {
            seed: {row["env_steps"]: row["eval_return"] for row in seeds[seed]} for seed in seed_ids
        }
        print(f"\n{label}\n| env steps | " + " | ".join(f"seed {s}" for s in seed_ids) + " |")
        print("|---" * (len(seed_ids) + 1) + "|")
        for steps in sorted({steps for curve in returns.values() for steps in curve}):
            cells = [returns[s].get(steps) for s in seed_ids]
            print(
                f"| {steps:,} | "
                + " | ".join("" if cell is None else f"{cell:.0f}" for cell in cells)
                + " |"
            )


def summarise(rows: List[Dict[str, Any]], threshold: float) -> None:
    by_label: Dict[str, Dict[int, List[Dict[str, Any]]]] = {}
    for row in rows:
        by_label.setdefault(row["variant"], {}).setdefault(row["seed"], []).append(row)
    print_curves(by_label)
    print(
        f"\n| variant | env steps to greedy >= {threshold:g} (per seed) | "
        "last-3-eval greedy return (mean ± std over seeds) | env-steps/s |"
    )
    print("|---|---|---|---|")
    for label, seeds in by_label.items():
        reached, finals, speeds = [], [], []
        for _seed, curve in sorted(seeds.items()):
            hits = [r["env_steps"] for r in curve if r["eval_return"] >= threshold]
            reached.append(f"{hits[0]:,}" if hits else "not reached")
            finals.append(np.mean([r["eval_return"] for r in curve[-3:]]))
            speeds.append(curve[-1]["env_steps"] / max(curve[-1]["time_s"], 1e-9))
        print(
            f"| {label} | {', '.join(reached)} | {np.mean(finals):.1f} ± "
            f"{np.std(finals):.1f} | {np.mean(speeds):.0f} |"
        )


def run_trials(args, param_space, trainable):
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per trial
    # address="local": a new cluster even when another script runs one beside it.
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    stop = {ENV_STEPS: args.stop_timesteps}
    if args.time_budget_s:
        stop["time_total_s"] = args.time_budget_s
    tuner = tune.Tuner(
        trainable, param_space=param_space, run_config=tune.RunConfig(stop=stop, verbose=0)
    )
    results = tuner.fit()
    print(f"Tune experiment folder (for --experiment): {results.experiment_path}")
    ray.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--example", default="cartpole_staq")
    parser.add_argument("--algo", default="staq", choices=["staq", "dqn", "ppo"])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--grid", default="{}", help="JSON: StaQ training field -> values")
    parser.add_argument("--stop-timesteps", type=int, default=100_000)
    parser.add_argument(
        "--time-budget-s", type=float, default=None, help="stop each trial after this many seconds"
    )
    parser.add_argument("--eval-every", type=int, default=5000, help="env steps")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="greedy return to report (default: the example's stop reward)",
    )
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count())
    parser.add_argument("--out", default=None, help="CSV path for the curves")
    parser.add_argument(
        "--experiment",
        default=None,
        help="summarise this finished Tune experiment folder instead of training",
    )
    args = parser.parse_args()
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.grid = json.loads(args.grid)
    if args.threshold is None:
        args.threshold = load_example(args.example).parser.get_default("stop_reward")

    param_space = build_param_space(args)
    # The class, not RLlib's registry name: looking "DQN" up imports every
    # RLlib algorithm (DreamerV3 needs Pillow).
    trainable = param_space.algo_class
    if args.experiment:
        results = tune.Tuner.restore(args.experiment, trainable=trainable).get_results()
    else:
        results = run_trials(args, param_space, trainable)

    rows = []
    label_prefix = f"{args.algo} {args.example.replace('_staq', '')}"
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or EVAL_RETURN not in frame:
            print(f"trial {result.path}: no evaluation results ({result.error})")
            continue
        # RLlib repeats an evaluation's results in the next iteration's result:
        # keep the iterations that evaluated.
        frame = frame.dropna(subset=[EVAL_RETURN])
        frame = frame[frame["training_iteration"] % result.config["evaluation_interval"] == 0]
        label = f"{label_prefix} {trial_label(result, list(args.grid))}"
        for _, record in frame.iterrows():
            rows.append(
                {
                    "variant": label,
                    "seed": result.config["seed"],
                    "env_steps": int(record[ENV_STEPS]),
                    "eval_return": float(record[EVAL_RETURN]),
                    "time_s": float(record["time_total_s"]),
                }
            )
    if args.out:
        with open(args.out, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    summarise(rows, args.threshold)


if __name__ == "__main__":
    main()
