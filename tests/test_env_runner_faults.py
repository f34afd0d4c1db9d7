"""EnvRunner failures under RLlib's fault tolerance (issue 14, item 4).

An env raises (or its process dies) on a given step of a remote EnvRunner:

* the iteration in which every EnvRunner failed completes without new data
  (no FQI phase, no push; before, ``Learner.update`` raised an
  ``UnboundLocalError`` on the empty batch, also under RLlib's default
  ``restart_failed_env_runners=True``);
* RLlib restarts the runner (``Algorithm.restore_env_runners``, before the next
  ``training_step``), and the new runner acts with the current stack at once,
  not with the empty stack of a fresh module; the same for evaluation runners;
* nothing of the learner is lost: stack, counters, table, optimizer state;
* without ``restart_failed_env_runners`` the iteration fails with RLlib's error.

What the runners acted with is read from the episodes: every acting step
records the version (``num_pushes``) of the stack behind it (``STACK_VERSION``),
which a callback reports per iteration. Multi-process: marked ``slow``.
"""

import os
import sys

import gymnasium as gym
import numpy as np
import pytest
import ray
import torch
from ray.rllib.callbacks.callbacks import RLlibCallback

from rllib_staq.staq_learner import NEXT_STACK_SUM, STACK_VERSION

from conftest import tiny_config

pytestmark = pytest.mark.slow

MODULE_ID = "default_policy"
# Iterations to wait for Ray to bring a failed runner back (each one returns at
# once while no runner is healthy); a bound on the loop, not a timing assert.
MAX_WAIT_ITERATIONS = 100
# Remote EnvRunners cannot import this test module: send its classes by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class FailOnceEnv(gym.Env):
    """10-step episodes; at step ``fail_step`` of its life the env raises (``mode``
    "raise") or kills its process ("exit"), unless ``marker`` exists: so only the
    first EnvRunner fails, and the restarted one runs on."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, config=None):
        super().__init__()
        self.config = dict(config or {})
        self.steps = 0
        self.episode_steps = 0

    def reset(self, *, seed=None, options=None):
        self.episode_steps = 0
        return np.zeros(4, np.float32), {}

    def step(self, action):
        self.steps += 1
        self.episode_steps += 1
        marker = self.config.get("marker")
        if marker and self.steps == self.config["fail_step"] and not os.path.exists(marker):
            open(marker, "w").close()
            if self.config.get("mode") == "exit":
                os._exit(1)
            raise RuntimeError("FailOnceEnv broke on purpose")
        obs = np.full(4, 0.1 * action, np.float32)
        return obs, 1.0, self.episode_steps >= 10, False, {}


class RecordActingStack(RLlibCallback):
    """Reports the lowest and highest stack version that acted in the iteration's episodes."""

    def on_episode_end(self, *, episode, metrics_logger, **kwargs):
        versions = np.asarray(episode.get_extra_model_outputs(STACK_VERSION))
        metrics_logger.log_value("acting_stack_min", int(versions.min()), reduce="min")
        metrics_logger.log_value("acting_stack_max", int(versions.max()), reduce="max")


def _fault_tolerant(config, restart=True):
    return config.callbacks(RecordActingStack).fault_tolerance(
        restart_failed_env_runners=restart,
        max_num_env_runner_restarts=2,
        delay_between_env_runner_restarts_s=0.0,
    )


def _learner(algo):
    return algo.learner_group._learner


def _snapshot(algo):
    """Everything of the learner a failed EnvRunner must not touch (copies)."""
    learner = _learner(algo)
    module = learner.module[MODULE_ID].unwrapped()
    table = learner._tables[MODULE_ID]
    return {
        "module": {k: v.clone() for k, v in module.state_dict().items()},
        "table": {k: table.filled(k).clone() for k in table.columns},
        "optimizer": learner.get_state(components="optimizer")["optimizer"],
    }


def _optimizer_steps(optimizer_state):
    """Adam's per-parameter step counts, from the learner's optimizer state."""
    steps = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "step":
                    steps.append(float(np.asarray(value)))
                else:
                    walk(value)

    walk(optimizer_state)
    assert steps, "no Adam step counts in the optimizer state"
    return steps


def _assert_nothing_lost(before, after, new_rows=0, new_grad_steps=0):
    for key, value in before["table"].items():
        assert after["table"][key].shape[0] == value.shape[0] + new_rows, key
        # The old transitions are all kept (capacity 1000 > rows sampled here);
        # a push updates their cached next-state stack sums.
        if new_rows == 0 or key != NEXT_STACK_SUM:
            torch.testing.assert_close(after["table"][key][: value.shape[0]], value, msg=key)
    counters = ("num_pushes", "num_grad_steps")
    for name, value in before["module"].items():
        if new_rows == 0:
            torch.testing.assert_close(after["module"][name], value, msg=name)
    if new_rows:
        assert int(after["module"]["num_pushes"]) == int(before["module"]["num_pushes"]) + 1
        assert int(after["module"]["num_grad_steps"]) == (
            int(before["module"]["num_grad_steps"]) + new_grad_steps
        )
    else:
        for name in counters:
            assert int(after["module"][name]) == int(before["module"][name])
    # Adam continues from its state: every step count grew by the new steps only.
    steps_before, steps_after = (_optimizer_steps(s["optimizer"]) for s in (before, after))
    assert steps_after == [s + new_grad_steps for s in steps_before]


