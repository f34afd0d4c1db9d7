"""StaQ: Policy Mirror Descent with a finite stack of Q-functions (discrete actions).

Paper: "StaQ it! Growing neural networks for Policy Mirror Descent", Jobard et
al., arXiv 2506.13862. One training iteration (``StaQ.training_step``):

1. sample ``env_steps_per_iteration`` env steps with pi_k (epsilon-softmax),
2. add them to the replay buffer,
3. one ``learner_group.update``: the learner appends them to its transition
   table, computes pi_k's next-state logits once, runs ``grad_steps_per_iteration``
   FQI steps and pushes a frozen copy of the trainable Q-ensemble onto the stack,
4. sync the new stack to the EnvRunners once.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Dict, List, Optional, Type, Union

import gymnasium as gym

from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core import COMPONENT_LEARNER_GROUP
from ray.rllib.core.learner import Learner
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_AGENT_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    REPLAY_BUFFER_ADD_DATA_TIMER,
    REPLAY_BUFFER_RESULTS,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)
from ray.rllib.utils.typing import LearningRateOrSchedule

from rllib_staq import threads
from rllib_staq.staq_learner import ITERATION_TIMER

logger = logging.getLogger(__name__)

ENSEMBLE_TARGETS = ("mean", "min")
REPLAY_BUFFER_STATE_KEY = "staq_replay_buffer"
# How long a restore waits for an EnvRunner's earlier weight sync to finish.
RESTORE_SYNC_TIMEOUT_S = 60.0


class StaQConfig(AlgorithmConfig):
    """Configuration of :class:`StaQ`; defaults are those of the official code.

    .. testcode::

        from rllib_staq import StaQConfig

        config = (
            StaQConfig()
            .environment("CartPole-v1")
            .training(stack_size=50, env_steps_per_iteration=1000)
        )
        algo = config.build_algo()
        algo.train()
    """

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or StaQ)
        # fmt: off
        # __sphinx_doc_begin__
        self.stack_size = 300
        self.kl_coeff = 20.0
        self.entropy_coeff = [[0, 2.0], [500_000, 0.4]]
        self.scale_entropy_by_log_actions = True
        self.weight_correction = True
        self.epsilon = 0.05
        self.env_steps_per_iteration = 5000
        self.grad_steps_per_iteration = 5000
        self.train_batch_size_per_learner = 256
        self.lr = 1e-4
        self.gamma = 0.99
        self.target_network_update_freq = 200
        self.tau = 1.0
        self.num_q_networks = 2
        self.ensemble_target = "mean"
        self.reward_scale = 10.0
        self.expected_next_value = False
        self.replay_buffer_config = {"type": "EpisodeReplayBuffer", "capacity": 50_000}
        self.store_buffer_in_checkpoints = False
        # Incremental updates decay old rounding errors by beta per push, so the
        # cache's drift stays near float32 rounding / (1 - beta) even without a
        # refresh. Refreshing 1/300 of the table per iteration costs, at M=300,
        # about one pass of one ensemble over the whole table.
        self.exact_refresh_interval = 300
        # One torch thread in the algorithm's process and its Learners, unless
        # OMP_NUM_THREADS chooses (rllib_staq/threads.py says why).
        self.intra_op_threads = "auto"
        # __sphinx_doc_end__
        # fmt: on
        # The stack is in buffers; never broadcast it at every DDP forward.
        self.torch_ddp_kwargs = {"broadcast_buffers": False}
        # "auto": the EnvRunners together sample exactly env_steps_per_iteration.
        self.rollout_fragment_length = "auto"
        # Report once per StaQ iteration.
        self.min_sample_timesteps_per_iteration = 0
        self.min_time_s_per_iteration = None

    @override(AlgorithmConfig)
    def training(
        self,
        *,
        stack_size: Optional[int] = NotProvided,
        kl_coeff: Optional[float] = NotProvided,
        entropy_coeff: Optional[LearningRateOrSchedule] = NotProvided,
        scale_entropy_by_log_actions: Optional[bool] = NotProvided,
        weight_correction: Optional[bool] = NotProvided,
        epsilon: Optional[LearningRateOrSchedule] = NotProvided,
        env_steps_per_iteration: Optional[int] = NotProvided,
        grad_steps_per_iteration: Optional[int] = NotProvided,
        target_network_update_freq: Optional[int] = NotProvided,
        tau: Optional[float] = NotProvided,
        num_q_networks: Optional[int] = NotProvided,
        ensemble_target: Optional[str] = NotProvided,
        reward_scale: Optional[float] = NotProvided,
        expected_next_value: Optional[bool] = NotProvided,
        replay_buffer_config: Optional[Dict[str, Any]] = NotProvided,
        store_buffer_in_checkpoints: Optional[bool] = NotProvided,
        exact_refresh_interval: Optional[int] = NotProvided,
        intra_op_threads: Optional[Union[int, str]] = NotProvided,
        **kwargs,
    ) -> "StaQConfig":
        """Sets StaQ's training settings (see the README's config table).

        Args:
            stack_size: M, the number of frozen Q-networks kept per ensemble member.
            kl_coeff: 1/eta, weight of KL(pi || pi_k) in the PMD update.
            entropy_coeff: tau, a float or a schedule ``[[env_step, value], ...]``.
            scale_entropy_by_log_actions: Divide tau by ln|A| (official code).
            weight_correction: Multiply the stack by 1/(1-beta^M) (the paper's
                method); False gives the vanilla truncated sum.
            epsilon: Uniform-action probability of epsilon-softmax (float or
                schedule over env steps).
            env_steps_per_iteration: Env steps sampled per StaQ iteration.
            grad_steps_per_iteration: FQI minibatch steps per iteration.
            target_network_update_freq: Gradient steps between target updates.
            tau: Target update rate: 1.0 = hard copy, < 1 = Polyak averaging.
            num_q_networks: Ensemble size (each member has its own stack).
            ensemble_target: "mean" or "min" over the target ensemble.
            reward_scale: Rewards are multiplied by this in the FQI target.
            expected_next_value: False samples one a' ~ pi_k (paper); True uses
                the exact expectation over pi_k.
            replay_buffer_config: RLlib episode replay buffer config; ``capacity``
                is also the size of the learner's transition table.
            store_buffer_in_checkpoints: Store the replay data in checkpoints.
            exact_refresh_interval: Every iteration recomputes 1/interval of the
                cached next-state stack sums exactly from the full stack (pushes
                update them incrementally), so each is exact again within this
                many pushes.
            intra_op_threads: torch intra-op threads in the algorithm's process
                and in each Learner: "auto" (1, unless ``OMP_NUM_THREADS`` is
                set), an int >= 1, or None to leave torch's setting alone.
        """
        super().training(**kwargs)
        settings = dict(
            stack_size=stack_size,
            kl_coeff=kl_coeff,
            entropy_coeff=entropy_coeff,
            scale_entropy_by_log_actions=scale_entropy_by_log_actions,
            weight_correction=weight_correction,
            epsilon=epsilon,
            env_steps_per_iteration=env_steps_per_iteration,
            grad_steps_per_iteration=grad_steps_per_iteration,
            target_network_update_freq=target_network_update_freq,
            tau=tau,
            num_q_networks=num_q_networks,
            ensemble_target=ensemble_target,
            reward_scale=reward_scale,
            expected_next_value=expected_next_value,
            store_buffer_in_checkpoints=store_buffer_in_checkpoints,
            exact_refresh_interval=exact_refresh_interval,
            intra_op_threads=intra_op_threads,
        )
        for name, value in settings.items():
            if value is not NotProvided:
                setattr(self, name, value)
        if replay_buffer_config is not NotProvided:
            self.replay_buffer_config = {**self.replay_buffer_config, **replay_buffer_config}
        return self

    @override(AlgorithmConfig)
    def get_rollout_fragment_length(self, worker_index: int = 0) -> int:
        """With "auto", splits ``env_steps_per_iteration`` over all envs of all runners."""
        if self.rollout_fragment_length != "auto":
            return self.rollout_fragment_length
        num_envs = self.num_envs_per_env_runner * (self.num_env_runners or 1)
        steps_per_env, remainder = divmod(self.env_steps_per_iteration, num_envs)
        # The first `remainder` envs take one more step, so the total is exact.
        first_env_of_runner = (max(worker_index, 1) - 1) * self.num_envs_per_env_runner
        return max(1, steps_per_env + (1 if first_env_of_runner < remainder else 0))

    @property
    def replay_capacity_per_learner(self) -> int:
        """Each learner keeps its shard of the replay data."""
        return max(1, int(self.replay_buffer_config["capacity"]) // max(1, self.num_learners))

    @override(AlgorithmConfig)
    def validate(self) -> None:
        super().validate()
        self._validate_staq_settings()

    def _validate_staq_settings(self) -> None:
        def error(setting: str, allowed: str, value: Any) -> None:
            self._value_error(f"StaQ: `{setting}` must be {allowed}, got {value!r}.")

        if not isinstance(self.stack_size, int) or self.stack_size < 1:
            error("stack_size", "an int >= 1", self.stack_size)
        for name in ("kl_coeff", "reward_scale", "lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                error(name, "a number > 0", value)
        for value in _schedule_values(self.entropy_coeff):
            if not isinstance(value, (int, float)) or value <= 0:
                error("entropy_coeff", "> 0 (a float or [[t, value], ...] schedule)", self.entropy_coeff)
        for value in _schedule_values(self.epsilon):
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                error("epsilon", "in [0, 1] (a float or [[t, value], ...] schedule)", self.epsilon)
        if self.ensemble_target not in ENSEMBLE_TARGETS:
            error("ensemble_target", f"one of {ENSEMBLE_TARGETS}", self.ensemble_target)
        for name in (
            "num_q_networks",
            "env_steps_per_iteration",
            "grad_steps_per_iteration",
            "target_network_update_freq",
            "train_batch_size_per_learner",
            "exact_refresh_interval",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                error(name, "an int >= 1", value)
        if not threads.is_valid_setting(self.intra_op_threads):
            error("intra_op_threads", '"auto", an int >= 1 or None', self.intra_op_threads)
        if not 0.0 < self.tau <= 1.0:
            error("tau", "in (0, 1] (1.0 = hard target copy)", self.tau)
        if not 0.0 <= self.gamma <= 1.0:
            error("gamma", "in [0, 1]", self.gamma)
        if not isinstance(self.replay_buffer_config.get("type"), str) or (
            "EpisodeReplayBuffer" not in self.replay_buffer_config["type"]
        ):
            error(
                "replay_buffer_config['type']",
                "the name (a string) of an RLlib EpisodeReplayBuffer class",
                self.replay_buffer_config.get("type"),
            )
        capacity = self.replay_buffer_config.get("capacity")
        if not isinstance(capacity, int) or capacity < 1:
            error("replay_buffer_config['capacity']", "an int >= 1", capacity)
        elif self.train_batch_size_per_learner > self.replay_capacity_per_learner:
            error(
                "train_batch_size_per_learner",
                f"<= the replay capacity per learner ({self.replay_capacity_per_learner})",
                self.train_batch_size_per_learner,
            )
        if self.action_space is not None:
            validate_action_space(self.action_space)

    @override(AlgorithmConfig)
    def get_default_rl_module_spec(self) -> RLModuleSpec:
        if self.framework_str != "torch":
            raise ValueError(f"StaQ supports framework='torch' only, got {self.framework_str!r}.")
        from rllib_staq.torch.default_staq_torch_rl_module import DefaultStaQTorchRLModule

        return RLModuleSpec(module_class=DefaultStaQTorchRLModule)

    @override(AlgorithmConfig)
    def get_default_learner_class(self) -> Union[Type[Learner], str]:
        if self.framework_str != "torch":
            raise ValueError(f"StaQ supports framework='torch' only, got {self.framework_str!r}.")
        from rllib_staq.torch.staq_torch_learner import StaQTorchLearner

        return StaQTorchLearner

    @property
    @override(AlgorithmConfig)
    def _model_config_auto_includes(self) -> Dict[str, Any]:
        return super()._model_config_auto_includes | {
            "stack_size": self.stack_size,
            "num_q_networks": self.num_q_networks,
            "epsilon": self.epsilon,
        }


def _schedule_values(value_or_schedule) -> List[Any]:
    if isinstance(value_or_schedule, (list, tuple)):
        return [entry[1] for entry in value_or_schedule]
    return [value_or_schedule]


def validate_action_space(action_space: gym.Space) -> None:
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(
            "StaQ supports only a Discrete action space (allowed: gymnasium.spaces."
            f"Discrete), got {action_space}. For a Box action space, wrap the env in "
            "rllib_staq.DiscreteBoxActions (the paper's 2d+1 actions: midpoint, or one "
            "dimension at its low or high bound), e.g. `tune.register_env('my-env', lambda "
            "cfg: DiscreteBoxActions(gymnasium.make('Hopper-v5')))`; the paper's five robots "
            "are registered as StaQ/Hopper-v5, ... (README \"Environments\")."
        )


class StaQ(Algorithm):
    """StaQ on RLlib's new API stack (EnvRunners, Learners, RLModules)."""

    @classmethod
    @override(Algorithm)
    def get_default_config(cls) -> StaQConfig:
        return StaQConfig()

    @override(Algorithm)
    def setup(self, config: AlgorithmConfig) -> None:
        self._check_env_action_space(config)
        # Before any network is built here (local Learner and EnvRunners).
        threads.apply_intra_op_threads(config.intra_op_threads)
        super().setup(config)

    def _check_env_action_space(self, config: AlgorithmConfig) -> None:
        """Fail with a clear error before any EnvRunner or Learner is built."""
        if config.action_space is not None or self.env_creator is None:
            return
        env = self.env_creator(copy.deepcopy(config.env_config))
        try:
            validate_action_space(env.action_space)
        finally:
            env.close()

    @override(Algorithm)
    def training_step(self) -> None:
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER), **ITERATION_TIMER):
            episodes, env_runner_results = synchronous_parallel_sample(
                worker_set=self.env_runner_group,
                max_env_steps=self.config.env_steps_per_iteration,
                concat=True,
                sample_timeout_s=self.config.sample_timeout_s,
                _uses_new_env_runners=True,
                _return_metrics=True,
            )
        self.metrics.aggregate(env_runner_results, key=ENV_RUNNER_RESULTS)

        with self.metrics.log_time((TIMERS, REPLAY_BUFFER_ADD_DATA_TIMER), **ITERATION_TIMER):
            self.local_replay_buffer.add(episodes)
        self.metrics.aggregate(
            [self.local_replay_buffer.get_metrics()], key=REPLAY_BUFFER_RESULTS
        )

        # One update = one whole StaQ iteration on each learner (FQI + push).
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER), **ITERATION_TIMER):
            learner_results = self.learner_group.update(
                episodes=episodes,
                timesteps={
                    NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                        (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME)
                    ),
                    NUM_AGENT_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                        (ENV_RUNNER_RESULTS, NUM_AGENT_STEPS_SAMPLED_LIFETIME)
                    ),
                },
            )
        self.metrics.aggregate(learner_results, key=LEARNER_RESULTS)

        # The new stack reaches the EnvRunners once per iteration.
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER), **ITERATION_TIMER):
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group,
                inference_only=True,
            )

    @override(Algorithm)
    def get_state(self, *args, **kwargs) -> Dict[str, Any]:
        state = super().get_state(*args, **kwargs)
        if self.config.store_buffer_in_checkpoints and self.local_replay_buffer is not None:
            state[REPLAY_BUFFER_STATE_KEY] = self.local_replay_buffer.get_state()
        return state

    @override(Algorithm)
    def set_state(self, state: Dict[str, Any]) -> None:
        super().set_state(state)
        if REPLAY_BUFFER_STATE_KEY in state and self.local_replay_buffer is not None:
            self.local_replay_buffer.set_state(state[REPLAY_BUFFER_STATE_KEY])
        if COMPONENT_LEARNER_GROUP in state:
            self._sync_restored_stack_to_env_runners()

    @override(Algorithm)
    def restore_from_path(self, path, *args, **kwargs) -> None:
        super().restore_from_path(path, *args, **kwargs)
        self._sync_restored_stack_to_env_runners()

    def _sync_restored_stack_to_env_runners(self) -> None:
        """Makes remote EnvRunners act with the restored stack from their next call on.

        RLlib's own sync after a restore is fire-and-forget, and RLlib drops it
        for an EnvRunner that still has an earlier weight sync in flight (for
        example the one from ``setup()`` while the runner starts;
        ``max_requests_in_flight_per_env_runner`` is 1). The runner would then
        act with the empty stack until the next iteration's sync. Waiting for the
        syncs in flight before sending the stack again keeps it from being dropped.
        """
        self.env_runner_group.sync_weights(
            from_worker_or_learner_group=self.learner_group,
            inference_only=True,
            timeout_seconds=RESTORE_SYNC_TIMEOUT_S,
        )
