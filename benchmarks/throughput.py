"""StaQ's iteration cost against M, acting cost, env-steps/s against RLlib's DQN and PPO, memory.

    python benchmarks/throughput.py                 # every part, paper-scale settings
    python benchmarks/throughput.py --part split --stack-sizes 1,50,300
    python benchmarks/throughput.py --part minatar-split --game Breakout --stack-sizes 1,50,300
    python benchmarks/throughput.py --part minatar-flops --game Breakout --stack-sizes 1,50,300
    python benchmarks/throughput.py --part acting --num-envs 1,4,16
    python benchmarks/throughput.py --part e2e --seconds 120
    python benchmarks/throughput.py --part memory --memory-iterations 50
    python benchmarks/throughput.py --part optimizer
    python benchmarks/throughput.py --part fqi-step --iterations 6
    python benchmarks/throughput.py --part sb3 --seconds 60 --rounds 3   # needs .[bench]
    python benchmarks/throughput.py --part final-eval --game Freeway --stack-sizes 50

Everything is measured side by side in one run, so ratios are comparable on a
noisy machine. Parts:

* ``split``: steady-state StaQ iteration time split into sampling / next-state
  logits / FQI / push / sync for each M, with a pre-filled stack (M pushes of
  perturbed copies, no training) and a pre-filled replay table (random-policy
  transitions), so M=300 is measured without 300 iterations first. The paper's
  MLP config: 5000 env steps and 5000 gradient steps of 256 per iteration, two
  ensemble members, 2x256 ReLU.
* ``minatar-split``: the same split for the CNN path, at the MinAtar tuned
  example's settings (``tuned_examples/minatar_staq.py``: 1000 env steps and
  250 gradient steps per iteration, 16 vector envs) with only M changed, a
  pre-filled stack and a replay table pre-filled with random-policy
  transitions of ``--game``; ``--stack-dtypes float32,bfloat16`` adds the
  EnvRunners' bf16 acting stack (``stack_dtype``), each M against float32 M=1.
* ``minatar-flops``: the compute bound behind ``minatar-split``'s acting cost.
  torch's FLOP counter (``torch.utils.flop_counter``) counts one pass of the
  stack (a pre-filled M) on the tuned example's 16 observations per vector step
  and on a batch of 256; each pass is timed, so the table gives the FLOP rate
  acting reaches, next to this thread's rate on a large float32 matrix product
  and its memory read rate (the pass reads the whole stack once).
* ``acting``: EnvRunner time per env step against M and the number of vector envs.
* ``e2e``: env-steps/s on CartPole of StaQ (paper settings, with 1 env as the
  official code and with 16 vector envs), RLlib's DQN at the same
  update-to-data ratio and batch (one gradient step of 256 per env step) and
  RLlib's PPO (its CartPole settings), each after its warm-up. StaQ starts
  with an empty stack, so this measures early iterations.
* ``memory``: process RSS over many iterations with a full M=300 stack and a full
  replay table.
* ``optimizer``: FQI time per gradient step with the package's fused Adam
  against torch's default Adam (RLlib's default optimizer), alternating (both
  with autograd).
* ``fqi-step``: FQI time per gradient step with the package's gradients
  without autograd (``MlpFqiStep``) against autograd, alternating, for each of
  ``--fqi-matmul-dtypes`` (both with the fused Adam; the two train
  bit-identically).
* ``contention``: FQI phase and iteration time for each torch thread setting,
  on a quiet machine and beside ``--background-procs`` CPU-bound processes that
  the script starts and stops itself; each setting runs in a fresh process
  (OpenMP reads its wait policy once, at start-up).
* ``sb3``: env-steps/s of StaQ and Stable-Baselines3's DQN at equal settings
  (one 2x256 network, batch 256, one gradient step per env step, one thread,
  CPU), alternating timed segments of ``--seconds`` for ``--rounds`` rounds in
  this one process. SB3 is an optional benchmark dependency
  (``pip install -e '.[bench]'``); the part is skipped by ``all`` without it.
* ``final-eval``: the ``--no-tune`` final evaluation (``--eval-episodes`` greedy
  episodes of ``--game``, the MinAtar tuned example with a pre-filled stack of M)
  with its episodes one by one against side by side in one vector env, and
  whether both give the same returns. Freeway's episodes are always 2500 steps,
  so its timings do not depend on the (untrained) policy.

The learner and its stack go to the GPU when one is present (``--device auto``);
EnvRunners act on the CPU.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from typing import Dict, List

import gymnasium as gym
import numpy as np
import ray
import torch
from ray.rllib.algorithms.dqn import DQNConfig
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_TRAINED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)
from stack_cost import seconds_per_call

from rllib_staq import StaQConfig, pmd
from rllib_staq.settings import STACK_DTYPES
from rllib_staq.staq_learner import NUM_GRAD_STEPS_KEY
from rllib_staq.torch.staq_torch_learner import StaQTorchLearner

ENV = "CartPole-v1"
PARTS = [
    "split",
    "minatar-split",
    "minatar-flops",
    "acting",
    "e2e",
    "memory",
    "optimizer",
    "fqi-step",
    "contention",
    "sb3",
    "final-eval",
]
MLP = {"fcnet_hiddens": [256, 256], "fcnet_activation": "relu"}


# --------------------------------------------------------------------------- #
# Building and pre-filling StaQ.
# --------------------------------------------------------------------------- #
def staq_config(args, stack_size: int, env_steps: int, grad_steps: int, num_envs: int):
    config = (
        StaQConfig()
        .environment(ENV)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=num_envs)
        .rl_module(model_config=MLP)
        .training(
            stack_size=stack_size,
            env_steps_per_iteration=env_steps,
            grad_steps_per_iteration=grad_steps,
            train_batch_size_per_learner=256,
            num_q_networks=2,
        )
        .debugging(seed=0, log_level="ERROR")
        .reporting(metrics_num_episodes_for_smoothing=1)
    )
    if args.device == "cuda":
        config.learners(num_learners=0, num_gpus_per_learner=1)
    return config


def random_policy_transitions(num_rows: int, seed: int = 0, env=None) -> Dict[str, np.ndarray]:
    """``num_rows`` transitions of a uniform policy (replay pre-fill); CartPole by default."""
    env = env if env is not None else gym.make(ENV)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    columns = {key: [] for key in ("obs", "actions", "rewards", "terminateds", "next_obs")}
    for _ in range(num_rows):
        action = int(rng.integers(env.action_space.n))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(columns, (obs, action, reward, terminated, next_obs)):
            columns[key].append(value)
        obs = env.reset()[0] if terminated or truncated else next_obs
    return {key: np.asarray(values) for key, values in columns.items()}


def prefill(algo, replay_rows: int, stack_members: int, env=None) -> None:
    """A full replay table and ``stack_members`` pushes, without training.

    The table is filled first (empty stack: no stack pass). The pushes then
    write perturbed copies of the trainable ensemble straight into the stack;
    the cached next-state sums are not maintained for them (timing only).
    """
    learner = algo.learner_group._learner
    module = learner.module[DEFAULT_MODULE_ID].unwrapped()
    device = learner.device
    data = random_policy_transitions(replay_rows, env=env)
    learner.add_transitions(
        DEFAULT_MODULE_ID,
        {
            Columns.OBS: torch.as_tensor(data["obs"], device=device),
            Columns.ACTIONS: torch.as_tensor(data["actions"], device=device),
            Columns.REWARDS: torch.as_tensor(data["rewards"], device=device),
            Columns.TERMINATEDS: torch.as_tensor(data["terminateds"], device=device),
            Columns.NEXT_OBS: torch.as_tensor(data["next_obs"], device=device),
        },
    )
    alpha, beta = pmd.pmd_step_sizes(20.0, 2.0)
    with torch.no_grad():
        for _ in range(stack_members):
            for param in module.q_nets.parameters():
                param.add_(torch.randn_like(param), alpha=0.01)
            module.push_onto_stack(alpha, beta, 1.0)
    algo.env_runner_group.sync_weights(
        from_worker_or_learner_group=algo.learner_group, inference_only=True
    )


# --------------------------------------------------------------------------- #
# Parts.
# --------------------------------------------------------------------------- #
SPLIT_COLUMNS = ("sampling", "next_logits", "fqi", "push", "sync", "other", "total")


def iteration_split(result: Dict, wall_seconds: float) -> Dict[str, float]:
    learner = result[LEARNER_RESULTS][DEFAULT_MODULE_ID]
    split = {
        "sampling": result[TIMERS][ENV_RUNNER_SAMPLING_TIMER],
        "next_logits": learner["next_state_logits_timer"],
        "fqi": learner["fqi_phase_timer"],
        "push": learner["push_timer"],
        "sync": result[TIMERS][SYNCH_WORKER_WEIGHTS_TIMER],
    }
    split["other"] = wall_seconds - sum(split.values())
    split["total"] = wall_seconds
    return split


def run_split(args) -> None:
    print(
        f"\n## Iteration split (s), {args.env_steps} env steps + {args.grad_steps} grad steps "
        f"of 256, E=2, 2x256 MLP, {args.split_num_envs} envs, replay {args.replay_fill}, "
        f"learner on {args.device}; mean of {args.iterations} iterations after 1 warm-up"
    )

    def build(stack_size: int):
        return staq_config(
            args, stack_size, args.env_steps, args.grad_steps, args.split_num_envs
        ).build_algo()

    print_split_table(args, build, env_factory=None)


def minatar_config(args, stack_size: int, stack_dtype: str = "float32") -> StaQConfig:
    """The MinAtar tuned example's config with only M and ``stack_dtype`` changed, no evaluation."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tuned_examples")
    spec = importlib.util.spec_from_file_location("minatar_staq", f"{path}/minatar_staq.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    config = example.build_config(game=args.game)
    config.training(stack_size=stack_size, stack_dtype=stack_dtype)
    config.evaluation(evaluation_interval=None)
    config.debugging(seed=0, log_level="ERROR")
    if args.device == "cuda":
        config.learners(num_learners=0, num_gpus_per_learner=1)
    return config


def minatar_missing(args, part_title: str) -> bool:
    """True (after saying so) when the minatar extra is absent and ``all`` skips the part."""
    import importlib.util

    if importlib.util.find_spec("minatar") is not None:
        return False
    missing = "Needs the minatar extra: pip install -e '.[minatar]'."
    if args.part != "all":
        raise SystemExit(missing)
    print(f"\n## {part_title}: skipped. {missing}")
    return True


def run_minatar_split(args) -> None:
    if minatar_missing(args, "MinAtar iteration split"):
        return
    probe = minatar_config(args, 1)
    print(
        f"\n## MinAtar {args.game} iteration split (s), the tuned example: "
        f"{probe.env_steps_per_iteration} env steps + {probe.grad_steps_per_iteration} grad steps "
        f"of {probe.train_batch_size_per_learner}, E={probe.num_q_networks}, CNN, "
        f"{probe.num_envs_per_env_runner} envs, replay {args.replay_fill}, learner on "
        f"{args.device}; mean of {args.iterations} iterations after 1 warm-up"
    )

    def env_factory(algo):
        return algo.env_creator(dict(algo.config.env_config))

    baseline = None  # float32 (the first dtype) at the first M, for every table
    for stack_dtype in args.stack_dtypes:
        if len(args.stack_dtypes) > 1:
            print(f"\nstack_dtype={stack_dtype} (ratios against {args.stack_dtypes[0]})")

        def build(stack_size: int, stack_dtype=stack_dtype):
            return minatar_config(args, stack_size, stack_dtype).build_algo()

        baseline = print_split_table(args, build, env_factory, baseline)


def run_minatar_flops(args) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    if minatar_missing(args, "MinAtar acting FLOPs"):
        return
    probe = minatar_config(args, 1)
    forwards_per_iteration = probe.env_steps_per_iteration / probe.num_envs_per_env_runner
    print(
        f"\n## MinAtar {args.game}: FLOPs of one pass of the stack (E={probe.num_q_networks}, "
        f"CNN, float32, learner's module on {args.device}), timed; acting in the tuned example "
        f"is {forwards_per_iteration:g} passes of {probe.num_envs_per_env_runner} observations "
        "per iteration"
    )
    print(
        "| M | batch | GFLOP per pass | stack MiB read per pass | ms per pass | GFLOP/s | "
        "acting GFLOP per iteration |"
    )
    print("|---|---|---|---|---|---|---|")
    for stack_size in args.stack_sizes:
        algo = minatar_config(args, stack_size).build_algo()
        try:
            env = algo.env_creator(dict(algo.config.env_config))
            prefill(algo, 1000, stack_size + 1, env=env)
            module = algo.learner_group._learner.module[DEFAULT_MODULE_ID].unwrapped()
            observations = random_policy_transitions(256, seed=1, env=env)["obs"]
            rows = module.stack_fill * module.num_q_networks
            stack_mib = (
                sum(module.stack_buffer(name)[:rows].nbytes for name in module.param_names) / 2**20
            )
            for batch in (probe.num_envs_per_env_runner, 256):
                obs = torch.as_tensor(observations[:batch], device=module.slot_decay.device)
                with torch.no_grad():
                    with FlopCounterMode(display=False) as counter:
                        module.unscaled_stack_sum(obs)
                    seconds = seconds_per_call(
                        functools.partial(module.unscaled_stack_sum, obs), 1.0, args.device
                    )
                gflop = counter.get_total_flops() / 1e9
                per_iteration = (
                    f"{gflop * forwards_per_iteration:.1f}"
                    if batch == probe.num_envs_per_env_runner
                    else "-"
                )
                print(
                    f"| {stack_size} | {batch} | {gflop:.3f} | {stack_mib:.1f} | "
                    f"{seconds * 1e3:.2f} | "
                    f"{gflop / seconds:.1f} | {per_iteration} |",
                    flush=True,
                )
        finally:
            algo.stop()
    size = 2048
    a, b = (torch.randn(size, size, device=args.device) for _ in range(2))
    seconds = seconds_per_call(lambda: a @ b, 1.0, args.device)
    print(
        f"\nOn {torch.get_num_threads()} thread(s): float32 matrix product "
        f"{size}x{size}x{size}: {2 * size**3 / seconds / 1e9:.1f} GFLOP/s"
    )
    # Reading memory: a sum over 256 MiB, far larger than any cache.
    values = torch.ones(64 * 2**20, device=args.device)
    seconds = seconds_per_call(values.sum, 1.0, args.device)
    print(f"sum over 256 MiB of float32: {values.nbytes / seconds / 2**30:.1f} GiB/s read")


def print_split_table(args, build, env_factory, baseline=None) -> float:
    """One row per M: the mean split of ``--iterations`` iterations after a warm-up.

    Ratios are against ``baseline`` (seconds), or else this table's first M; returns
    the baseline used.
    """
    print("| M | " + " | ".join(SPLIT_COLUMNS) + " | total / baseline total |")
    print("|---" * (len(SPLIT_COLUMNS) + 2) + "|")
    for stack_size in args.stack_sizes:
        algo = build(stack_size)
        try:
            env = env_factory(algo) if env_factory else None
            # +1 push when M pushes would land the rolling refresh on window 0
            # twice; any offset is a steady state, this one is the same for all M.
            prefill(algo, args.replay_fill, stack_size + 1, env=env)
            algo.train()  # warm-up (allocations, first sync)
            splits = []
            for _ in range(args.iterations):
                start = time.perf_counter()
                result = algo.train()
                splits.append(iteration_split(result, time.perf_counter() - start))
        finally:
            algo.stop()
        mean = {key: float(np.mean([s[key] for s in splits])) for key in SPLIT_COLUMNS}
        baseline = baseline or mean["total"]
        cells = " | ".join(f"{mean[key]:.2f}" for key in SPLIT_COLUMNS)
        print(f"| {stack_size} | {cells} | {mean['total'] / baseline:.2f}x |", flush=True)
    return baseline


def run_final_eval(args) -> None:
    from rllib_staq.evaluation import greedy_episode_returns

    if minatar_missing(args, "Final evaluation"):
        return
    print(
        f"\n## Final evaluation of the --no-tune runs: {args.eval_episodes} greedy episodes of "
        f"MinAtar {args.game}, full stack of M (CNN), CPU, {torch.get_num_threads()} torch threads"
    )
    print("| M | one by one (s) | side by side (s) | one by one / side by side | same returns |")
    print("|---|---|---|---|---|")
    for stack_size in args.stack_sizes:
        algo = minatar_config(args, stack_size).build_algo()
        try:
            make_env = functools.partial(algo.env_creator, dict(algo.config.env_config))
            prefill(algo, 1000, stack_size, env=make_env())
            module = algo.get_module()
            seconds, returns = {}, {}
            for name, max_in_parallel in (("one by one", 1), ("side by side", args.eval_episodes)):
                start = time.perf_counter()
                returns[name] = greedy_episode_returns(
                    module, make_env, args.eval_episodes, 0, max_in_parallel=max_in_parallel
                )
                seconds[name] = time.perf_counter() - start
        finally:
            algo.stop()
        ratio = seconds["one by one"] / seconds["side by side"]
        same = returns["one by one"] == returns["side by side"]
        print(
            f"| {stack_size} | {seconds['one by one']:.1f} | {seconds['side by side']:.1f} | "
            f"{ratio:.1f}x | {same} |",
            flush=True,
        )


def run_acting(args) -> None:
    print(
        "\n## Acting: EnvRunner milliseconds per env step (explore=True, CPU, "
        f"{torch.get_num_threads()} torch threads), full stack of M x 2 members"
    )
    print("| M | " + " | ".join(f"{n} envs" for n in args.num_envs) + " |")
    print("|---" * (len(args.num_envs) + 1) + "|")
    for stack_size in args.stack_sizes:
        cells = []
        for num_envs in args.num_envs:
            algo = staq_config(args, stack_size, 1000, 1, num_envs).build_algo()
            try:
                prefill(algo, 1000, stack_size)
                runner = algo.env_runner
                steps = args.acting_forwards * num_envs
                runner.sample(num_timesteps=num_envs * 10, random_actions=False)  # warm-up
                start = time.perf_counter()
                runner.sample(num_timesteps=steps, random_actions=False)
                cells.append(1000 * (time.perf_counter() - start) / steps)
            finally:
                algo.stop()
        print(f"| {stack_size} | " + " | ".join(f"{c:.3f}" for c in cells) + " |", flush=True)


def env_steps_per_second(algo, seconds: float, warmup_env_steps: int) -> Dict[str, float]:
    """Trains past ``warmup_env_steps``, then measures over at least ``seconds``."""
    result = algo.train()
    while result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME] < warmup_env_steps:
        result = algo.train()
    steps0 = result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME]
    trained0 = _trained(result)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        result = algo.train()
    elapsed = time.perf_counter() - start
    steps = result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME] - steps0
    return {
        "env_steps_per_s": steps / elapsed,
        "trained_per_env_step": (_trained(result) - trained0) / max(steps, 1),
        "env_steps": steps,
        "seconds": elapsed,
    }