def _train_until_restored(algo, env_runner_group):
    for _ in range(MAX_WAIT_ITERATIONS):
        result = algo.train()
        if env_runner_group.num_healthy_remote_workers() == env_runner_group.num_remote_workers():
            return result
    raise AssertionError(f"no EnvRunner restored within {MAX_WAIT_ITERATIONS} iterations")


@pytest.mark.parametrize(
    "mode, local_env_runner",
    [("raise", True), ("exit", True), ("raise", False)],
    ids=["env-raises", "process-dies", "env-raises-no-local-runner"],
)
def test_restarted_env_runner_acts_with_the_current_stack(
    ray_session, tmp_path, mode, local_env_runner
):
    """``local_env_runner``: RLlib restores from the local EnvRunner's state, or
    (``create_local_env_runner=False``) from the learner group's."""
    env_config = {"marker": str(tmp_path / "failed"), "fail_step": 150, "mode": mode}
    config = _fault_tolerant(
        tiny_config()
        .environment(FailOnceEnv, env_config=env_config)
        .env_runners(num_env_runners=1, create_local_env_runner=local_env_runner)
    )
    algo = config.build_algo()
    try:
        algo.train()  # env steps 1-100: one push
        before = _snapshot(algo)

        # Steps 101-150: the runner dies at 150; the iteration completes without data.
        result = algo.train()
        assert os.path.exists(env_config["marker"])
        assert algo.env_runner_group.num_healthy_remote_workers() == 0
        assert result["num_env_steps_sampled_lifetime"] == 100
        _assert_nothing_lost(before, _snapshot(algo))

        # RLlib brings the runner back before a training step; the first one
        # after that samples 100 steps with the current stack (version 1).
        result = _train_until_restored(algo, algo.env_runner_group)
        assert result["env_runners"]["acting_stack_min"] == 1
        assert result["env_runners"]["acting_stack_max"] == 1
        assert result["num_env_steps_sampled_lifetime"] == 200
        # The learner reused the acting outputs: only the episode ends (1 row
        # in 10 here) needed a stack pass; an empty acting stack makes it 1.0.
        passes = result["learners"][MODULE_ID]["next_state_rows_needing_stack_pass"]
        assert passes == pytest.approx(0.1)
        _assert_nothing_lost(before, _snapshot(algo), new_rows=100, new_grad_steps=10)

        # And on: the runner keeps acting with each new stack.
        result = algo.train()
        assert result["env_runners"]["acting_stack_min"] == 2
        assert int(_learner(algo).module[MODULE_ID].unwrapped().num_pushes) == 3
    finally:
        algo.stop()


def test_restarted_evaluation_env_runner_acts_with_the_current_stack(ray_session, tmp_path):
    # 2 greedy episodes (20 env steps) per evaluation: the second evaluation fails at step 25.
    eval_env_config = {"marker": str(tmp_path / "failed"), "fail_step": 25, "mode": "raise"}
    config = _fault_tolerant(
        tiny_config()
        .environment(FailOnceEnv)
        .evaluation(
            evaluation_interval=1,
            evaluation_num_env_runners=1,
            evaluation_duration=2,
            evaluation_duration_unit="episodes",
            evaluation_config={"explore": False, "env_config": eval_env_config},
        )
    )
    algo = config.build_algo()
    try:
        result = algo.train()
        # Evaluation runs after the iteration's push: the stack of version 1.
        assert result["evaluation"]["env_runners"]["acting_stack_min"] == 1
        result = algo.train()
        assert os.path.exists(eval_env_config["marker"])
        assert algo.eval_env_runner_group.num_healthy_remote_workers() == 0
        # Training goes on while the evaluation runner is down.
        assert result["env_runners"]["acting_stack_min"] == 1

        result = _train_until_restored(algo, algo.eval_env_runner_group)
        num_pushes = int(_learner(algo).module[MODULE_ID].unwrapped().num_pushes)
        assert num_pushes > 2
        evaluation = result["evaluation"]["env_runners"]
        assert evaluation["acting_stack_min"] == evaluation["acting_stack_max"] == num_pushes
    finally:
        algo.stop()


def test_without_restarts_the_iteration_fails_and_the_learner_is_kept(ray_session, tmp_path):
    env_config = {"marker": str(tmp_path / "failed"), "fail_step": 150, "mode": "raise"}
    config = _fault_tolerant(
        tiny_config()
        .environment(FailOnceEnv, env_config=env_config)
        .env_runners(num_env_runners=1),
        restart=False,
    )
    algo = config.build_algo()
    try:
        algo.train()
        before = _snapshot(algo)
        # RLlib's error: the runner's process ended (the env's traceback is in its log).
        with pytest.raises(ray.exceptions.RayActorError):
            algo.train()
        _assert_nothing_lost(before, _snapshot(algo))
    finally:
        algo.stop()
