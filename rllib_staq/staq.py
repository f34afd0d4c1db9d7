"""StaQ: Policy Mirror Descent with a finite stack of Q-functions (discrete actions).

Paper: "StaQ it! Growing neural networks for Policy Mirror Descent", Jobard et
al., arXiv 2506.13862. One training iteration (``StaQ.training_step``):

1. sample ``env_steps_per_iteration`` env steps with pi_k (epsilon-softmax),
2. one ``learner_group.update``: each learner appends them to its transition
   table (the only copy of the replay data, one per module), computes pi_k's
   next-state logits once, runs ``grad_steps_per_iteration`` FQI steps and
   pushes a frozen copy of the trainable Q-ensemble onto the stack,
3. sync the new stack to the EnvRunners once.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Dict, Optional, Type, Union

import gymnasium as gym
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core import COMPONENT_LEARNER_GROUP
from ray.rllib.core.learner import Learner
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
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
    REPLAY_BUFFER_RESULTS,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)
from ray.rllib.utils.typing import LearningRateOrSchedule
from ray.util.debug import log_once

from rllib_staq import continuous, threads
from rllib_staq.evaluation import first_episode_evaluation, first_episode_evaluation_errors
from rllib_staq.multi_agent import (
    added_module_spec,
    agent_action_spaces,
    declared_action_spaces,
    module_model_config,
    module_setting_conflicts,
)
from rllib_staq.settings import (
    ALGORITHM_WIDE_SETTINGS,
    ENSEMBLE_TARGETS,  # noqa: F401 (public name)
    SETTING_CHECKS,
    replay_buffer_config_errors,
    restore_dropped_settings,
    search_space_errors,
    setting_error,
)
from rllib_staq.staq_learner import ITERATION_TIMER, REPLAY_METRICS

logger = logging.getLogger(__name__)

# Checkpoints of earlier versions held the RLlib episode buffer's copy here.
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
        # 1 is the paper's target; n > 1 bootstraps n env steps ahead (README,
        # deviation "n-step targets").
        self.n_step = 1
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
        # Box action spaces only (rllib_staq/continuous.py): the actor's Adam lr
        # and its steps onto the stack after each push.
        self.actor_lr = 3e-4
        self.actor_steps_per_iteration = 250
        # "reverse_kl": every actor step differentiates through the stack;
        # "weighted_ml": the stack is evaluated once per iteration on a fixed
        # target set of states and proposal actions (MPO-style), then the steps
        # fit the weighted samples without it (README, "Continuous actions").
        self.actor_fit = "reverse_kl"
        self.weighted_ml_states = 2048
        self.weighted_ml_actions = 16
        # Share of those proposal actions drawn uniformly on the box (defensive
        # importance sampling); 0 = all from pi_theta_k.
        self.weighted_ml_uniform_fraction = 0.0
        # The EnvRunners' copy of the stack (acting only); "bfloat16" halves the
        # bytes read per env step (README, Performance: "Acting stack dtype").
        self.stack_dtype = "float32"
        # Experimental: the FQI passes' hidden-to-hidden layers under bf16
        # autocast (README, Performance: "The FQI step, and Stable-Baselines3's DQN").
        self.fqi_matmul_dtype = "float32"
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
        n_step: Optional[int] = NotProvided,
        replay_buffer_config: Optional[Dict[str, Any]] = NotProvided,
        store_buffer_in_checkpoints: Optional[bool] = NotProvided,
        exact_refresh_interval: Optional[int] = NotProvided,
        intra_op_threads: Optional[Union[int, str]] = NotProvided,
        actor_lr: Optional[float] = NotProvided,
        actor_steps_per_iteration: Optional[int] = NotProvided,
        actor_fit: Optional[str] = NotProvided,
        weighted_ml_states: Optional[int] = NotProvided,
        weighted_ml_actions: Optional[int] = NotProvided,
        weighted_ml_uniform_fraction: Optional[float] = NotProvided,
        stack_dtype: Optional[str] = NotProvided,
        fqi_matmul_dtype: Optional[str] = NotProvided,
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
            n_step: Env steps each FQI target looks ahead: 1 (the paper), or
                n > 1 for ``sum_{j<n} gamma^j r_{t+j}`` plus the bootstrap at
                ``s_{t+n}`` discounted by ``gamma^n`` (fewer where the sampled
                episode chunk ends first). Discrete actions only.
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
            actor_lr: Box action spaces only: Adam lr of the squashed-Gaussian actor.
            actor_steps_per_iteration: Box action spaces only: Adam steps
                fitting the actor to the stack's energy after each push.
            actor_fit: Box action spaces only: "reverse_kl" (each step
                differentiates E_{a~pi_theta}[log pi_theta - xi] through the
                stack) or "weighted_ml" (one stacked pass per iteration on a
                fixed target set; the steps maximise the self-normalised
                importance-weighted log-likelihood of its proposal actions).
            weighted_ml_states: "weighted_ml" only: states in each iteration's
                target set (sampled from the replay table).
            weighted_ml_actions: "weighted_ml" only: proposal actions per state
                (from the actor before the fit; uniform before the first fit).
            weighted_ml_uniform_fraction: "weighted_ml" only: in [0, 1), the
                expected share of proposal actions drawn uniformly on the box
                instead of from the actor (a defensive mixture proposal, its
                density in the weights); 0 draws all from the actor.
            stack_dtype: Storage of the EnvRunners' acting stack: "float32", or
                "bfloat16" (hidden layers in bf16, output layer and member sum in
                float32). The learner's stack, its cached next-state sums and the
                FQI targets stay float32 either way.
            fqi_matmul_dtype: Experimental. "float32", or "bfloat16": the FQI
                training and target passes run their hidden-to-hidden layers
                under bf16 autocast (first layer and head float32).
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
            n_step=n_step,
            store_buffer_in_checkpoints=store_buffer_in_checkpoints,
            exact_refresh_interval=exact_refresh_interval,
            intra_op_threads=intra_op_threads,
            actor_lr=actor_lr,
            actor_steps_per_iteration=actor_steps_per_iteration,
            actor_fit=actor_fit,
            weighted_ml_states=weighted_ml_states,
            weighted_ml_actions=weighted_ml_actions,
            weighted_ml_uniform_fraction=weighted_ml_uniform_fraction,
            stack_dtype=stack_dtype,
            fqi_matmul_dtype=fqi_matmul_dtype,
        )
        for name, value in settings.items():
            if value is not NotProvided:
                setattr(self, name, value)
        if replay_buffer_config is not NotProvided:
            self._check_setting("replay_buffer_config", replay_buffer_config)
            self.replay_buffer_config = {**self.replay_buffer_config, **replay_buffer_config}
            for message in replay_buffer_config_errors(self.replay_buffer_config):
                self._value_error(message)
        # Refused where set, before anything else reads them. A Tune search space
        # (the config as a Tuner's param_space) is checked value by value; each
        # trial's validate() checks the value it resolves to.
        for name in set(SETTING_CHECKS) & (set(settings) | set(kwargs)):
            for message in search_space_errors(name, getattr(self, name)):
                self._value_error(message)
        return self

    def _check_setting(self, name: str, value: Any) -> None:
        message = setting_error(name, value)
        if message is not None:
            self._value_error(message)

    @override(AlgorithmConfig)
    def get_state(self) -> Dict[str, Any]:
        """RLlib's state, with every setting RLlib would drop for being -1 kept.

        ``build_algo()`` rebuilds the config from this state; without this a
        setting of -1 (RLlib's ``DEPRECATED_VALUE``) would become its default.
        """
        return restore_dropped_settings(
            super().get_state(), vars(self), _default_attributes(type(self))
        )

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

        for name in SETTING_CHECKS:
            self._check_setting(name, getattr(self, name))
        for module_id, overrides in (self.algorithm_config_overrides_per_module or {}).items():
            self.validate_module_overrides(module_id, overrides)
        for message in module_setting_conflicts(self):
            self._value_error(message)
        if isinstance(self.replay_buffer_config, dict):
            for message in replay_buffer_config_errors(self.replay_buffer_config):
                self._value_error(message)
        if (
            _is_int(self.train_batch_size_per_learner)
            and _is_int(self.replay_buffer_config.get("capacity"))
            and self.train_batch_size_per_learner > self.replay_capacity_per_learner
        ):
            error(
                "train_batch_size_per_learner",
                f"<= the replay capacity per learner ({self.replay_capacity_per_learner})",
                self.train_batch_size_per_learner,
            )
        for whose, action_space in declared_action_spaces(self):
            validate_action_space(action_space, whose)
        for message in continuous.setting_conflicts(self, continuous.uses_box_path(self)):
            self._value_error(message)
        self._validate_evaluation()

    def _validate_evaluation(self) -> None:
        if self.in_evaluation:  # the evaluation EnvRunners' copy: checked as part of its source
            return
        if self.custom_evaluation_function is first_episode_evaluation:
            for message in first_episode_evaluation_errors(self):
                self._value_error(message)
            return
        counts_episodes_with_rllibs_rule = (
            self.evaluation_interval
            and self.custom_evaluation_function is None
            and self.evaluation_duration_unit == "episodes"
        )
        if not counts_episodes_with_rllibs_rule:
            return
        num_envs = self.get_evaluation_config_object().num_envs_per_env_runner
        if num_envs > 1 and log_once("staq_biased_episode_evaluation"):
            # RLlib's rule, not a StaQ setting: reported, not refused.
            logger.warning(
                "StaQ: RLlib's evaluation of %s episodes on %d vector envs returns the first "
                "episodes to end, so short episodes are over-represented (their mean reads "
                "low where the return grows with the length). For each env's first episode, "
                "set config.evaluation(custom_evaluation_function="
                "rllib_staq.first_episode_evaluation).",
                self.evaluation_duration,
                num_envs,
            )

    def validate_module_overrides(self, module_id, overrides: Dict[str, Any]) -> None:
        """Per-module settings are checked as the main ones; algorithm-wide ones refused."""
        for name, value in overrides.items():
            if name in ALGORITHM_WIDE_SETTINGS:
                self._value_error(
                    f"StaQ: `{name}` is one setting for the whole algorithm and cannot "
                    f"be overridden for module {module_id!r}; set it in `training()`."
                )
            message = setting_error(name, value, where=f" (module {module_id!r})")
            if message is not None:
                self._value_error(message)

    @override(AlgorithmConfig)
    def get_config_for_module(self, module_id) -> "StaQConfig":
        """RLlib's per-module config, also on a frozen config (``algo.config``).

        RLlib applies the overrides to a copy that keeps the frozen flag, so it
        raises on a built algorithm's config; the copy here is unfrozen while the
        overrides are applied, then frozen like its source.
        """
        overrides = (self.algorithm_config_overrides_per_module or {}).get(module_id)
        if overrides is not None and module_id not in self._per_module_overrides:
            module_config = self.copy(copy_frozen=False).update_from_dict(overrides)
            if self._is_frozen:
                module_config.freeze()
            self._per_module_overrides[module_id] = module_config
        return super().get_config_for_module(module_id)

    @override(AlgorithmConfig)
    def get_multi_rl_module_spec(self, **kwargs) -> MultiRLModuleSpec:
        """RLlib's spec, with each module's own ``stack_size``/``num_q_networks``/``epsilon``.

        RLlib gives every module the main config's ``model_config``; per-module
        overrides of these settings reach the modules only through this.
        """
        spec = super().get_multi_rl_module_spec(**kwargs)
        for module_id, module_spec in spec.rl_module_specs.items():
            module_spec.model_config = module_model_config(
                self, module_id, module_spec.model_config
            )
        return spec

    @override(AlgorithmConfig)
    def get_default_rl_module_spec(self) -> RLModuleSpec:
        if self.framework_str != "torch":
            raise ValueError(f"StaQ supports framework='torch' only, got {self.framework_str!r}.")
        # The module by action space, as SAC's catalog picks its networks (issue 15).
        if continuous.uses_box_path(self):
            from rllib_staq.torch.continuous_staq_torch_rl_module import (
                ContinuousStaQTorchRLModule,
            )

            return RLModuleSpec(module_class=ContinuousStaQTorchRLModule)
        from rllib_staq.torch.default_staq_torch_rl_module import DefaultStaQTorchRLModule

        return RLModuleSpec(module_class=DefaultStaQTorchRLModule)

    @override(AlgorithmConfig)
    def get_default_learner_class(self) -> Union[Type[Learner], str]:
        if self.framework_str != "torch":
            raise ValueError(f"StaQ supports framework='torch' only, got {self.framework_str!r}.")
        if continuous.uses_box_path(self):
            from rllib_staq.torch.continuous_staq_torch_learner import (
                ContinuousStaQTorchLearner,
            )

            return ContinuousStaQTorchLearner
        from rllib_staq.torch.staq_torch_learner import StaQTorchLearner

        return StaQTorchLearner

    @property
    @override(AlgorithmConfig)
    def _model_config_auto_includes(self) -> Dict[str, Any]:
        return super()._model_config_auto_includes | {
            "stack_size": self.stack_size,
            "num_q_networks": self.num_q_networks,
            "epsilon": self.epsilon,
            "stack_dtype": self.stack_dtype,
        }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _default_attributes(config_class: type) -> Dict[str, Any]:
    """The attributes of a fresh config of ``config_class`` (its defaults)."""
    if config_class not in _DEFAULT_ATTRIBUTES:
        _DEFAULT_ATTRIBUTES[config_class] = vars(config_class())
    return _DEFAULT_ATTRIBUTES[config_class]


_DEFAULT_ATTRIBUTES: Dict[type, Dict[str, Any]] = {}


def validate_action_space(action_space: gym.Space, whose: Optional[str] = None) -> None:
    """Refuses a space StaQ cannot act in; ``whose`` (e.g. "Agent 'a'") starts the message.

    A Box space is accepted only single-agent (``whose`` None): Box actions are
    single-agent (``continuous.setting_conflicts`` says why).
    """
    if whose is None and continuous.accepts_action_space(action_space):
        return
    if not isinstance(action_space, gym.spaces.Discrete):
        prefix = f"{whose}: " if whose else ""
        raise ValueError(
            f"{prefix}StaQ supports a Discrete or (single-agent) 1-D Box action space (allowed: "
            f"gymnasium.spaces.Discrete, gymnasium.spaces.Box of shape (d,)), got "
            f"{action_space}. Or, for a Box action space, wrap the env in "
            "rllib_staq.DiscreteBoxActions (the paper's 2d+1 actions: midpoint, or one "
            "dimension at its low or high bound), e.g. `tune.register_env('my-env', lambda "
            "cfg: DiscreteBoxActions(gymnasium.make('Hopper-v5')))`; the paper's five robots "
            'are registered as StaQ/Hopper-v5, ... (README "Environments").'
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
            for agent_id, action_space in agent_action_spaces(env):
                validate_action_space(
                    action_space, None if agent_id is None else f"Agent {agent_id!r}"
                )
        finally:
            env.close()

    @override(Algorithm)
    def add_module(
        self,
        module_id,
        module_spec: RLModuleSpec,
        *,
        config_overrides: Optional[Dict[str, Any]] = None,
        **kwargs,
    ) -> MultiRLModuleSpec:
        """RLlib's ``add_module``, with the new module's overrides and action space
        checked as ``validate()`` checks them, before anything is added, and its
        module settings put into its spec (:func:`multi_agent.added_module_spec`)."""
        overrides = config_overrides or {}
        self.config.validate_module_overrides(module_id, overrides)
        if module_spec.action_space is not None:
            validate_action_space(module_spec.action_space, f"Module {module_id!r}")
        module_spec = added_module_spec(self.config, module_id, module_spec, overrides)
        return super().add_module(
            module_id, module_spec, config_overrides=config_overrides, **kwargs
        )

    @override(Algorithm)
    def _create_local_replay_buffer_if_necessary(self, config) -> None:
        """No RLlib buffer: the learners' transition tables are StaQ's only replay."""
        return None

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
        # Every EnvRunner failed (RLlib restores them before the next iteration):
        # no new data, so no FQI phase and no push, as RLlib's PPO and DQN return.
        if not episodes:
            logger.warning("StaQ: no episodes sampled (EnvRunners failed); iteration skipped.")
            return
        self.metrics.aggregate(env_runner_results, key=ENV_RUNNER_RESULTS)

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
        self._log_replay_metrics()

        # The new stack reaches the EnvRunners once per iteration.
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER), **ITERATION_TIMER):
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group,
                inference_only=True,
            )

    def _log_replay_metrics(self) -> None:
        """RLlib's ``replay_buffer/<metric>/<module_id>`` keys, from the learners' tables.

        Each learner logs its table's counts per module; the learner results sum
        them over learners (each holds its shard).
        """
        for module_id, results in self.metrics.peek(LEARNER_RESULTS, default={}).items():
            for key in REPLAY_METRICS:
                if isinstance(results, dict) and key in results:
                    self.metrics.log_value(
                        (REPLAY_BUFFER_RESULTS, key, module_id), results[key], window=1
                    )

    @override(Algorithm)
    def set_state(self, state: Dict[str, Any]) -> None:
        # Earlier checkpoints also held RLlib's episode buffer: the same data as
        # the learners' tables, which the learner state restores.
        state = {key: value for key, value in state.items() if key != REPLAY_BUFFER_STATE_KEY}
        super().set_state(state)
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