def _trained(result) -> float:
    """Replayed items trained on so far (gradient steps x 256 for StaQ).

    RLlib counts the batch given to each ``update()``: DQN's replayed minibatch,
    but StaQ's new transitions, so StaQ's count comes from its step counter.
    """
    learner = result.get(LEARNER_RESULTS, {})
    if NUM_GRAD_STEPS_KEY in learner.get(DEFAULT_MODULE_ID, {}):
        return learner[DEFAULT_MODULE_ID][NUM_GRAD_STEPS_KEY] * 256
    return learner.get("__all_modules__", {}).get(NUM_ENV_STEPS_TRAINED_LIFETIME, 0)


def run_e2e(args) -> None:
    dqn = (
        DQNConfig()
        .environment(ENV)
        .env_runners(num_env_runners=0, rollout_fragment_length=4)
        .rl_module(model_config={**MLP, "head_fcnet_hiddens": []})
        .training(
            train_batch_size_per_learner=256,
            # Replayed items per sampled step: 256 = one batch of 256 per env step.
            training_intensity=256,
            num_steps_sampled_before_learning_starts=1000,
            lr=1e-4,
            replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": 50_000},
            double_q=True,
            dueling=False,
        )
        .debugging(seed=0, log_level="ERROR")
    )
    ppo = (
        PPOConfig()
        .environment(ENV)
        .env_runners(num_env_runners=0)
        .rl_module(model_config={**MLP, "vf_share_layers": True})
        .training(lr=3e-4, num_epochs=6, vf_loss_coeff=0.01)
        .debugging(seed=0, log_level="ERROR")
    )
    if args.device == "cuda":
        for config in (dqn, ppo):
            config.learners(num_learners=0, num_gpus_per_learner=1)
    runs = [
        ("DQN (1 grad step of 256 per env step)", dqn, 1000),
        (
            "StaQ (M=300, 5000+5000/iter, 1 env)",
            staq_config(args, 300, args.env_steps, args.grad_steps, 1),
            args.env_steps,
        ),
        (
            "StaQ (M=300, 5000+5000/iter, 16 vector envs)",
            staq_config(args, 300, args.env_steps, args.grad_steps, 16),
            args.env_steps,
        ),
        ("PPO (RLlib CartPole settings)", ppo, 4000),
    ]
    print(
        f"\n## End-to-end CartPole env-steps/s (each measured over >= {args.seconds:.0f} s "
        f"after its warm-up; learner on {args.device})"
    )
    print("| algorithm | env-steps/s | grad-step batches of 256 per env step | ratio to DQN |")
    print("|---|---|---|---|")
    rates = {}
    for name, config, warmup in runs:
        algo = config.build_algo()
        try:
            rates[name] = env_steps_per_second(algo, args.seconds, warmup)
        finally:
            algo.stop()
    dqn_rate = rates[runs[0][0]]["env_steps_per_s"]
    for name, rate in rates.items():
        # RLlib counts trained items; one gradient step of 256 trains 256.
        batches = rate["trained_per_env_step"] / 256
        print(
            f"| {name} | {rate['env_steps_per_s']:.1f} | {batches:.2f} | "
            f"{rate['env_steps_per_s'] / dqn_rate:.2f}x |",
            flush=True,
        )


