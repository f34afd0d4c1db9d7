"""Cost of the stacked forward pass against M (MLP and MinAtar CNN).

    python benchmarks/stack_cost.py [--device cuda] [--threads 1]
    python benchmarks/stack_cost.py --part dense-layout --threads 1 --stack-sizes 1,30,300

Prints, measured side by side in one run (``--part all``, the default):

1. the latency of ``DefaultStaQTorchRLModule.stack_logits`` for M in
   {1, 10, 50, 100, 300} (two ensemble members each, as the defaults) at batch
   1, 256 and 50,000 (the last one chunked as the learner does), and the time
   per member relative to M=1;
2. the forms of the stacked forward we considered, at the largest M, timed
   against the package's choice (``pmd.stacked_forward``), each with its
   largest relative deviation from ``loop`` (all are exact up to rounding):

   * ``loop``: a Python loop over members, one small network forward each
     (what the official code does);
   * ``vmap``: ``torch.func.vmap`` of one member's forward over the members;
   * ``bmm``: batched matrix products for every layer (the shared input
     expanded to all members), then the weighted sum over the members' outputs;
   * ``batched``: the first layer as one matrix product over all members
     (shared input), batched products / grouped convolutions after it, and the
     PMD weights folded into the output layer (one kernel per layer);
   * ``member_loop``: one small network per member with contiguous GEMMs and
     the PMD weight folded into each head, accumulated in place;
   * ``package``: ``pmd.stacked_forward``, which takes ``batched`` on GPUs and
     for small CPU batches, ``member_loop`` for large CPU batches.

``--part dense-layout`` times the two layouts of ``pmd.stacked_dense`` (the
members' hidden dense layers in ``batched``) on each shape's filled stack, for
each M and small batch: ``h_s @ W_s^T`` and its transpose ``W_s @ h_s^T``
(``feature_major``), with their largest relative difference. The package takes
the feature-major layout on CPU up to ``pmd.CPU_FEATURE_MAJOR_MAX_BATCH`` rows.
"""

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from rllib_staq import pmd
from rllib_staq.torch.default_staq_torch_rl_module import (
    DefaultStaQTorchRLModule,
    to_network_input,
)
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


# --------------------------------------------------------------------------- #
# Alternative forms of sum_s c_s Q_s(obs), same arguments as pmd.stacked_forward.
# --------------------------------------------------------------------------- #
def one_member_forward(obs, convs, denses, head_w, head_b, activation):
    """One network: convs ``(w [out, in, k, k], b, stride)``, denses ``(w, b)``."""
    features = obs
    for weight, bias, stride in convs:
        features = activation(F.conv2d(features, weight, bias, stride=stride))
    features = features.flatten(1)
    for weight, bias in denses:
        features = activation(F.linear(features, weight, bias))
    return F.linear(features, head_w, head_b)  # [B, A]


def loop_form(obs, convs, denses, head_w, head_b, coeffs, activation):
    total = 0.0
    for s in range(coeffs.shape[0]):
        member = one_member_forward(
            obs,
            [(w[s], b[s], stride) for w, b, stride in convs],
            [(w[s], b[s]) for w, b in denses],
            head_w[s],
            head_b[s],
            activation,
        )
        total = total + coeffs[s] * member
    return total


def vmap_form(obs, convs, denses, head_w, head_b, coeffs, activation):
    strides = [stride for _, _, stride in convs]

    def member(conv_params, dense_params, weight, bias):
        conv_layers = [(w, b, st) for (w, b), st in zip(conv_params, strides)]
        return one_member_forward(obs, conv_layers, dense_params, weight, bias, activation)

    conv_params = [(w, b) for w, b, _ in convs]
    per_member = torch.func.vmap(member)(conv_params, denses, head_w, head_b)  # [S, B, A]
    return torch.einsum("s,sba->ba", coeffs, per_member)


def bmm_form(obs, convs, denses, head_w, head_b, coeffs, activation):
    num_members = coeffs.shape[0]
    if convs:  # Grouped convolutions as in the fused form; only the dense part differs.
        features = pmd.stacked_conv_features(obs, convs, activation)  # [S, B, F]
    else:
        features = obs.unsqueeze(0).expand(num_members, *obs.shape)  # [S, B, D]
    for weight, bias in denses:
        features = activation(torch.baddbmm(bias.unsqueeze(1), features, weight.transpose(1, 2)))
    per_member = torch.baddbmm(head_b.unsqueeze(1), features, head_w.transpose(1, 2))
    return torch.einsum("s,sba->ba", coeffs, per_member)


