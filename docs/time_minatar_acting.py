"""Acting cost on MinAtar with a full stack, against the number of vector envs.

    python docs/time_minatar_acting.py --game Breakout --stack-size 50 --num-envs 1,8,16

For each vector-env count: the tuned MinAtar config (``tuned_examples/minatar_staq.py``) with a
stack of ``--stack-size`` perturbed copies of the trainable CNNs pushed straight into it (timing
only), then EnvRunner milliseconds per env step (explore=True). Then the time of one FQI
gradient step (CNN, batch 256, 2 ensemble members), from one iteration's learner timer.
"""

import argparse
import importlib.util
import pathlib
import time

import ray
import torch
from ray.rllib.core import DEFAULT_MODULE_ID

from rllib_staq import pmd

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "tuned_examples" / "minatar_staq.py"


def load_build_config():
    spec = importlib.util.spec_from_file_location("minatar_staq", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_config


def fill_stack(algo, members: int) -> None:
    module = algo.learner_group._learner.module[DEFAULT_MODULE_ID].unwrapped()
    alpha, beta = pmd.pmd_step_sizes(20.0, 2.0)
    with torch.no_grad():
        for _ in range(members):
            for param in module.q_nets.parameters():
                param.add_(torch.randn_like(param), alpha=0.01)
            module.push_onto_stack(alpha, beta, 1.0)
    algo.env_runner_group.sync_weights(
        from_worker_or_learner_group=algo.learner_group, inference_only=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--game", default="Breakout")
    parser.add_argument("--stack-size", type=int, default=50)
    parser.add_argument("--num-envs", default="1,8,16")
    parser.add_argument("--steps", type=int, default=2000, help="timed env steps per count")
    parser.add_argument("--grad-steps", type=int, default=300)
    args = parser.parse_args()
    build_config = load_build_config()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    print(f"{args.game}, M={args.stack_size}, {torch.get_num_threads()} torch thread(s)")
    print("| vector envs | ms per env step |\n|---|---|")
    for num_envs in [int(n) for n in args.num_envs.split(",")]:
        config = build_config(game=args.game).env_runners(num_envs_per_env_runner=num_envs)
        config.training(stack_size=args.stack_size).evaluation(evaluation_interval=None)
        algo = config.build_algo()
        try:
            fill_stack(algo, args.stack_size)
            algo.env_runner.sample(num_timesteps=10 * num_envs, random_actions=False)
            start = time.perf_counter()
            algo.env_runner.sample(num_timesteps=args.steps, random_actions=False)
            print(f"| {num_envs} | {1000 * (time.perf_counter() - start) / args.steps:.2f} |")
        finally:
            algo.stop()
    config = build_config(game=args.game).training(
        env_steps_per_iteration=1000, grad_steps_per_iteration=args.grad_steps
    )
    algo = config.evaluation(evaluation_interval=None).build_algo()
    try:
        start = time.perf_counter()
        algo.train()
        algo.train()  # the second: no warm-up
        result = algo.train()
        seconds = result["timers"]["learner_update_timer"]
        print(
            f"FQI: {1000 * seconds / args.grad_steps:.2f} ms per gradient step "
            f"(learner_update_timer of the third iteration, {args.grad_steps} steps)"
        )
    finally:
        algo.stop()
        ray.shutdown()


if __name__ == "__main__":
    main()