def rss_megabytes() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_memory(args) -> None:
    """RSS over ``--memory-iterations`` iterations with a full stack and full replay.

    RLlib's episode buffer stores every sampled step (observations and the
    module's extra outputs as Python episode objects) until it holds its
    capacity, so RSS grows while it fills. The part therefore sizes the replay
    (RLlib buffer and learner table) with ``--memory-replay-capacity``, trains
    until the RLlib buffer has evicted an episode (it is full), and measures
    the iterations after that.
    """
    stack_size = 300
    capacity = args.memory_replay_capacity
    config = staq_config(args, stack_size, 200, 50, 1).training(
        replay_buffer_config={"capacity": capacity}
    )
    algo = config.build_algo()
    try:
        prefill(algo, capacity, stack_size)
        module = algo.learner_group._learner.module[DEFAULT_MODULE_ID].unwrapped()
        stack_params = sum(module.stack_buffer(name).numel() for name in module.param_names)
        stack_mib = stack_params * 4 / 2**20
        print(
            f"\n## Memory: full M={stack_size} stack = {stack_size} x 2 members x "
            f"{stack_params // (2 * stack_size):,} parameters x 4 bytes = {stack_mib:.0f} MiB "
            f"(learner; an inference-only EnvRunner holds one more copy)"
        )
        # The learner's table is StaQ's only replay copy: a ring allocated at its
        # capacity on the first add, full after the pre-fill.
        table = algo.learner_group._learner._table(DEFAULT_MODULE_ID)
        print(f"replay table full after the pre-fill ({table.size} of {table.capacity} rows)")
        readings: List[float] = []
        for iteration in range(1, args.memory_iterations + 1):
            algo.train()
            readings.append(rss_megabytes())
            if (
                iteration in (1, 10, 25)
                or iteration % 50 == 0
                or iteration == args.memory_iterations
            ):
                print(f"iteration {iteration:3d}: RSS {readings[-1]:.0f} MiB", flush=True)
        print(
            f"RSS from iteration 1 to {len(readings)}: {readings[-1] - readings[0]:+.1f} MiB "
            f"(min {min(readings):.0f}, max {max(readings):.0f})"
        )
    finally:
        algo.stop()


