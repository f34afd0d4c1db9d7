"""Cost of the stacked forward pass against M (MLP and MinAtar CNN).

    python benchmarks/stack_cost.py [--device cuda] [--threads 1]

Prints, measured side by side in one run, the latency of
``DefaultStaQTorchRLModule.stack_logits`` for M in {1, 10, 50, 100, 300}
(two ensemble members each, as the defaults) at batch 1, 256 and 50,000 (the
last one chunked as the learner does), and the time per member relative to M=1.
"""

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from rllib_staq.torch.default_staq_torch_rl_module import DefaultStaQTorchRLModule
from rllib_staq.torch.staq_torch_learner import LOGITS_CHUNK

SHAPES = {
    "mlp-2x256 (CartPole)": (gym.spaces.Box(-5, 5, (4,), np.float32), 2),
    "cnn-16c3-128 (MinAtar)": (gym.spaces.Box(0, 1, (10, 10, 4), np.float32), 6),
}


def filled_module(obs_space, num_actions, stack_size, device):
    module = RLModuleSpec(
        module_class=DefaultStaQTorchRLModule,
        observation_space=obs_space,
        action_space=gym.spaces.Discrete(num_actions),
        model_config={"stack_size": stack_size, "num_q_networks": 2},
    ).build()
    module.to(device)
    with torch.no_grad():
        for param in module.q_nets.parameters():
            param.normal_(0, 0.05)
    for _ in range(stack_size):  # pre-fill: M pushes, no training needed
        module.push_onto_stack(0.05, 0.97, 1.0)
    return module


def seconds_per_call(fn, min_time=0.5, device="cpu"):
    fn()  # warm-up
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time or calls < 3:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        calls += 1
    return (time.perf_counter() - start) / calls


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--stack-sizes", default="1,10,50,100,300")
    parser.add_argument("--batches", default="1,256,50000")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    stack_sizes = [int(m) for m in args.stack_sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    print(f"device={args.device} torch threads={torch.get_num_threads()} chunk={LOGITS_CHUNK}")
    for name, (space, actions) in SHAPES.items():
        print(f"\n{name}")
        print(f"{'M':>5} " + " ".join(f"{'batch ' + str(b):>28}" for b in batches))
        baseline = {}
        for m in stack_sizes:
            module = filled_module(space, actions, m, args.device)
            cells = []
            for b in batches:
                obs = torch.as_tensor(
                    np.stack([space.sample() for _ in range(min(b, LOGITS_CHUNK))]),
                    device=args.device,
                )
                chunks = max(1, b // LOGITS_CHUNK)

                @torch.no_grad()
                def run():
                    for _ in range(chunks):
                        module.stack_logits(obs[: min(b, LOGITS_CHUNK)])

                t = seconds_per_call(run, device=args.device)
                baseline.setdefault(b, t)
                per_member_ratio = t / m / baseline[b]
                cells.append(f"{t * 1e3:10.3f} ms ({per_member_ratio:5.3f}x/mem)")
            print(f"{m:5d} " + " ".join(f"{c:>28}" for c in cells))
            print(f"      stack memory: {m} x 2 x {sum(p.numel() for p in module.q_nets[0].parameters())}"
                  f" params x 4 B = {m * 2 * sum(p.numel() for p in module.q_nets[0].parameters()) * 4 / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
