"""StaQ's learner for a Box action space: one ``update()`` call = one iteration.

For each module, with the new transitions of pi_theta_k:

1. append them to the transition table (actions as float vectors in [-1, 1]^d);
2. FQI: ``grad_steps_per_iteration`` Adam steps of the critic ensemble on
   ``y = reward_scale*r + gamma*(1-terminated)*(agg_e Qbar_e(s', a') - tau*log pi_theta_k(a'|s'))``,
   one fresh ``a' ~ pi_theta_k(.|s')`` per step (pi_0 uniform at k=0);
3. push frozen copies of the critics onto the stack (the discrete ring and decays);
4. fit the actor (warm-started, its own Adam) to ``pi_{k+1} ∝ exp(xi_{k+1})`` with
   ``actor_steps_per_iteration`` steps, by ``actor_fit``:

   - "reverse_kl": the loss ``E_{a~pi_theta}[log pi_theta(a|s) - xi_{k+1}(s, a)]``
     (reparameterised), xi from one batched stacked forward over all S = M*E
     critics at every step, differentiated in the action;
   - "weighted_ml" (MPO-style): xi evaluated once, on ``weighted_ml_states``
     states with ``weighted_ml_actions`` proposal actions each from pi_theta_k;
     the steps maximise the self-normalised importance-weighted log-likelihood
     of those actions (the forward KL), without the stack.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Tuple

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.learner.utils import update_target_network
from ray.rllib.utils.annotations import override
from ray.rllib.utils.typing import ModuleID

from rllib_staq import pmd
from rllib_staq.replay import TransitionTable
from rllib_staq.staq_learner import (
    ALPHA_KEY,
    BETA_KEY,
    ENTROPY_COEFF_KEY,
    EPSILON_KEY,
    FQI_TIMER,
    ITERATION_TIMER,
    KL_NEW_OLD_KEY,
    MEAN_Q_KEY,
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
)
from rllib_staq.torch.continuous_staq_torch_rl_module import QF_PREDS
from rllib_staq.torch.staq_torch_learner import FQI_TARGETS, StaQTorchLearnerBase, adam

logger = logging.getLogger(__name__)

CRITIC_OPTIMIZER = "critic"
ACTOR_OPTIMIZER = "actor"
ACTOR_FIT_TIMER = "actor_fit_timer"
# Reverse-KL loss on fixed probe states and noise before/after the fit: their
# difference is the exact drop of KL(pi_theta || pi_{k+1}) (log Z is fixed).
ACTOR_LOSS_BEFORE_KEY = "actor_loss_before_fit"
ACTOR_LOSS_AFTER_KEY = "actor_loss_after_fit"
ACTOR_LOSS_MEAN_KEY = "actor_loss"
# "weighted_ml" only: Kish's effective sample size of the target set's weights,
# mean over states (out of weighted_ml_actions; near 1 = the proposal barely
# covers the target and the fit follows one action per state).
WEIGHTED_ML_ESS_KEY = "weighted_ml_effective_sample_size"


class ContinuousStaQTorchLearner(StaQTorchLearnerBase):
    @override(TorchLearner)
    def configure_optimizers_for_module(self, module_id: ModuleID, config=None) -> None:
        """Two Adams, as SAC's learner: the critics (``lr``) and the actor (``actor_lr``)."""
        module = self._module[module_id]
        critic_params = self.get_parameters(module.critics)
        actor_params = self.get_parameters(module.actor)
        self.register_optimizer(
            module_id=module_id,
            optimizer_name=CRITIC_OPTIMIZER,
            optimizer=adam(critic_params),
            params=critic_params,
            lr_or_lr_schedule=config.lr,
        )
        self.register_optimizer(
            module_id=module_id,
            optimizer_name=ACTOR_OPTIMIZER,
            optimizer=adam(actor_params),
            params=actor_params,
            lr_or_lr_schedule=config.actor_lr,
        )

    @override(StaQTorchLearnerBase)
    def scaled_entropy_coeff(self, entropy_coeff: float, module_id: ModuleID) -> float:
        """tau, divided by d ln 2 (the entropy of pi_0 on [-1, 1]^d) if configured."""
        return pmd.scaled_box_entropy_coeff(
            entropy_coeff,
            self._unwrapped(module_id).action_dim,
            self._module_config(module_id).scale_entropy_by_log_actions,
        )

    # ------------------------------------------------------------------ #
    # One StaQ iteration.
    # ------------------------------------------------------------------ #
    @override(TorchLearner)
    def _update(self, batch: Dict[str, Any], **kwargs) -> Tuple[Any, Any, Any]:
        loss_per_module = {}
        for module_id, module_batch in batch.items():
            self.add_transitions(module_id, module_batch)
            table = self._table(module_id)
            with self.metrics.log_time((module_id, FQI_TIMER), **ITERATION_TIMER):
                loss_per_module[module_id] = self._run_fqi_phase(module_id, table)
            with self.metrics.log_time((module_id, PUSH_TIMER), **ITERATION_TIMER):
                self._push(module_id)
            with self.metrics.log_time((module_id, ACTOR_FIT_TIMER), **ITERATION_TIMER):
                self._fit_actor(module_id, table)
                self._wait_for_device()
            self._log_iteration(module_id, table)
        return {}, loss_per_module, {}

    def add_transitions(self, module_id: ModuleID, module_batch: Dict[str, Any]) -> None:
        """Appends OBS, ACTIONS ``[n, d]`` (float, in [-1, 1]), REWARDS, TERMINATEDS, NEXT_OBS."""
        table = self._table(module_id)
        columns = {
            Columns.OBS: module_batch[Columns.OBS].float(),
            Columns.ACTIONS: module_batch[Columns.ACTIONS]
            .float()
            .reshape(module_batch[Columns.REWARDS].shape[0], -1),
            Columns.REWARDS: module_batch[Columns.REWARDS].float(),
            Columns.TERMINATEDS: module_batch[Columns.TERMINATEDS].float(),
            Columns.NEXT_OBS: module_batch[Columns.NEXT_OBS].float(),
        }
        for field in (Columns.OBS, Columns.NEXT_OBS, Columns.REWARDS, Columns.ACTIONS):
            if not bool(torch.isfinite(columns[field]).all()):
                raise ValueError(
                    f"StaQ: env {getattr(self.config.env, '__name__', self.config.env)!r} "
                    f"returned a NaN or inf `{field}` (module {module_id!r}); training stops "
                    "before it reaches the replay table or the stack."
                )
        size_before = table.size
        num_added = table.add(columns).shape[0]
        num_evicted = max(0, size_before + num_added - table.capacity)
        log = self.metrics.log_value
        log((module_id, NUM_MODULE_STEPS_STORED), table.size, reduce="sum")
        log((module_id, NUM_MODULE_STEPS_ADDED), num_added, reduce="sum")
        log((module_id, NUM_MODULE_STEPS_ADDED_LIFETIME), num_added, reduce="lifetime_sum")
        log((module_id, NUM_MODULE_STEPS_EVICTED), num_evicted, reduce="sum")
        log((module_id, NUM_MODULE_STEPS_EVICTED_LIFETIME), num_evicted, reduce="lifetime_sum")

    def _run_fqi_phase(self, module_id: ModuleID, table: TransitionTable) -> torch.Tensor:
        config = self._module_config(module_id)
        module = self._unwrapped(module_id)
        tau = self.entropy_coeff(module_id)
        optimizer = self.get_optimizer(module_id, CRITIC_OPTIMIZER)
        steps = config.grad_steps_per_iteration
        td_losses = torch.zeros(steps, device=self.device)
        mean_qs = torch.zeros_like(td_losses)
        grad_steps_before = int(module.stack.num_grad_steps)
        module.train()
        for step in range(steps):
            indices = table.sample_indices(config.train_batch_size_per_learner, self._generator)
            minibatch = table.gather(indices)
            minibatch[FQI_TARGETS] = self.fqi_targets(module_id, module, minibatch, tau)
            fwd_out = module._forward_train(minibatch)
            q_values = fwd_out[QF_PREDS]  # [E, B]
            loss = self.compute_loss_for_module(
                module_id=module_id, config=config, batch=minibatch, fwd_out=fwd_out
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            td_losses[step] = loss.detach() / module.num_q_networks
            mean_qs[step] = q_values.detach().mean()
            if (grad_steps_before + step + 1) % config.target_network_update_freq == 0:
                for main_net, target_net in module.get_target_network_pairs():
                    update_target_network(main_net=main_net, target_net=target_net, tau=config.tau)
        module.stack.num_grad_steps += steps
        num_sampled = steps * config.train_batch_size_per_learner
        self.metrics.log_value((module_id, NUM_MODULE_STEPS_SAMPLED), num_sampled, reduce="sum")
        self.metrics.log_value(
            (module_id, NUM_MODULE_STEPS_SAMPLED_LIFETIME), num_sampled, reduce="lifetime_sum"
        )
        self.metrics.log_value((module_id, TD_LOSS_KEY), td_losses.mean().item(), window=1)
        self.metrics.log_value((module_id, MEAN_Q_KEY), mean_qs.mean().item(), window=1)
        return td_losses.mean()

    @override(TorchLearner)
    def compute_loss_for_module(
        self, *, module_id: ModuleID, config, batch: Dict[str, Any], fwd_out: Dict[str, Any]
    ) -> torch.Tensor:
        """Sum over ensemble members of the MSE to the soft target ``batch[FQI_TARGETS]``."""
        return ((fwd_out[QF_PREDS] - batch[FQI_TARGETS]) ** 2).mean(-1).sum()

    @torch.no_grad()
    def fqi_targets(self, module_id, module, minibatch, tau: float) -> torch.Tensor:
        """The soft target with one ``a' ~ pi_theta_k(.|s')``: ``[B]``."""
        config = self._module_config(module_id)
        next_obs = minibatch[Columns.NEXT_OBS]
        next_actions, next_log_prob = module.sample_actions(next_obs, generator=self._generator)
        target_q = module.critic_values(next_obs, next_actions, target=True)  # [E, B]
        target_q = target_q.min(0).values if config.ensemble_target == "min" else target_q.mean(0)
        return pmd.box_soft_target(
            minibatch[Columns.REWARDS],
            minibatch[Columns.TERMINATEDS],
            target_q,
            next_log_prob,
            entropy_coeff=tau,
            gamma=config.gamma,
            reward_scale=config.reward_scale,
        )

    @torch.no_grad()
    def _push(self, module_id: ModuleID) -> None:
        config = self._module_config(module_id)
        module = self._unwrapped(module_id)
        alpha, beta = pmd.pmd_step_sizes(config.kl_coeff, self.entropy_coeff(module_id))
        correction = pmd.weight_correction(beta, module.stack_size, config.weight_correction)
        module.push_onto_stack(alpha, beta, correction)
        self.metrics.log_value((module_id, ALPHA_KEY), alpha, window=1)
        self.metrics.log_value((module_id, BETA_KEY), beta, window=1)

    def _fit_actor(self, module_id: ModuleID, table: TransitionTable) -> None:
        """``actor_steps_per_iteration`` steps of ``actor_fit`` onto exp(xi_{k+1})."""
        config = self._module_config(module_id)
        module = self._unwrapped(module_id)
        batch_size = config.train_batch_size_per_learner
        # Fixed probe states and noise: the loss there before and after the fit.
        probe_obs = table.gather(table.sample_indices(batch_size, self._generator))[Columns.OBS]
        probe_noise = torch.randn(
            batch_size, module.action_dim, generator=self._generator, device=self.device
        )
        first_fit = module.acts_uniformly
        with torch.no_grad():
            old_mean, old_log_std = module.actor(probe_obs)
            loss_before = self.actor_loss(module, probe_obs, probe_noise).item()
        if config.actor_fit == "weighted_ml":
            losses = self._weighted_ml_steps(module_id, table, first_fit)
        else:
            losses = self._reverse_kl_steps(module_id, table)
        module.num_actor_fits += 1
        with torch.no_grad():
            loss_after = self.actor_loss(module, probe_obs, probe_noise).item()
            mean, log_std = module.actor(probe_obs)
            _, log_prob = pmd.squashed_gaussian_rsample(mean, log_std, probe_noise)
            # KL(pi_theta_k || pi_theta_{k+1}) on the probe states, the discrete
            # key's direction; tanh is invertible, so the squashed KL is the
            # pre-tanh Gaussian one. None at the first fit (pi_0 is uniform).
            kl = (
                float("nan")
                if first_fit
                else pmd.diagonal_gaussian_kl(old_mean, old_log_std, mean, log_std).mean().item()
            )
        log = self.metrics.log_value
        log((module_id, ACTOR_LOSS_BEFORE_KEY), loss_before, window=1)
        log((module_id, ACTOR_LOSS_AFTER_KEY), loss_after, window=1)
        log((module_id, ACTOR_LOSS_MEAN_KEY), losses.mean().item(), window=1)
        log((module_id, KL_NEW_OLD_KEY), kl, window=1)
        log((module_id, POLICY_ENTROPY_KEY), -log_prob.mean().item(), window=1)

    def _reverse_kl_steps(self, module_id: ModuleID, table: TransitionTable) -> torch.Tensor:
        """Reverse-KL Adam steps through the stack (fresh states and noise): ``[steps]`` losses."""
        module = self._unwrapped(module_id)
        batch_size = self._module_config(module_id).train_batch_size_per_learner

        def next_loss() -> torch.Tensor:
            obs = table.gather(table.sample_indices(batch_size, self._generator))[Columns.OBS]
            noise = torch.randn(
                batch_size, module.action_dim, generator=self._generator, device=self.device
            )
            return self.actor_loss(module, obs, noise)

        return self._actor_adam_steps(module_id, next_loss)

    def _weighted_ml_steps(
        self, module_id: ModuleID, table: TransitionTable, first_fit: bool
    ) -> torch.Tensor:
        """MPO-style steps on one fixed, weighted target set: losses ``[steps]``.

        The stack runs once per iteration, forward only, on ``n*N`` state-action
        pairs; the steps then cost an actor forward and backward each. The
        proposal is pi_theta_k (uniform on the box before the first fit), so the
        weights correct from the previous policy to the new target.
        """
        config = self._module_config(module_id)
        module = self._unwrapped(module_id)
        num_states, batch_size = config.weighted_ml_states, config.train_batch_size_per_learner
        obs = table.gather(table.sample_indices(num_states, self._generator))[Columns.OBS]
        with torch.no_grad():
            pre_tanh, proposal_log_prob = self._proposal_actions(
                module,
                obs,
                config.weighted_ml_actions,
                uniform=first_fit,
                uniform_fraction=config.weighted_ml_uniform_fraction,
            )  # [n, N, d], [n, N]
            energy = self._energy_in_chunks(module, obs, torch.tanh(pre_tanh), batch_size)
            weights = pmd.self_normalised_weights(energy, proposal_log_prob)  # [n, N]
        self.metrics.log_value(
            (module_id, WEIGHTED_ML_ESS_KEY),
            pmd.effective_sample_size(weights).mean().item(),
            window=1,
        )

        def next_loss() -> torch.Tensor:
            rows = torch.randint(
                num_states, (batch_size,), generator=self._generator, device=self.device
            )
            mean, log_std = module.actor(obs[rows])
            return pmd.weighted_ml_actor_loss(weights[rows], pre_tanh[rows], mean, log_std)

        return self._actor_adam_steps(module_id, next_loss)

    def _actor_adam_steps(
        self, module_id: ModuleID, next_loss: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """``actor_steps_per_iteration`` actor Adam steps on ``next_loss()``: ``[steps]`` losses."""
        optimizer = self.get_optimizer(module_id, ACTOR_OPTIMIZER)
        losses = torch.zeros(
            self._module_config(module_id).actor_steps_per_iteration, device=self.device
        )
        for step in range(losses.shape[0]):
            loss = next_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[step] = loss.detach()
        return losses

    def _proposal_actions(
        self,
        module,
        obs: torch.Tensor,
        num_actions: int,
        uniform: bool,
        uniform_fraction: float = 0.0,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``num_actions`` pre-tanh samples per state and their log density as actions.

        From the actor (``a = tanh(u)``, squashed density), or uniform on the box
        (``uniform``, before the first fit), or from the defensive mixture
        ``(1 - uniform_fraction) pi_theta + uniform_fraction U`` (each action
        uniform with that probability; its density is the mixture's).
        Returns ``u`` ``[n, N, d]`` and ``log q(a)`` ``[n, N]``.
        """
        shape = (obs.shape[0], num_actions, module.action_dim)
        if uniform:
            return self._uniform_pre_tanh(shape), pmd.uniform_box_log_prob(
                shape, device=self.device
            )
        mean, log_std = module.actor(obs)
        mean, log_std = mean.unsqueeze(1).expand(shape), log_std.unsqueeze(1).expand(shape)
        noise = torch.randn(shape, generator=self._generator, device=self.device)
        pre_tanh, log_prob = pmd.gaussian_rsample(mean, log_std, noise)
        if uniform_fraction == 0.0:  # the plain proposal, and no extra random draws
            return pre_tanh, log_prob - pmd.log_one_minus_tanh_squared(pre_tanh).sum(-1)
        from_uniform = (
            torch.rand(shape[:-1], generator=self._generator, device=self.device) < uniform_fraction
        )
        pre_tanh = torch.where(from_uniform.unsqueeze(-1), self._uniform_pre_tanh(shape), pre_tanh)
        return pre_tanh, self._mixture_log_prob(pre_tanh, mean, log_std, uniform_fraction)

    def _uniform_pre_tanh(self, shape) -> torch.Tensor:
        """``u = atanh(a)`` for ``a ~ U(-1, 1)^d`` kept inside ``|a| <= 1 - 1e-6`` (finite u)."""
        actions = torch.rand(shape, generator=self._generator, device=self.device) * 2 - 1
        return torch.atanh(actions.clamp(-1 + 1e-6, 1 - 1e-6))

    @staticmethod
    def _mixture_log_prob(
        pre_tanh: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor, uniform_fraction: float
    ) -> torch.Tensor:
        """The defensive mixture's log density as actions at ``tanh(u)``: ``[..., d] -> [...]``."""
        policy_log_prob = pmd.gaussian_log_prob(pre_tanh, mean, log_std) - (
            pmd.log_one_minus_tanh_squared(pre_tanh).sum(-1)
        )
        uniform_log_prob = pmd.uniform_box_log_prob(pre_tanh.shape, device=pre_tanh.device)
        return pmd.defensive_mixture_log_prob(policy_log_prob, uniform_log_prob, uniform_fraction)

    @staticmethod
    def _energy_in_chunks(
        module, obs: torch.Tensor, actions: torch.Tensor, states_per_chunk: int
    ) -> torch.Tensor:
        """xi_{k+1} of ``actions`` ``[n, N, d]`` at their states ``obs`` ``[n, D]``: ``[n, N]``.

        In chunks of ``states_per_chunk`` states, so the batched stacked forward's
        ``[S, chunk*N, H]`` features stay bounded at large M.
        """
        num_actions = actions.shape[1]
        chunks = []
        for start in range(0, obs.shape[0], states_per_chunk):
            chunk_obs = obs[start : start + states_per_chunk]
            chunk_actions = actions[start : start + states_per_chunk]
            repeated_obs = chunk_obs.repeat_interleave(num_actions, dim=0)
            energy = module.stack_energy(repeated_obs, chunk_actions.reshape(-1, actions.shape[-1]))
            chunks.append(energy.view(-1, num_actions))
        return torch.cat(chunks)

    @staticmethod
    def actor_loss(module, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Reverse-KL loss (up to E_s log Z) on ``obs`` with the given noise."""
        mean, log_std = module.actor(obs)
        actions, log_prob = pmd.squashed_gaussian_rsample(mean, log_std, noise)
        return pmd.reverse_kl_actor_loss(log_prob, module.stack_energy(obs, actions))

    def _log_iteration(self, module_id: ModuleID, table: TransitionTable) -> None:
        module = self._unwrapped(module_id)
        log = self.metrics.log_value
        log((module_id, STACK_FILL_KEY), module.stack_fill, window=1)
        log((module_id, NUM_PUSHES_KEY), int(module.stack.num_pushes), window=1)
        log((module_id, NUM_GRAD_STEPS_KEY), int(module.stack.num_grad_steps), window=1)
        log((module_id, ENTROPY_COEFF_KEY), self.entropy_coeff(module_id), window=1)
        log((module_id, EPSILON_KEY), module.current_epsilon(self._current_env_steps), window=1)
        log((module_id, REPLAY_SIZE_KEY), table.size, window=1)