class DefaultAdamStaQLearner(StaQTorchLearner):
    """StaQ's learner with RLlib's default optimizer (torch's default Adam)."""

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        TorchLearner.configure_optimizers_for_module(self, module_id, config)


class AutogradStaQLearner(StaQTorchLearner):
    """StaQ's learner with its FQI gradients from autograd (no ``MlpFqiStep``)."""

    def _mlp_fqi_step(self, module_id, flat_adam):
        return None


def alternate_learners(args, title: str, variants: Dict[str, tuple], baseline: str) -> None:
    """FQI ms per gradient step of each (learner class, training settings), one
    1000-step iteration per round, alternating (batch 256, E=2, 2x256 MLP, a
    pre-filled replay); ratios to ``baseline``."""
    grad_steps = 1000
    print(
        f"\n## FQI ms per gradient step (batch 256, E=2, 2x256 MLP, replay {args.replay_fill}, "
        f"learner on {args.device}): {title}; {args.iterations} rounds of one "
        f"{grad_steps}-step iteration each, alternating"
    )
    algos = {}
    for name, (learner_class, settings) in variants.items():
        config = staq_config(args, 1, grad_steps, grad_steps, 1)
        algos[name] = config.training(learner_class=learner_class, **settings).build_algo()
    try:
        for algo in algos.values():
            prefill(algo, args.replay_fill, 1)
            algo.train()  # warm-up
        fqi_ms = {name: [] for name in algos}
        for _ in range(args.iterations):
            for name, algo in algos.items():
                learner = algo.train()[LEARNER_RESULTS][DEFAULT_MODULE_ID]
                fqi_ms[name].append(1000 * learner["fqi_phase_timer"] / grad_steps)
    finally:
        for algo in algos.values():
            algo.stop()
    print(f"| learner | FQI ms per gradient step (mean ± std) | ratio to {baseline} |")
    print("|---|---|---|")
    reference = float(np.mean(fqi_ms[baseline]))
    for name, values in fqi_ms.items():
        print(
            f"| {name} | {np.mean(values):.3f} ± {np.std(values):.3f} | "
            f"{np.mean(values) / reference:.2f}x |"
        )


