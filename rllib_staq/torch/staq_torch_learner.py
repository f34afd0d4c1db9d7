"""StaQ's torch learner: one ``update()`` call runs a whole StaQ iteration.

``Learner.update(episodes=new_episodes)`` (one call per iteration, no
minibatching by RLlib) reaches :meth:`StaQTorchLearner._update` once with all new
transitions. There the learner appends them to its transition table, computes
pi_k's logits at every stored next-state once, and runs the FQI phase of
``grad_steps_per_iteration`` minibatch steps. ``after_gradient_based_update``
then pushes a frozen copy of the trainable ensemble onto the stack.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

import torch
from ray.rllib.connectors.common.add_observations_from_episodes_to_batch import (
    AddObservationsFromEpisodesToBatch,
)
from ray.rllib.connectors.learner.add_next_observations_from_episodes_to_train_batch import (  # noqa: E501
    AddNextObservationsFromEpisodesToTrainBatch,
)
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.learner.utils import update_target_network
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME
from ray.rllib.utils.schedules.scheduler import Scheduler
from ray.rllib.utils.typing import ModuleID
from torch.optim.adam import adam as functional_adam

from rllib_staq import pmd, threads
from rllib_staq.connectors import (
    AddNextStackSumsFromEpisodesToTrainBatch,
    AddNStepTransitionsFromEpisodesToTrainBatch,
)
from rllib_staq.replay import TransitionTable
from rllib_staq.staq_learner import (
    ALPHA_KEY,
    BETA_KEY,
    ENTROPY_COEFF_KEY,
    EPSILON_KEY,
    FQI_TIMER,
    ITERATION_TIMER,
    KL_NEW_OLD_KEY,
    MAX_ABS_Q_BOUND_KEY,
    MAX_ABS_Q_KEY,
    MEAN_Q_KEY,
    N_STEP_HORIZONS,
    NEXT_LOGITS_TIMER,
    NEXT_STACK_SUM,
    NEXT_STACK_VERSION,
    NEXT_STATE_PASS_FRACTION_KEY,
    NUM_GRAD_STEPS_KEY,
    NUM_MODULE_STEPS_ADDED,
    NUM_MODULE_STEPS_ADDED_LIFETIME,
    NUM_MODULE_STEPS_EVICTED,
    NUM_MODULE_STEPS_EVICTED_LIFETIME,
    NUM_MODULE_STEPS_SAMPLED,
    NUM_MODULE_STEPS_SAMPLED_LIFETIME,
    NUM_MODULE_STEPS_STORED,
    NUM_PUSHES_KEY,
    POLICY_ENTROPY_KEY,
    PUSH_TIMER,
    REPLAY_SIZE_KEY,
    STACK_FILL_KEY,
    TD_LOSS_KEY,
    TRUNCATION_KL_KEY,
)
from rllib_staq.torch.default_staq_torch_rl_module import (
    QF_PREDS,
    QF_TARGET_NEXT_PREDS,
    to_network_input,
)
from rllib_staq.torch.mlp_fqi_step import MlpFqiStep

logger = logging.getLogger(__name__)

# Rows per chunk when evaluating the stack over the whole table (bounds memory).
LOGITS_CHUNK = 1024
REPLAY_STATE_KEY = "staq_transition_tables"
FQI_TARGETS = "fqi_targets"


class StaQTorchLearnerBase(TorchLearner):
    """What both StaQ learners (discrete and Box actions) share.

    The transition tables (one per module, checkpointed with
    ``store_buffer_in_checkpoints``), the tau schedule per module, the learner's
    random generator and RLlib's next-observation connector. Subclasses say how
    tau is scaled (:meth:`scaled_entropy_coeff`).
    """

    @override(TorchLearner)
    def build(self) -> None:
        # A remote Learner is its own process (Ray sets its OMP_NUM_THREADS).
        threads.apply_intra_op_threads(self.config.intra_op_threads)
        super().build()
        self.module.foreach_module(lambda mid, mod: mod.make_target_networks())
        self._learner_connector.insert_after(
            AddObservationsFromEpisodesToBatch,
            AddNextObservationsFromEpisodesToTrainBatch(),
        )
        self._tables: Dict[ModuleID, TransitionTable] = {}
        self._entropy_schedules: Dict[ModuleID, Scheduler] = {}
        self._current_entropy_coeff: Dict[ModuleID, float] = {}
        self._current_env_steps = 0
        seed = self.config.seed if self.config.seed is not None else 0
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(seed * 1000 + (self._learner_index or 0))

    @override(TorchLearner)
    def add_module(self, *, module_id: ModuleID, **kwargs) -> MultiRLModuleSpec:
        """RLlib's ``add_module``; the new module gets its target networks, as in build()."""
        multi_rl_module_spec = super().add_module(module_id=module_id, **kwargs)
        self._unwrapped(module_id).make_target_networks()
        return multi_rl_module_spec

    @override(TorchLearner)
    def remove_module(self, module_id: ModuleID, **kwargs) -> MultiRLModuleSpec:
        """RLlib's ``remove_module``; the module's table and tau schedule go with it
        (else they would stay in memory and in every later checkpoint)."""
        multi_rl_module_spec = super().remove_module(module_id, **kwargs)
        for per_module in self._per_module_state():
            per_module.pop(module_id, None)
        return multi_rl_module_spec

    def _per_module_state(self) -> List[Dict[ModuleID, Any]]:
        """The dicts that hold something per module, beside RLlib's own."""
        return [self._tables, self._entropy_schedules, self._current_entropy_coeff]

    # ------------------------------------------------------------------ #
    # Per-module helpers.
    # ------------------------------------------------------------------ #
    def _module_config(self, module_id: ModuleID):
        return self.config.get_config_for_module(module_id)

    def _unwrapped(self, module_id: ModuleID):
        return self.module[module_id].unwrapped()

    def _table(self, module_id: ModuleID) -> TransitionTable:
        if module_id not in self._tables:
            capacity = self._module_config(module_id).replay_capacity_per_learner
            self._tables[module_id] = TransitionTable(capacity, device=self.device)
        return self._tables[module_id]

    def entropy_coeff(self, module_id: ModuleID) -> float:
        """tau of the current iteration (scaled as :meth:`scaled_entropy_coeff` says)."""
        return self._current_entropy_coeff[module_id]

    def scaled_entropy_coeff(self, entropy_coeff: float, module_id: ModuleID) -> float:
        """tau as the learner uses it, from the config's (scheduled) value."""
        raise NotImplementedError

    @override(TorchLearner)
    def before_gradient_based_update(self, *, timesteps: Dict[str, Any]) -> None:
        super().before_gradient_based_update(timesteps=timesteps)
        env_steps = timesteps.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0) or 0
        self._current_env_steps = env_steps
        for module_id in self.module.keys():
            config = self._module_config(module_id)
            if module_id not in self._entropy_schedules:
                self._entropy_schedules[module_id] = Scheduler(config.entropy_coeff)
            schedule = self._entropy_schedules[module_id]
            raw = schedule.update(env_steps) if schedule.use_schedule else config.entropy_coeff
            self._current_entropy_coeff[module_id] = self.scaled_entropy_coeff(
                float(raw), module_id
            )

    def _wait_for_device(self) -> None:
        """Lets the per-phase timers measure GPU work, not just its launch."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ #
    # Checkpointing of the transition tables.
    # ------------------------------------------------------------------ #
    @override(TorchLearner)
    def get_state(self, *args, **kwargs):
        state = super().get_state(*args, **kwargs)
        if self.config.store_buffer_in_checkpoints:
            state[REPLAY_STATE_KEY] = {
                mid: table.get_state() for mid, table in self._tables.items()
            }
        return state

    @override(TorchLearner)
    def set_state(self, state) -> None:
        super().set_state(state)
        for module_id, table_state in state.get(REPLAY_STATE_KEY, {}).items():
            self._table(module_id).set_state(table_state)


class StaQTorchLearner(StaQTorchLearnerBase):
    @override(StaQTorchLearnerBase)
    def build(self) -> None:
        super().build()
        self._learner_connector.insert_after(
            AddNextObservationsFromEpisodesToTrainBatch,
            AddNextStackSumsFromEpisodesToTrainBatch(),
        )
        self._add_n_step_piece_if_used()
        self._flat_adams: Dict[ModuleID, FlatAdam] = {}

    @override(StaQTorchLearnerBase)
    def add_module(self, *, module_id: ModuleID, **kwargs) -> MultiRLModuleSpec:
        multi_rl_module_spec = super().add_module(module_id=module_id, **kwargs)
        self._add_n_step_piece_if_used()
        return multi_rl_module_spec

    @override(StaQTorchLearnerBase)
    def _per_module_state(self) -> List[Dict[ModuleID, Any]]:
        return [*super()._per_module_state(), self._flat_adams]

    def _add_n_step_piece_if_used(self) -> None:
        """Adds the n-step piece once some module has ``n_step`` > 1 (at build, or a
        module added later); with 1-step modules only, RLlib's pieces write the rows."""
        if (
            not self._uses_n_step()
            or self._learner_connector[AddNStepTransitionsFromEpisodesToTrainBatch]
        ):
            return
        # Before RLlib's pieces: they skip the columns it has written.
        self._learner_connector.insert_after(
            AddObservationsFromEpisodesToBatch,
            AddNStepTransitionsFromEpisodesToTrainBatch(n_step_and_gamma=self._n_step_and_gamma),
        )

    @override(StaQTorchLearnerBase)
    def set_state(self, state) -> None:
        super().set_state(state)
        for table in self._tables.values():
            # Tables checkpointed before n-step targets existed hold 1-step rows.
            if table.columns and N_STEP_HORIZONS not in table.columns:
                table.columns[N_STEP_HORIZONS] = torch.ones(table.capacity, device=table.device)

    def _uses_n_step(self) -> bool:
        return any(self._n_step_and_gamma(module_id)[0] > 1 for module_id in self.module.keys())

    def _n_step_and_gamma(self, module_id: ModuleID) -> Tuple[int, float]:
        config = self._module_config(module_id)
        return config.n_step, config.gamma

    @override(TorchLearner)
    def configure_optimizers_for_module(self, module_id: ModuleID, config=None) -> None:
        """Adam on the module's parameters, as RLlib's default, in torch's fused form.

        The FQI loop takes one optimizer step per gradient step (5000 per
        iteration at the paper's settings). torch's default Adam on CPU runs
        about 5 small ops per parameter tensor; the fused kernel does one pass:
        10% less time per FQI step on 2 CPU cores (``benchmarks/throughput.py
        --part optimizer``). Same update rule; float rounding differs in the
        last bits.
        """
        params = self.get_parameters(self._module[module_id])
        self.register_optimizer(
            module_id=module_id,
            optimizer=adam(params),
            params=params,
            lr_or_lr_schedule=config.lr,
        )

    @override(StaQTorchLearnerBase)
    def scaled_entropy_coeff(self, entropy_coeff: float, module_id: ModuleID) -> float:
        """tau, divided by ln|A| if configured (official code)."""
        return pmd.scaled_entropy_coeff(
            entropy_coeff,
            self._unwrapped(module_id).num_actions,
            self._module_config(module_id).scale_entropy_by_log_actions,
        )

    # ------------------------------------------------------------------ #
    # One StaQ iteration (called once per `update()`).
    # ------------------------------------------------------------------ #
    @override(TorchLearner)
    def _update(self, batch: Dict[str, Any], **kwargs) -> Tuple[Any, Any, Any]:
        loss_per_module = {}
        for module_id, module_batch in batch.items():
            self.add_transitions(module_id, module_batch)
            with self.metrics.log_time((module_id, FQI_TIMER), **ITERATION_TIMER):
                loss_per_module[module_id] = self._run_fqi_phase(module_id, self._table(module_id))
        return {}, loss_per_module, {}

    def add_transitions(self, module_id: ModuleID, module_batch: Dict[str, Any]) -> None:
        """Appends a learner-connector batch to the table with pi_k at its next-states.

        ``module_batch`` holds OBS, ACTIONS, REWARDS, TERMINATEDS, NEXT_OBS and,
        optionally, NEXT_STACK_SUM/NEXT_STACK_VERSION (the EnvRunners' acting
        outputs, reused where they come from the current stack).
        """
        table = self._table(module_id)
        module = self._unwrapped(module_id)
        columns, acting_versions = _transition_columns(module_batch, module.num_actions)
        self._refuse_non_finite(module_id, columns)
        size_before = table.size
        new_rows = table.add(columns)
        self._log_replay_counts(module_id, table, size_before, new_rows.shape[0])
        with self.metrics.log_time((module_id, NEXT_LOGITS_TIMER), **ITERATION_TIMER):
            # The table keeps only its newest `capacity` rows of an oversized batch.
            needs_pass = (acting_versions != module.num_pushes)[-new_rows.shape[0] :]
            self._fill_next_state_sums(module_id, table, new_rows[needs_pass])
            self._wait_for_device()
        self.metrics.log_value(
            (module_id, NEXT_STATE_PASS_FRACTION_KEY),
            needs_pass.float().mean().item(),
            window=1,
        )

    def _refuse_non_finite(self, module_id, columns: Dict[str, torch.Tensor]) -> None:
        """Stops at a NaN/inf observation or reward, before it reaches the table or stack."""
        for field in (Columns.OBS, Columns.NEXT_OBS, Columns.REWARDS):
            values = columns[field]
            if not values.is_floating_point():
                continue
            finite_rows = torch.isfinite(values.flatten(1) if values.dim() > 1 else values)
            finite_rows = finite_rows.all(-1) if finite_rows.dim() > 1 else finite_rows
            if not bool(finite_rows.all()):
                env = self.config.env
                raise ValueError(
                    f"StaQ: env {getattr(env, '__name__', env)!r} returned a NaN or inf "
                    f"`{field}` ({int((~finite_rows).sum())} of {values.shape[0]} new "
                    f"transitions of module {module_id!r}); training stops before it reaches "
                    "the replay table or the stack. Fix the env or wrap it to clean the value."
                )

    def _log_replay_counts(self, module_id, table, size_before: int, num_added: int) -> None:
        """RLlib's replay-buffer counts for this learner's table (summed over learners)."""
        num_evicted = max(0, size_before + num_added - table.capacity)
        log = self.metrics.log_value
        log((module_id, NUM_MODULE_STEPS_STORED), table.size, reduce="sum")
        log((module_id, NUM_MODULE_STEPS_ADDED), num_added, reduce="sum")
        log((module_id, NUM_MODULE_STEPS_ADDED_LIFETIME), num_added, reduce="lifetime_sum")
        log((module_id, NUM_MODULE_STEPS_EVICTED), num_evicted, reduce="sum")
        log((module_id, NUM_MODULE_STEPS_EVICTED_LIFETIME), num_evicted, reduce="lifetime_sum")

    @torch.no_grad()
    def _fill_next_state_sums(self, module_id: ModuleID, table: TransitionTable, rows):
        """pi_k at the stored next-states, once per iteration (never per step).

        The table caches the unscaled stack sum per transition; pushes update it
        incrementally (:meth:`_push_with_cache_update`), and new rows arrive with
        the EnvRunners' acting outputs, so only ``rows`` (those without a
        current acting output) need the full stack here. A rolling window of
        ``1/exact_refresh_interval`` of the table is also recomputed exactly at
        every iteration, so every row is refreshed within that many pushes
        (bounding float drift at a constant cost per iteration).
        """
        module = self._unwrapped(module_id)
        refresh = self._refresh_window(table, int(module.num_pushes), module_id)
        rows = torch.cat([rows, torch.arange(refresh.start, refresh.stop, device=rows.device)])
        next_obs = table.columns[Columns.NEXT_OBS]
        sums = table.columns[NEXT_STACK_SUM]
        for chunk in rows.split(LOGITS_CHUNK):
            sums[chunk] = module.unscaled_stack_sum(next_obs[chunk])

    def _refresh_window(self, table: TransitionTable, num_pushes: int, module_id) -> slice:
        """Rows recomputed exactly at this iteration: window ``num_pushes % interval``."""
        interval = self._module_config(module_id).exact_refresh_interval
        rows_per_window = -(-table.size // interval)  # ceil
        start = min((num_pushes % interval) * rows_per_window, table.size)
        return slice(start, min(start + rows_per_window, table.size))

    @torch.no_grad()
    def recompute_next_state_sums(self, module_id: ModuleID) -> None:
        """Exact recompute of every cached next-state sum from the full stack (oracle)."""
        module = self._unwrapped(module_id)
        table = self._tables[module_id]
        next_obs, sums = table.filled(Columns.NEXT_OBS), table.filled(NEXT_STACK_SUM)
        for start in range(0, table.size, LOGITS_CHUNK):
            stop = min(start + LOGITS_CHUNK, table.size)
            sums[start:stop] = module.unscaled_stack_sum(next_obs[start:stop])

    def cached_next_state_logits(self, module_id: ModuleID) -> torch.Tensor:
        """xi_k at every stored next-state, from the cache: ``[N, A]``."""
        module = self._unwrapped(module_id)
        return module.logit_scale * self._tables[module_id].filled(NEXT_STACK_SUM)

    def _run_fqi_phase(self, module_id: ModuleID, table: TransitionTable) -> torch.Tensor:
        """``grad_steps_per_iteration`` Adam steps of fitted-Q evaluation.

        Everything of the target that is fixed for the phase (pi_k at each stored
        next-state, its entropy, the scaled reward and the discount) is computed
        once per table row here (:meth:`_fqi_phase_rows`), not per minibatch, and
        the optimizer step is one fused Adam kernel over one flat tensor
        (:class:`FlatAdam`) where RLlib's general path is not needed. Both give
        the same numbers as the per-step computation, bit for bit (tests).
        """
        config = self._module_config(module_id)
        module = self._unwrapped(module_id)
        tau = self.entropy_coeff(module_id)
        rows = self._fqi_phase_rows(module_id, module, table, tau)
        flat_adam = self._flat_adam(module_id)
        td_losses, mean_qs, max_abs_qs = [], [], []
        # A host-side counter: reading the buffer each step would sync a GPU.
        grad_steps_before = int(module.num_grad_steps)
        forward_target, optimizer_step = self._fqi_step_functions(module_id, flat_adam)
        for step in range(config.grad_steps_per_iteration):
            indices = table.sample_indices(config.train_batch_size_per_learner, self._generator)
            minibatch = {
                Columns.OBS: table.columns[Columns.OBS][indices],
                Columns.ACTIONS: table.columns[Columns.ACTIONS][indices],
                Columns.NEXT_OBS: table.columns[Columns.NEXT_OBS][indices],
            }
            minibatch[FQI_TARGETS] = self._fqi_target_from_rows(
                module_id, module, minibatch[Columns.NEXT_OBS], rows[indices], forward_target
            )
            loss, q_values = optimizer_step(minibatch)
            td_losses.append(loss.detach())
            mean_qs.append(q_values.detach().mean())
            max_abs_qs.append(q_values.detach().abs().max())
            if (grad_steps_before + step + 1) % config.target_network_update_freq == 0:
                for main_net, target_net in module.get_target_network_pairs():
                    update_target_network(main_net=main_net, target_net=target_net, tau=config.tau)
        if flat_adam is not None:
            flat_adam.end_phase()
        td_losses = torch.stack(td_losses) / module.num_q_networks
        module.num_grad_steps += config.grad_steps_per_iteration
        num_sampled = config.grad_steps_per_iteration * config.train_batch_size_per_learner
        self.metrics.log_value((module_id, NUM_MODULE_STEPS_SAMPLED), num_sampled, reduce="sum")
        self.metrics.log_value(
            (module_id, NUM_MODULE_STEPS_SAMPLED_LIFETIME), num_sampled, reduce="lifetime_sum"
        )
        self.metrics.log_value((module_id, TD_LOSS_KEY), td_losses.mean().item(), window=1)
        self.metrics.log_value(
            (module_id, MEAN_Q_KEY), torch.stack(mean_qs).mean().item(), window=1
        )
        self._log_q_magnitude(module_id, module, table, torch.stack(max_abs_qs).max().item(), tau)
        return td_losses.mean()

    def _log_q_magnitude(self, module_id, module, table, max_abs_q: float, tau: float) -> None:
        """max |Q| of the phase beside its fixed-point bound (``pmd.soft_q_magnitude_bound``),
        with the largest |reward| in the table and this iteration's tau."""
        config = self._module_config(module_id)
        max_abs_reward = table.filled(Columns.REWARDS).abs().max().item()
        bound = pmd.soft_q_magnitude_bound(
            abs(config.reward_scale) * max_abs_reward, config.gamma, tau, module.num_actions
        )
        self.metrics.log_value((module_id, MAX_ABS_Q_KEY), max_abs_q, window=1)
        self.metrics.log_value((module_id, MAX_ABS_Q_BOUND_KEY), bound, window=1)

    def _fqi_phase_rows(self, module_id, module, table, tau: float) -> torch.Tensor:
        """:meth:`target_rows` of every stored transition, once per phase: ``[N, 3 + A]``."""
        return self.target_rows(
            module_id,
            module,
            table.filled(Columns.REWARDS),
            table.filled(Columns.TERMINATEDS),
            table.filled(NEXT_STACK_SUM),
            tau,
            table.filled(N_STEP_HORIZONS),
        )

    @torch.no_grad()
    def target_rows(
        self, module_id, module, rewards, terminateds, next_sums, tau: float, horizons=None
    ):
        """The parts of Eq. 8 that stay fixed during a phase, per transition: ``[N, 3 + A]``.

        Columns: ``reward_scale * r``, ``gamma^horizon * (1 - terminated)``
        (``horizons`` None: 1 for every row),
        ``tau * H(pi_k(.|s'))`` and pi_k(.|s') (from the cached unscaled
        next-state sums). All row-wise, so gathering a minibatch's rows gives the
        values a per-minibatch computation gives, bit for bit (tests).
        """
        config = self._module_config(module_id)
        next_logits = module.logit_scale * next_sums  # [N, A]
        discounts = config.gamma if horizons is None else config.gamma ** horizons.float()
        return torch.cat(
            [
                (config.reward_scale * rewards).unsqueeze(-1),
                (discounts * (1.0 - terminateds.float())).unsqueeze(-1),
                (tau * pmd.categorical_entropy(next_logits)).unsqueeze(-1),
                torch.softmax(next_logits, -1),
            ],
            dim=-1,
        )

    def _flat_adam(self, module_id: ModuleID) -> "FlatAdam | None":
        """The module's :class:`FlatAdam`, or None where RLlib's general path is needed.

        General path: a DDP-wrapped module (its gradients sync per tensor), grad
        scalers or torch LR schedulers, gradient clipping or logging, or an
        optimizer other than one fused torch Adam over the module's parameters.
        """
        optimizers = [opt for _, opt in self.get_optimizers_for_module(module_id)]
        config = self._module_config(module_id)
        if (
            self.module[module_id] is not self._unwrapped(module_id)
            or self._grad_scalers is not None
            or self._lr_scheduler_classes is not None
            or config.grad_clip is not None
            or config.log_gradients
            or len(optimizers) != 1
            or not FlatAdam.supports(optimizers[0])
        ):
            return None
        flat = self._flat_adams.get(module_id)
        if flat is None or not flat.is_bound_to(optimizers[0]):
            params = [p for p in optimizers[0].param_groups[0]["params"] if p.requires_grad]
            flat = FlatAdam(optimizers[0], params)
            self._flat_adams[module_id] = flat
        flat.begin_phase()
        return flat

    def _fqi_step_functions(self, module_id: ModuleID, flat_adam: "FlatAdam | None"):
        """(target forward, optimizer step) of this phase's FQI steps.

        ``optimizer_step(minibatch)`` takes one Adam step on the minibatch's
        loss and returns ``(loss, Q-values [E, B, A])``. Where
        :class:`MlpFqiStep` applies (plain ReLU MLPs, the fast optimizer path,
        this class's loss), it computes the gradients without autograd,
        bit-identically; otherwise autograd does, through :class:`FlatAdam` or
        RLlib's general path.
        """
        config = self._module_config(module_id)
        skip_nan_gradients = self.config.torch_skip_nan_gradients
        mlp_step = self._mlp_fqi_step(module_id, flat_adam)
        if mlp_step is not None:

            def mlp_optimizer_step(minibatch):
                q_values = mlp_step.forward_train(minibatch[Columns.OBS])
                fwd_out = {QF_PREDS: q_values}
                loss = self.compute_loss_for_module(
                    module_id=module_id, config=config, batch=minibatch, fwd_out=fwd_out
                )
                mlp_step.write_gradients(minibatch[Columns.ACTIONS], minibatch[FQI_TARGETS])
                flat_adam.apply_gradients(skip_nan_gradients)
                return loss, q_values

            return mlp_step.forward_target, mlp_optimizer_step
        forward_train, forward_target = self._fqi_forwards(module_id)

        def autograd_optimizer_step(minibatch):
            fwd_out = forward_train(minibatch)
            loss = self.compute_loss_for_module(
                module_id=module_id, config=config, batch=minibatch, fwd_out=fwd_out
            )
            if flat_adam is not None:
                flat_adam.step(loss, skip_nan_gradients)
            else:
                gradients = self.compute_gradients({module_id: loss})
                self._apply_fqi_gradients(self.postprocess_gradients(gradients))
            return loss, fwd_out[QF_PREDS]

        return forward_target, autograd_optimizer_step

    def _mlp_fqi_step(self, module_id: ModuleID, flat_adam) -> "MlpFqiStep | None":
        """An :class:`MlpFqiStep` for the module, or None where autograd is needed.

        CPU only: it is measured and tested (bit-identical) on CPUs; on a GPU the
        learner keeps autograd until it is measured and tested there.
        """
        module = self._unwrapped(module_id)
        config = self._module_config(module_id)
        if (
            flat_adam is None
            or self.device.type != "cpu"
            or type(self).compute_loss_for_module is not StaQTorchLearner.compute_loss_for_module
            or not MlpFqiStep.supports(module)
        ):
            return None
        matmul_dtype = getattr(torch, config.fqi_matmul_dtype)
        return MlpFqiStep(module, config.train_batch_size_per_learner, matmul_dtype)

    def _fqi_forwards(self, module_id: ModuleID):
        """The FQI phase's (training forward, target forward), by ``fqi_matmul_dtype``.

        "float32": the module's own passes. "bfloat16": :func:`mixed_precision_q`
        for each trainable and target network (not for a DDP-wrapped module,
        which ``validate()`` refuses with this setting).
        """
        module = self._unwrapped(module_id)
        forward_train = self._fqi_forward_train(module_id)
        # Not yet a StaQConfig setting (measured option, see the README's Performance).
        dtype = self._module_config(module_id).fqi_matmul_dtype
        if dtype == "float32" or self.module[module_id] is not module:
            return forward_train, module.forward_target
        dtype = getattr(torch, dtype)

        def train(batch):
            obs = batch[Columns.OBS]
            return {
                QF_PREDS: torch.stack([mixed_precision_q(n, obs, dtype) for n in module.q_nets])
            }

        def target(batch):
            obs = batch[Columns.OBS]
            return {
                QF_TARGET_NEXT_PREDS: torch.stack(
                    [mixed_precision_q(n, obs, dtype) for n in module.target_q_nets]
                )
            }

        return train, target

    def _fqi_forward_train(self, module_id: ModuleID):
        """The training forward used at every FQI step.

        A DDP-wrapped module must be called through its wrapper so that the
        gradients sync across learners. A plain one is put in train mode once
        here: RLModule.forward_train sets it again at every call, which walks
        all submodules (~6% of a CPU step).
        """
        module = self._unwrapped(module_id)
        if self.module[module_id] is not module:
            return self.module[module_id].forward_train
        module.train()
        return module._forward_train

    def _apply_fqi_gradients(self, gradients: Dict[str, torch.Tensor]) -> None:
        """Optimizer step of one FQI minibatch, with one finiteness check in all.

        RLlib's ``apply_gradients`` checks each gradient tensor for nan/inf, twice,
        each check a host sync: 17% of a CPU step here and a pipeline stall per
        tensor on a GPU. This does one check over all tensors and keeps RLlib's
        behaviour: nan/inf entries are zeroed (``torch_skip_nan_gradients=False``,
        the default) or the step is skipped (True). Torch LR schedulers and grad
        scalers are left to RLlib's general path.
        """
        if self._grad_scalers is not None or self._lr_scheduler_classes is not None:
            self.apply_gradients(gradients)
            return
        grads = [grad for grad in gradients.values() if grad is not None]
        all_finite = bool(
            torch.stack([torch.linalg.vector_norm(grad) for grad in grads]).isfinite().all()
        )
        if not all_finite:
            if self.config.torch_skip_nan_gradients:
                logger.warning("Skipping an FQI step with nan/inf gradients.")
                return
            logger.warning("Setting nan/inf entries of FQI gradients to zero.")
        for param_ref, grad in gradients.items():
            self._params[param_ref].grad = grad if all_finite else torch.nan_to_num(grad)
        for module_id, optimizer_names in self._module_optimizers.items():
            for optimizer_name in optimizer_names:
                self.get_optimizer(module_id, optimizer_name).step()

    @override(TorchLearner)
    def compute_loss_for_module(
        self, *, module_id: ModuleID, config, batch: Dict[str, Any], fwd_out: Dict[str, Any]
    ) -> torch.Tensor:
        """Sum over ensemble members of the MSE to the shared soft-SARSA target."""
        q_values = fwd_out[QF_PREDS]  # [E, B, A]
        index = batch[Columns.ACTIONS].long().view(1, -1, 1).expand(q_values.shape[0], -1, 1)
        q_taken = q_values.gather(-1, index).squeeze(-1)  # [E, B]
        return ((q_taken - batch[FQI_TARGETS]) ** 2).mean(-1).sum()

    def _fqi_target(self, module_id, module, minibatch, tau: float) -> torch.Tensor:
        """Eq. 8 for a minibatch with REWARDS, TERMINATEDS, NEXT_OBS and NEXT_STACK_SUM
        (and N_STEP_HORIZONS for n-step rows)."""
        rows = self.target_rows(
            module_id,
            module,
            minibatch[Columns.REWARDS],
            minibatch[Columns.TERMINATEDS],
            minibatch[NEXT_STACK_SUM],
            tau,
            minibatch.get(N_STEP_HORIZONS),
        )
        return self._fqi_target_from_rows(module_id, module, minibatch[Columns.NEXT_OBS], rows)

    @torch.no_grad()
    def _fqi_target_from_rows(
        self, module_id, module, next_obs, rows, forward_target=None
    ) -> torch.Tensor:
        """Eq. 8 (:func:`pmd.soft_sarsa_target`, same operations) from :meth:`target_rows`.

        ``y = reward_scale*r + gamma*(1-terminated)*(Qbar(s',a') + tau*H(pi_k(.|s')))``
        with a' ~ pi_k(.|s') (or the expectation over pi_k); ``rows`` ``[B, 3 + A]``.
        """
        config = self._module_config(module_id)
        forward_target = forward_target or module.forward_target
        target_q = forward_target({Columns.OBS: next_obs})[QF_TARGET_NEXT_PREDS]  # [E, B, A]
        if config.ensemble_target == "min":
            target_q = target_q.min(0).values
        else:
            target_q = target_q.mean(0)
        scaled_rewards, discounts, entropy_bonus = rows[:, 0], rows[:, 1], rows[:, 2]
        next_probs = rows[:, 3:]
        if config.expected_next_value:
            next_q = (next_probs * target_q).sum(-1)
        else:
            next_actions = pmd.sample_categorical(next_probs, self._generator)
            next_q = target_q.gather(-1, next_actions).squeeze(-1)
        soft_value = next_q + entropy_bonus
        return scaled_rewards + discounts * soft_value

    # ------------------------------------------------------------------ #
    # The policy update: push (no optimisation).
    # ------------------------------------------------------------------ #
    @override(TorchLearner)
    def after_gradient_based_update(self, *, timesteps: Dict[str, Any]) -> None:
        super().after_gradient_based_update(timesteps=timesteps)
        for module_id in self.module.keys():
            if module_id not in self._tables:
                continue
            with self.metrics.log_time((module_id, PUSH_TIMER), **ITERATION_TIMER):
                self._push_and_log(module_id)
                self._wait_for_device()

    @torch.no_grad()
    def _push_and_log(self, module_id: ModuleID) -> None:
        config = self._module_config(module_id)
        module = self._unwrapped(module_id)
        table = self._tables[module_id]
        tau = self.entropy_coeff(module_id)
        alpha, beta = pmd.pmd_step_sizes(config.kl_coeff, tau)
        # The module's own M (it may come from a per-module spec, not this config).
        correction = pmd.weight_correction(beta, module.stack_size, config.weight_correction)

        # pi_k and pi_{k+1} at every stored next-state come from the cache (kept
        # exact by the push), so the diagnostics need no stack pass.
        sums = table.filled(NEXT_STACK_SUM)
        logits_before = module.logit_scale * sums
        truncation_kl = self._push_with_cache_update(module, table, alpha, beta, correction)
        logits_after = module.logit_scale * sums
        log = self.metrics.log_value
        if truncation_kl is not None:
            log((module_id, TRUNCATION_KL_KEY), truncation_kl, window=1)
        log(
            (module_id, KL_NEW_OLD_KEY),
            pmd.categorical_kl(logits_before, logits_after).mean().item(),
            window=1,
        )
        log(
            (module_id, POLICY_ENTROPY_KEY),
            pmd.categorical_entropy(logits_after).mean().item(),
            window=1,
        )
        log((module_id, STACK_FILL_KEY), module.stack_fill, window=1)
        log((module_id, NUM_PUSHES_KEY), int(module.num_pushes), window=1)
        log((module_id, NUM_GRAD_STEPS_KEY), int(module.num_grad_steps), window=1)
        log((module_id, ALPHA_KEY), alpha, window=1)
        log((module_id, BETA_KEY), beta, window=1)
        log((module_id, ENTROPY_COEFF_KEY), tau, window=1)
        log((module_id, EPSILON_KEY), module.current_epsilon(self._current_env_steps), window=1)
        log((module_id, REPLAY_SIZE_KEY), table.size, window=1)

    @torch.no_grad()
    def _push_with_cache_update(self, module, table, alpha, beta, correction) -> Optional[float]:
        """Push, and update every cached next-state sum with 2 slot passes, not M.

        ``U <- beta * (U - d_evicted * Q_evicted) + Q_new`` mirrors
        ``decay_slots_for_push`` (every slot decays by beta, the evicted slot's
        term leaves, the new member enters with weight 1).

        Returns, for a push that evicts, the mean of ``pmd.truncation_kl`` over
        the stored next-states (from the evicted slot's pass, which the cache
        update needs anyway); None while the stack is not full.
        """
        slot = int(module.num_pushes) % module.stack_size
        evicting = int(module.num_pushes) >= module.stack_size
        evicted_decay = float(module.slot_decay[slot])
        next_obs, sums = table.filled(Columns.NEXT_OBS), table.filled(NEXT_STACK_SUM)
        chunks = [
            slice(s, min(s + LOGITS_CHUNK, table.size)) for s in range(0, table.size, LOGITS_CHUNK)
        ]
        truncation_kl_total = torch.zeros((), device=sums.device)
        if evicting:
            scale_before = float(module.logit_scale)
            for rows in chunks:
                evicted_term = evicted_decay * module.slot_member_sum(next_obs[rows], slot)
                # Summed on the device: one host sync per push, not one per chunk.
                truncation_kl_total += pmd.truncation_kl(
                    scale_before, sums[rows], evicted_term
                ).sum()
                sums[rows] -= evicted_term
        module.push_onto_stack(alpha, beta, correction)
        for rows in chunks:
            sums[rows] = beta * sums[rows] + module.slot_member_sum(next_obs[rows], slot)
        return truncation_kl_total.item() / max(table.size, 1) if evicting else None


def _transition_columns(
    module_batch: Dict[str, torch.Tensor], num_actions: int
) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """The columns FQI needs, and the stack version behind each NEXT_STACK_SUM.

    Rows without an acting output get version -1 (never a real version).
    """
    rewards = module_batch[Columns.REWARDS].float()
    num_rows = rewards.shape[0]
    next_sums = module_batch.get(NEXT_STACK_SUM)
    if next_sums is None:
        next_sums = torch.zeros(num_rows, num_actions, device=rewards.device)
        versions = torch.full((num_rows,), -1, device=rewards.device)
    else:
        versions = module_batch[NEXT_STACK_VERSION].long()
    columns = {
        Columns.OBS: module_batch[Columns.OBS],
        Columns.ACTIONS: module_batch[Columns.ACTIONS].long(),
        Columns.REWARDS: rewards,
        Columns.TERMINATEDS: module_batch[Columns.TERMINATEDS].float(),
        Columns.NEXT_OBS: module_batch[Columns.NEXT_OBS],
        NEXT_STACK_SUM: next_sums.float(),
        N_STEP_HORIZONS: module_batch.get(N_STEP_HORIZONS, torch.ones_like(rewards)).float(),
    }
    return columns, versions


def mixed_precision_q(net, obs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One QNetwork's ``Q(obs, .)`` ``[B, A]`` with its middle layers under autocast to ``dtype``.

    The first layer (it reads the observation; few FLOPs) and the head (its
    outputs are Q-values of up to ~1000 with ``reward_scale`` 10, where bf16's
    8-bit mantissa would round by up to 4) stay float32; every conv or dense
    layer in between runs its matrix products in ``dtype`` (bf16: AMX / AVX512-BF16
    on recent x86 CPUs, tensor cores on GPUs), gradients included. Same layers in
    the same order as ``QNetwork.forward``.
    """
    features = to_network_input(obs, net.image_input)
    device_type = features.device.type
    layers = [*net.convs, None, *net.denses]  # None: the flatten between them
    first = True
    for layer in layers:
        if layer is None:
            features = features.flatten(1)
            continue
        with torch.autocast(device_type, dtype=dtype, enabled=not first and dtype != torch.float32):
            features = net.activation(layer(features))
        first = False
    return net.head(features.float())


def adam(params) -> torch.optim.Adam:
    """``torch.optim.Adam`` in its fused implementation where torch has one for the params' device.

    torch 2.4+ has fused Adam on CPU and CUDA; older versions (and other
    devices) raise at construction and get the default implementation.
    """
    try:
        return torch.optim.Adam(params, fused=True)
    except RuntimeError:
        logger.info(
            "No fused Adam in torch %s for this device; using the default.", torch.__version__
        )
        return torch.optim.Adam(params)


class FlatAdam:
    """Fused Adam over one flat tensor for a module's trainable parameters.

    The parameters, their gradients and Adam's moments become views of flat
    tensors, so an FQI step is one ``zero_`` of the gradients, the backward pass
    (autograd accumulates into the views), one finiteness check and one
    ``torch.optim.adam.adam(fused=True)`` call, without the per-tensor work and
    Python of ``Optimizer.step``. The fused CPU kernel runs vector instructions
    over a tensor's first ``numel // 16 * 16`` elements and scalar ones over the
    rest, and the two round differently in the last bit; so the parameters whose
    size is a multiple of ``ALIGN`` share one flat segment (every element on the
    vector path, as on its own) and each other one (the heads' biases) stays a
    tensor of its own in the call: 1 + E tensors instead of 6E, bit-identical
    to the optimizer's own fused step (tests). The registered optimizer keeps
    its state (its state tensors are the views), so checkpoints see the same
    optimizer state as before; a state loaded into it is copied in at the next
    phase.
    """

    ALIGN = 16  # float32 elements per AVX-512 vector.

    def __init__(self, optimizer: torch.optim.Adam, params):
        self.optimizer = optimizer
        params = list(params)
        # Bulk (multiple-of-ALIGN sizes) first, then each ragged one at an aligned offset.
        self.params = [p for p in params if p.numel() % self.ALIGN == 0]
        self.bulk_size = sum(p.numel() for p in self.params)
        ragged = [p for p in params if p.numel() % self.ALIGN != 0]
        self.params += ragged
        offsets, total = [], 0
        for param in self.params:
            offsets.append(total)
            total += -(-param.numel() // self.ALIGN) * self.ALIGN
        first = self.params[0]
        flats = [torch.zeros(total, dtype=first.dtype, device=first.device) for _ in range(4)]
        self.flat_param, self.flat_grad, self.flat_exp_avg, self.flat_exp_avg_sq = flats
        self.pieces = [slice(o, o + p.numel()) for o, p in zip(offsets, self.params)]
        # The tensors of one kernel call: the bulk segment, then each ragged parameter.
        segments = [slice(0, self.bulk_size)] if self.bulk_size else []
        segments += self.pieces[len(self.params) - len(ragged) :]
        self.segments = [[flat[seg] for seg in segments] for flat in flats]
        self.steps = [torch.zeros((), dtype=torch.float32, device=first.device) for _ in segments]
        # Each parameter's step tensor: its segment's.
        self.param_steps = [self.steps[0]] * (len(self.params) - len(ragged)) + self.steps[
            len(self.steps) - len(ragged) :
        ]
        self.views = []  # (grad, exp_avg, exp_avg_sq) views per parameter
        with torch.no_grad():
            for param, piece in zip(self.params, self.pieces):
                self.flat_param[piece].copy_(param.reshape(-1))
                param.data = self.flat_param[piece].view_as(param)
                self.views.append(tuple(flat[piece].view_as(param) for flat in flats[1:]))

    @staticmethod
    def supports(optimizer) -> bool:
        """One param group of a fused, non-AMSGrad torch Adam over float32 tensors."""
        if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
            return False
        group = optimizer.param_groups[0]
        params = [p for p in group["params"] if p.requires_grad]
        return (
            bool(group.get("fused"))
            and not group["amsgrad"]
            and not group.get("decoupled_weight_decay", False)
            and bool(params)
            and all(p.dtype == torch.float32 and p.device == params[0].device for p in params)
            and not any(isinstance(group[key], torch.Tensor) for key in ("lr", "betas"))
        )

    def is_bound_to(self, optimizer) -> bool:
        """Still this optimizer's parameters, each still a view of the flat tensor."""
        params = [p for p in optimizer.param_groups[0]["params"] if p.requires_grad]
        return (
            optimizer is self.optimizer
            and len(params) == len(self.params)
            and {id(p) for p in params} == {id(p) for p in self.params}
            and all(
                p.data_ptr() == self.flat_param[piece].data_ptr()
                for p, piece in zip(self.params, self.pieces)
            )
        )

    @torch.no_grad()
    def begin_phase(self) -> None:
        """Binds gradients and the optimizer's state to the flat tensors."""
        state = self.optimizer.state
        for param, (grad, exp_avg, exp_avg_sq), step in zip(
            self.params, self.views, self.param_steps
        ):
            param.grad = grad
            entry = state[param]
            if entry.get("exp_avg") is exp_avg and entry.get("step") is step:
                continue
            # A fresh optimizer, or a state set by RLlib (checkpoint restore).
            if "exp_avg" in entry:
                exp_avg.copy_(entry["exp_avg"])
                exp_avg_sq.copy_(entry["exp_avg_sq"])
                step.copy_(entry["step"])
            else:
                exp_avg.zero_()
                exp_avg_sq.zero_()
                step.zero_()
            entry.update(step=step, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)

    def step(self, loss: torch.Tensor, skip_nan_gradients: bool) -> None:
        """Backward and one Adam step; nan/inf gradients handled as in RLlib's path."""
        self.flat_grad.zero_()
        loss.backward()
        self.apply_gradients(skip_nan_gradients)

    def apply_gradients(self, skip_nan_gradients: bool) -> None:
        """One Adam step with the gradients already in the flat tensor."""
        with torch.no_grad():
            # One pass: a nan/inf entry makes the sum nan/inf (``isfinite`` over
            # the tensor takes four passes here, ~10% of a CPU step).
            if not bool(self.flat_grad.sum().isfinite()):
                if skip_nan_gradients:
                    logger.warning("Skipping an FQI step with nan/inf gradients.")
                    return
                logger.warning("Setting nan/inf entries of FQI gradients to zero.")
                self.flat_grad.nan_to_num_()
            group = self.optimizer.param_groups[0]
            beta1, beta2 = group["betas"]
            params, grads, exp_avgs, exp_avg_sqs = self.segments
            functional_adam(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                [],
                self.steps,
                fused=True,
                amsgrad=False,
                beta1=beta1,
                beta2=beta2,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
            )

    def end_phase(self) -> None:
        """Leaves no gradient views on the parameters (RLlib's path sets its own)."""
        for param in self.params:
            param.grad = None