FORMS = {
    "loop": loop_form,
    "vmap": vmap_form,
    "bmm": bmm_form,
    "batched": pmd.batched_stacked_forward,
    "member_loop": pmd.member_loop_stacked_forward,
    "package": pmd.stacked_forward,
}


def compare_forms(module, space, batches, device):
    """Times each form on the full stack of ``module``; ratios to ``package``."""
    fill = module.stack_fill
    rows = slice(0, fill * module.num_q_networks)
    convs, denses, (head_w, head_b) = module._stacked_layers(rows)
    coeffs = module.slot_decay[:fill].repeat_interleave(module.num_q_networks)
    print(f"{'form':>11} " + " ".join(f"{'batch ' + str(b):>34}" for b in batches))
    observations = {
        b: to_network_input(
            torch.as_tensor(np.stack([space.sample() for _ in range(b)]), device=device),
            module.image_input,
        )
        for b in batches
    }
    reference, times = {}, {}
    for name, form in FORMS.items():
        cells = []
        for b, obs in observations.items():
            args = (obs, convs, denses, head_w, head_b, coeffs, module.activation)
            with torch.no_grad():
                out = form(*args)
                reference.setdefault(b, out)  # the first form, `loop`
                deviation = ((out - reference[b]).abs().max() / reference[b].abs().max()).item()
                t = seconds_per_call(lambda: form(*args), device=device)
            times.setdefault(b, {})[name] = t
            cells.append(f"{t * 1e3:9.3f} ms (rel.dev {deviation:.0e})")
        print(f"{name:>11} " + " ".join(f"{c:>34}" for c in cells))
    for b in batches:
        ratios = ", ".join(
            f"{name} {times[b][name] / times[b]['package']:.2f}x"
            for name in FORMS
            if name != "package"
        )
        print(f"batch {b}: time relative to the package's choice: {ratios}")


def compare_dense_layouts(space, actions, stack_sizes, batches, device):
    """ms per call of each hidden dense layer of the stack in both layouts."""
    header = ["M", "layer", "batch", "h @ W^T", "W @ h^T", "ratio"]
    widths = [5, 12, 5, 10, 10, 7]
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, widths)) + " rel.dev")
    for m in stack_sizes:
        module = filled_module(space, actions, m, device)
        convs, denses, _ = module._stacked_layers(slice(0, m * module.num_q_networks))
        # The first dense layer of an MLP reads the shared input (one plain product).
        hidden_layers = denses if convs else denses[1:]
        for weight, bias in hidden_layers:
            layer = f"{weight.shape[2]}->{weight.shape[1]}"
            for b in batches:
                hidden = torch.rand(weight.shape[0], b, weight.shape[2], device=device)
                times, outs = {}, {}
                for feature_major in (False, True):
                    args = (hidden, weight, bias, feature_major)
                    with torch.no_grad():
                        outs[feature_major] = pmd.stacked_dense(*args)
                        times[feature_major] = seconds_per_call(
                            lambda: pmd.stacked_dense(*args), device=device
                        )
                deviation = (outs[True] - outs[False]).abs().max() / outs[False].abs().max()
                print(
                    f"{m:5d} {layer:>12} {b:5d} {times[False] * 1e3:10.3f} "
                    f"{times[True] * 1e3:10.3f} {times[False] / times[True]:6.2f}x "
                    f"{deviation.item():.0e}",
                    flush=True,
                )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["all", "dense-layout"], default="all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--stack-sizes", default="1,10,50,100,300")
    parser.add_argument("--batches", default="1,256,50000")
    parser.add_argument(
        "--form-batches",
        default=f"1,256,{LOGITS_CHUNK}",
        help="batches for the comparison of forms (one learner chunk at most)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    stack_sizes = [int(m) for m in args.stack_sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    print(f"device={args.device} torch threads={torch.get_num_threads()} chunk={LOGITS_CHUNK}")
    if args.part == "dense-layout":
        for name, (space, actions) in SHAPES.items():
            print(f"\n{name}: the members' hidden dense layers, ms per call")
            compare_dense_layouts(space, actions, stack_sizes, [1, 2, 4, 8, 16], args.device)
        return
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
            member_params = sum(p.numel() for p in module.q_nets[0].parameters())
            print(
                f"      stack memory: {m} x 2 x {member_params} params x 4 B = "
                f"{m * 2 * member_params * 4 / 2**20:.1f} MiB"
            )
        print(
            f"\nForms of the stacked forward at M={stack_sizes[-1]} ({name}), "
            "loop = official code's form"
        )
        compare_forms(module, space, [int(b) for b in args.form_batches.split(",")], args.device)


if __name__ == "__main__":
    main()