def run_optimizer(args) -> None:
    variants = {
        "fused Adam (package)": (AutogradStaQLearner, {}),
        "default Adam": (DefaultAdamStaQLearner, {}),
    }
    title = "fused Adam vs torch's default Adam (both with autograd)"
    alternate_learners(args, title, variants, "default Adam")


def run_fqi_step(args) -> None:
    variants = {}
    for dtype in args.fqi_matmul_dtypes:
        settings = {"fqi_matmul_dtype": dtype}
        variants[f"MlpFqiStep (package), {dtype}"] = (StaQTorchLearner, settings)
        variants[f"autograd, {dtype}"] = (AutogradStaQLearner, settings)
    title = "gradients without autograd (MlpFqiStep) vs autograd, by fqi_matmul_dtype"
    alternate_learners(args, title, variants, "autograd, float32")
    print("\nThe matrix products of one such step alone (the floor for any step):")
    for dtype in args.fqi_matmul_dtypes:
        products = fqi_step_products(num_members=2, dtype=getattr(torch, dtype))
        print(f"- {dtype}: {1000 * seconds_per_call(products, min_time=2.0):.3f} ms")


def fqi_step_products(num_members: int, dtype, batch=256, inputs=4, hidden=256, actions=2):
    """The matrix products of one FQI step of a 2-hidden-layer MLP ensemble, on random
    tensors: per member the target and training forwards (``addmm``) and the backward's
    weight and input gradients, the hidden-to-hidden ones in ``dtype`` (as
    ``fqi_matmul_dtype``)."""

    def rand(*shape, cast=torch.float32):
        return torch.randn(*shape).to(cast)

    obs, w1, b1 = rand(batch, inputs), rand(hidden, inputs), rand(hidden)
    h1, w2, b2 = (
        rand(batch, hidden, cast=dtype),
        rand(hidden, hidden, cast=dtype),
        rand(hidden, cast=dtype),
    )
    h2, w3, b3 = rand(batch, hidden), rand(actions, hidden), rand(actions)
    q_grad, h2_grad, h1_grad = (
        rand(batch, actions),
        rand(batch, hidden, cast=dtype),
        rand(batch, hidden),
    )

    def products():
        for _ in range(num_members):
            for _ in range(2):  # the target and the training forward
                torch.addmm(b1, obs, w1.t())
                torch.addmm(b2, h1, w2.t())
                torch.addmm(b3, h2, w3.t())
            torch.mm(q_grad.t(), h2)  # head: weight gradient
            torch.mm(q_grad, w3)  # head: input gradient
            torch.mm(h2_grad.t(), h1)  # hidden-to-hidden layer: weight gradient
            torch.mm(h2_grad, w2)  # hidden-to-hidden layer: input gradient
            torch.mm(h1_grad.t(), obs)  # first layer: weight gradient only

    return products


