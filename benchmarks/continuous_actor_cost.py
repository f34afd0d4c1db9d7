"""Cost of one reverse-KL actor step of continuous StaQ against M (issue 15).

    python benchmarks/continuous_actor_cost.py [--device cuda] [--threads 1]
        [--stack-sizes 1 10 50] [--batch 256]

For each M, a ``ContinuousStaQTorchRLModule`` (Pendulum shapes: obs 3, action 1,
2x256 networks, E=2 critics) gets M pushes; then one actor step (actor forward,
reparameterised sample, the stacked energy over all S = M*E critics, backward
to the actor through the action, Adam step) is timed, as in
``ContinuousStaQTorchLearner._fit_actor``. Also timed: one FQI step (its cost
does not depend on M) and the actor's acting forward at batch 1 (M-free: the
EnvRunners hold only the actor). Prints milliseconds (median of the repeats).

``--fits`` also times one whole actor fit per iteration through the learner
(``ContinuousStaQTorchLearner._fit_actor``, with ``tuned_examples/pendulum_staq.py``'s
settings: 250 steps of batch 256) with each
``actor_fit``: "reverse_kl" (the stack at every step) against "weighted_ml" (the
stack once, on 2048 states x 16 proposal actions), side by side with their ratio.
"""

import argparse
import os
import statistics
import sys
import time

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from rllib_staq import pmd
from rllib_staq.torch.continuous_staq_torch_learner import ContinuousStaQTorchLearner
from rllib_staq.torch.continuous_staq_torch_rl_module import ContinuousStaQTorchRLModule


def build(stack_size: int, device: str):
    module = RLModuleSpec(
        module_class=ContinuousStaQTorchRLModule,
        observation_space=gym.spaces.Box(-8, 8, (3,), np.float32),
        action_space=gym.spaces.Box(-2, 2, (1,), np.float32),
        model_config={"fcnet_hiddens": [256, 256], "stack_size": stack_size, "num_q_networks": 2},
    ).build()
    module.make_target_networks()
    module.to(device)
    alpha, beta = pmd.pmd_step_sizes(0.5, 0.144)
    correction = pmd.weight_correction(beta, stack_size)
    for _ in range(stack_size):
        with torch.no_grad():
            for param in module.critics.parameters():
                param.add_(0.01 * torch.randn_like(param))
        module.push_onto_stack(alpha, beta, correction)
    module.num_actor_fits.fill_(1)
    return module


def timed(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[2:])


def measure(stack_size: int, device: str, batch: int, repeats: int):
    """(actor step, FQI step, acting forward at batch 1) in ms at this M."""
    module = build(stack_size, device)
    actor_opt = torch.optim.Adam(module.actor.parameters())
    critic_opt = torch.optim.Adam(module.critics.parameters())
    obs = torch.randn(batch, 3, device=device)
    actions = torch.rand(batch, 1, device=device) * 2 - 1

    def actor_step():
        noise = torch.randn(batch, 1, device=device)
        loss = ContinuousStaQTorchLearner.actor_loss(module, obs, noise)
        actor_opt.zero_grad()
        loss.backward()
        actor_opt.step()

    def fqi_step():
        with torch.no_grad():
            next_actions, next_log_prob = module.sample_actions(obs)
            target_q = module.critic_values(obs, next_actions, target=True).mean(0)
            y = pmd.box_soft_target(
                torch.zeros(batch, device=device),
                torch.zeros(batch, device=device),
                target_q,
                next_log_prob,
                0.144,
                0.99,
                1.0,
            )
        loss = ((module.critic_values(obs, actions) - y) ** 2).mean(-1).sum()
        critic_opt.zero_grad()
        loss.backward()
        critic_opt.step()

    def acting():
        with torch.no_grad():
            module.sample_actions(obs[:1])

    return (
        timed(actor_step, repeats, device),
        timed(fqi_step, repeats, device),
        timed(acting, repeats, device),
    )


def fit_seconds(stack_size: int, actor_fit: str, repeats: int) -> float:
    """Median seconds of one whole actor fit: the learner's own, with the tuned Pendulum
    example's settings (250 actor steps of batch 256, 2x256 networks, E=2)."""
    from ray.rllib.core.columns import Columns

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tuned_examples"))
    from pendulum_staq import build_config

    obs_space = gym.spaces.Box(-8, 8, (3,), np.float32)
    action_space = gym.spaces.Box(-2, 2, (1,), np.float32)
    config = build_config(stack_size=stack_size, actor_fit=actor_fit)
    learner = config.build_learner(spaces={"default_policy": (obs_space, action_space)})
    learner.before_gradient_based_update(timesteps={})
    num = 10_000
    learner.add_transitions(
        "default_policy",
        {
            Columns.OBS: torch.randn(num, 3),
            Columns.ACTIONS: torch.rand(num, 1) * 2 - 1,
            Columns.REWARDS: torch.randn(num),
            Columns.TERMINATEDS: torch.zeros(num),
            Columns.NEXT_OBS: torch.randn(num, 3),
        },
    )
    module = learner.module["default_policy"].unwrapped()
    for _ in range(stack_size):
        with torch.no_grad():
            for param in module.critics.parameters():
                param.add_(0.01 * torch.randn_like(param))
        learner._push("default_policy")
    table = learner._table("default_policy")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        learner._fit_actor("default_policy", table)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stack-sizes", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--fits", action="store_true", help="also time whole fits of both actor_fit modes (CPU)"
    )
    parser.add_argument("--fit-repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device, batch = args.device, args.batch
    print(f"device {device}, {args.threads} thread(s), batch {batch}, E=2, 2x256 networks")
    print(f"{'M':>5} | {'actor step ms':>13} | {'FQI step ms':>11} | {'acting fwd ms':>13}")
    for stack_size in args.stack_sizes:
        actor_ms, fqi_ms, acting_ms = measure(stack_size, device, batch, args.repeats)
        print(f"{stack_size:>5} | {actor_ms:>13.2f} | {fqi_ms:>11.2f} | {acting_ms:>13.3f}")
    if not args.fits:
        return
    print("\nWhole actor fit per iteration (250 steps of batch 256; seconds, median):")
    print(f"{'M':>5} | {'reverse_kl s':>12} | {'weighted_ml s':>13} | {'ratio':>6}")
    for stack_size in args.stack_sizes:
        reverse_kl = fit_seconds(stack_size, "reverse_kl", args.fit_repeats)
        weighted_ml = fit_seconds(stack_size, "weighted_ml", args.fit_repeats)
        ratio = reverse_kl / weighted_ml
        print(f"{stack_size:>5} | {reverse_kl:>12.2f} | {weighted_ml:>13.2f} | {ratio:>5.1f}x")


if __name__ == "__main__":
    main()