# label -> (intra_op_threads, extra environment variables)
THREAD_SETTINGS = {
    'package default ("auto": 1 thread)': ("auto", {}),
    "2 threads (torch's default on 2 cores)": (2, {}),
    "2 threads, OMP_WAIT_POLICY=PASSIVE": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "2 threads, GOMP_SPINCOUNT=10000": (2, {"GOMP_SPINCOUNT": "10000"}),
}
BURN_CPU = "while True: pass"


def contention_worker(args) -> None:
    """One thread setting in this fresh process: prints FQI and iteration seconds."""
    config = staq_config(args, 1, args.contention_steps, args.contention_steps, 1)
    setting = args.contention_threads
    config.training(
        intra_op_threads=None
        if setting == "none"
        else (int(setting) if setting.isdigit() else setting)
    )
    algo = config.build_algo()
    try:
        prefill(algo, args.replay_fill, 1)
        algo.train()  # warm-up
        fqi, total = [], []
        for _ in range(args.iterations):
            start = time.perf_counter()
            result = algo.train()
            total.append(time.perf_counter() - start)
            fqi.append(result[LEARNER_RESULTS][DEFAULT_MODULE_ID]["fqi_phase_timer"])
    finally:
        algo.stop()
    print(
        f"CONTENTION {torch.get_num_threads()} {np.mean(fqi):.4f} {np.mean(total):.4f}", flush=True
    )


def _time_setting(intra_op_threads, extra_env: Dict[str, str], args) -> tuple:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(extra_env)
    command = [
        sys.executable,
        __file__,
        "--part",
        "contention-worker",
        "--contention-threads",
        str(intra_op_threads).lower(),
        "--contention-steps",
        str(args.contention_steps),
        "--iterations",
        str(args.iterations),
        "--replay-fill",
        str(args.replay_fill),
        "--device",
        args.device,
    ]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    _, threads, fqi, total = next(
        line for line in output.splitlines() if line.startswith("CONTENTION")
    ).split()
    return int(threads), float(fqi), float(total)


def run_contention(args) -> None:
    import subprocess
    import sys

    print(
        f"\n## Contention: seconds per iteration of {args.contention_steps} env + "
        f"{args.contention_steps} gradient steps (M=1, E=2, 2x256 MLP, 1 env, replay "
        f"{args.replay_fill}), quiet vs beside {args.background_procs} CPU-bound process(es); "
        f"mean of {args.iterations} after a warm-up, each setting in a fresh process"
    )
    print(
        "| setting | threads | FQI quiet | FQI busy | FQI slowdown "
        "| iteration quiet | iteration busy | iteration slowdown |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, (intra_op_threads, extra_env) in THREAD_SETTINGS.items():
        threads, fqi_quiet, total_quiet = _time_setting(intra_op_threads, extra_env, args)
        burners = [
            subprocess.Popen([sys.executable, "-c", BURN_CPU]) for _ in range(args.background_procs)
        ]
        try:
            _, fqi_busy, total_busy = _time_setting(intra_op_threads, extra_env, args)
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()
        print(
            f"| {label} | {threads} | {fqi_quiet:.2f} | {fqi_busy:.2f} | "
            f"{fqi_busy / fqi_quiet:.2f}x | {total_quiet:.2f} | {total_busy:.2f} | "
            f"{total_busy / total_quiet:.2f}x |",
            flush=True,
        )


SB3_MISSING = (
    "--part sb3 needs Stable-Baselines3, an optional benchmark dependency: "
    "pip install -e '.[bench]' (stable-baselines3==2.9.2)."
)
SB3_EQUAL_SETTINGS = """Equal settings (CartPole-v1, CPU, 1 torch thread, one process):
- network: one 2x256 ReLU MLP Q-network and its target. StaQ: num_q_networks=1 and
  stack_size M=1, so acting is one network's forward per env step, as DQN's.
- updates: one gradient step on a batch of 256 per env step, Adam, replay of 50,000,
  target copy every 200 gradient steps. SB3: train_freq=1, gradient_steps=1 (with n envs:
  gradient_steps=-1, n steps per vector step), target_update_interval=200. StaQ:
  env_steps_per_iteration = grad_steps_per_iteration = {steps} (its iteration collects
  {steps} env steps, then takes {steps} gradient steps), train_batch_size_per_learner=256.
- exploration: epsilon 0.05 for both (SB3: exploration_initial_eps = final = 0.05; it skips
  the forward on random actions, StaQ samples its softmax at every step).
- what still differs: the losses (StaQ: MSE to a soft-SARSA target with a' ~ pi_k; SB3: Huber
  to the max target, grad-norm clipping at 10); SB3 reads its replay with numpy and copies
  each batch into torch; StaQ's replay is a tensor table inside its learner.
Both are timed after a warm-up (SB3: past learning_starts=1000; StaQ: 2 iterations)."""


class _TimedDQN:
    """SB3's DQN with the seconds spent in its gradient steps counted (built lazily)."""

    @staticmethod
    def build(num_envs: int, seed: int = 0):
        try:
            from stable_baselines3 import DQN
            from stable_baselines3.common.env_util import make_vec_env
        except ImportError:
            return None

        class TimedDQN(DQN):
            train_seconds = 0.0

            def train(self, gradient_steps: int, batch_size: int = 100) -> None:
                start = time.perf_counter()
                super().train(gradient_steps, batch_size)
                self.train_seconds += time.perf_counter() - start

        return TimedDQN(
            "MlpPolicy",
            make_vec_env(ENV, n_envs=num_envs, seed=seed),
            learning_rate=1e-4,
            buffer_size=50_000,
            learning_starts=1000,
            batch_size=256,
            train_freq=1,
            gradient_steps=1 if num_envs == 1 else -1,
            target_update_interval=200,
            exploration_initial_eps=0.05,
            exploration_final_eps=0.05,
            policy_kwargs={"net_arch": [256, 256]},
            device="cpu",
            seed=seed,
        )


# label -> config attributes set on top of the equal settings. "bf16": the learner's
# experimental `fqi_matmul_dtype` (hidden layers of the FQI passes under bf16 autocast).
SB3_STAQ_VARIANTS = {"default": {}, "bf16": {"fqi_matmul_dtype": "bfloat16"}}


def staq_equal_config(args, num_envs: int, variant: str):
    steps = args.sb3_staq_steps
    config = staq_config(args, 1, steps, steps, num_envs).training(
        num_q_networks=1, target_network_update_freq=200
    )
    return config.training(**SB3_STAQ_VARIANTS[variant]).debugging(seed=0)


def _staq_segment(algo, seconds: float) -> Dict[str, float]:
    result, start = None, time.perf_counter()
    steps0 = algo.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)
    fqi = 0.0
    while time.perf_counter() - start < seconds:
        result = algo.train()
        fqi += result[LEARNER_RESULTS][DEFAULT_MODULE_ID]["fqi_phase_timer"]
    elapsed = time.perf_counter() - start
    steps = result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME] - steps0
    grad_steps = steps  # one gradient step per env step
    return {"rate": steps / elapsed, "grad_ms": 1000 * fqi / grad_steps}


def _sb3_segment(model, seconds: float) -> Dict[str, float]:
    steps0, train0, start = model.num_timesteps, model.train_seconds, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.learn(total_timesteps=500, reset_num_timesteps=False)
    elapsed = time.perf_counter() - start
    steps = model.num_timesteps - steps0
    return {"rate": steps / elapsed, "grad_ms": 1000 * (model.train_seconds - train0) / steps}


def run_sb3(args) -> None:
    if _TimedDQN.build(1) is None:
        if args.part == "sb3":
            raise SystemExit(SB3_MISSING)
        print(f"\n## StaQ vs SB3: skipped. {SB3_MISSING}")
        return
    import stable_baselines3

    torch.set_num_threads(1)
    print(
        f"\n## StaQ vs Stable-Baselines3 {stable_baselines3.__version__} DQN, env-steps/s at "
        f"equal settings: {args.rounds} rounds of alternating segments of >= "
        f"{args.seconds:.0f} s each; load average at start {_load()}"
    )
    print(SB3_EQUAL_SETTINGS.format(steps=args.sb3_staq_steps))
    agents = {}  # label -> (segment function, object, stop function, SB3 label)
    try:
        for num_envs in args.sb3_envs:
            envs = f"{num_envs} env" + ("s" if num_envs > 1 else "")
            sb3_label = f"SB3 DQN, {envs}"
            for variant in args.sb3_staq_variants:
                algo = staq_equal_config(args, num_envs, variant).build_algo()
                agents[f"StaQ ({variant}), {envs}"] = (_staq_segment, algo, algo.stop, sb3_label)
                algo.train()
                algo.train()  # warm-up
            model = _TimedDQN.build(num_envs)
            model.learn(total_timesteps=1500)  # warm-up past learning_starts
            agents[sb3_label] = (_sb3_segment, model, lambda: None, sb3_label)
        rounds = {label: [] for label in agents}
        for _ in range(args.rounds):
            for label, (segment, agent, _, _) in agents.items():
                rounds[label].append(segment(agent, args.seconds))
    finally:
        for _, _agent, stop, _ in agents.values():
            stop()
    print(f"load average at end {_load()}")
    print(
        "| agent | env-steps/s per round | mean | ms per gradient step (mean) "
        "| ratio to SB3 (mean; per round min-max) |"
    )
    print("|---|---|---|---|---|")
    for label, (_, _, _, sb3_label) in agents.items():
        rates = [r["rate"] for r in rounds[label]]
        ratios = [r["rate"] / s["rate"] for r, s in zip(rounds[label], rounds[sb3_label])]
        grad_ms = np.mean([r["grad_ms"] for r in rounds[label]])
        ratio = np.mean(rates) / np.mean([s["rate"] for s in rounds[sb3_label]])
        print(
            f"| {label} | {', '.join(f'{r:.1f}' for r in rates)} | {np.mean(rates):.1f} | "
            f"{grad_ms:.2f} | {ratio:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |",
            flush=True,
        )


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="all", choices=["all", *PARTS, "contention-worker"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--stack-sizes", default="1,50,300")
    parser.add_argument("--game", default="Breakout", help="MinAtar game of `minatar-split`")
    parser.add_argument(
        "--stack-dtypes",
        default="float32",
        help="EnvRunner stack dtypes of `minatar-split`, float32 first (e.g. float32,bfloat16)",
    )
    parser.add_argument("--env-steps", type=int, default=5000)
    parser.add_argument("--grad-steps", type=int, default=5000)
    parser.add_argument(
        "--split-num-envs", type=int, default=16, help="vector envs per EnvRunner in the split"
    )
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations per M")
    parser.add_argument("--replay-fill", type=int, default=50_000)
    parser.add_argument("--num-envs", default="1,4,16", help="vector env counts for `acting`")
    parser.add_argument("--acting-forwards", type=int, default=200)
    parser.add_argument(
        "--eval-episodes", type=int, default=20, help="greedy episodes of `final-eval`"
    )
    parser.add_argument("--seconds", type=float, default=90.0, help="per algorithm in e2e")
    parser.add_argument("--memory-iterations", type=int, default=50)
    parser.add_argument(
        "--memory-replay-capacity",
        type=int,
        default=5000,
        help="replay capacity for `memory` (the table is pre-filled)",
    )
    parser.add_argument(
        "--background-procs",
        type=int,
        default=1,
        help="CPU-bound processes beside the timed one in `contention`",
    )
    parser.add_argument(
        "--contention-steps",
        type=int,
        default=500,
        help="env steps and gradient steps per iteration in `contention`",
    )
    parser.add_argument("--contention-threads", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds in `sb3`")
    parser.add_argument(
        "--fqi-matmul-dtypes",
        type=lambda text: text.split(","),
        default=["float32", "bfloat16"],
        help="fqi_matmul_dtype values compared by `fqi-step`",
    )
    parser.add_argument("--sb3-envs", default="1", help="env counts for `sb3` (e.g. 1,16)")
    parser.add_argument(
        "--sb3-staq-variants",
        default="default",
        help=f"StaQ variants for `sb3`, from {sorted(SB3_STAQ_VARIANTS)}",
    )
    parser.add_argument(
        "--sb3-staq-steps",
        type=int,
        default=1000,
        help="StaQ's env steps = gradient steps per iteration in `sb3`",
    )
    args = parser.parse_args()
    args.stack_sizes = [int(m) for m in args.stack_sizes.split(",")]
    args.num_envs = [int(n) for n in args.num_envs.split(",")]
    args.stack_dtypes = args.stack_dtypes.split(",")
    if args.stack_dtypes[0] != "float32" or not set(args.stack_dtypes) <= set(STACK_DTYPES):
        parser.error(f"--stack-dtypes: float32 first, then any of {STACK_DTYPES}")
    args.sb3_envs = [int(n) for n in args.sb3_envs.split(",")]
    args.sb3_staq_variants = args.sb3_staq_variants.split(",")
    unknown = sorted(set(args.sb3_staq_variants) - set(SB3_STAQ_VARIANTS))
    if unknown:
        parser.error(f"--sb3-staq-variants: unknown {unknown}; allowed {sorted(SB3_STAQ_VARIANTS)}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    if args.part == "contention":  # Each setting runs in its own process.
        return run_contention(args)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    if args.part == "contention-worker":
        try:
            return contention_worker(args)
        finally:
            ray.shutdown()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    try:
        parts = PARTS if args.part == "all" else [args.part]
        for part in parts:
            globals()[f"run_{part.replace('-', '_')}"](args)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
