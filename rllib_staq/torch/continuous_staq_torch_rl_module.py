"""The continuous-action (Box) StaQ RL module: actor, critic ensemble and the stack.

Actions live in RLlib's normalised box [-1, 1]^d (``NormalizeAndClipActions``
maps them to the env's bounds). The policy pi_theta is a tanh-squashed Gaussian
actor fitted to the stack's energy ``xi_{k+1}(s, a)`` (``rllib_staq/continuous.py``);
before the first fit (``num_actor_fits == 0``) the policy is pi_0, uniform on
the box. Only the actor and that counter reach the EnvRunners: the critics,
their targets and the stack are non-inference attributes.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Tuple

import gymnasium as gym
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchSquashedGaussian
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, TargetNetworkAPI
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from ray.rllib.models.utils import get_activation_fn
from ray.rllib.utils.annotations import override
from ray.rllib.utils.schedules.scheduler import Scheduler
from torch import nn

from rllib_staq import pmd
from rllib_staq.continuous import box_action_space_error
from rllib_staq.torch.default_staq_torch_rl_module import check_state_shapes

QF_PREDS = "qf_preds"  # [E, B] critics at (obs, actions) (forward_train)
_MLP_DEFAULTS = {"fcnet_hiddens": [256, 256], "fcnet_activation": "relu"}
# SAC's bounds on the pre-tanh log standard deviation (RLlib's SAC uses the same).
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


class Critic(nn.Module):
    """Q(s, a): an MLP on cat(s, a) with a linear head (zero-initialised: xi starts at 0)."""

    def __init__(self, in_features: int, hiddens: List[int], activation: Callable):
        super().__init__()
        self.activation = activation
        self.denses = nn.ModuleList()
        for units in hiddens:
            self.denses.append(nn.Linear(in_features, units))
            in_features = units
        self.head = nn.Linear(in_features, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, obs_actions: torch.Tensor) -> torch.Tensor:
        features = obs_actions
        for dense in self.denses:
            features = self.activation(dense(features))
        return self.head(features).squeeze(-1)  # [B]


class GaussianActor(nn.Module):
    """obs -> (mean, log_std) of the pre-tanh Gaussian, each ``[B, d]``."""

    def __init__(self, obs_dim: int, action_dim: int, hiddens: List[int], activation: Callable):
        super().__init__()
        layers: List[nn.Module] = []
        in_features = obs_dim
        for units in hiddens:
            layers += [nn.Linear(in_features, units), activation]
            in_features = units
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_features, 2 * action_dim)

    def forward(self, obs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.head(self.body(obs)).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)


class _Stack(nn.Module):
    """Buffers of the frozen critics (slot-major rows j*E + e) and their weights."""


class ContinuousStaQTorchRLModule(TorchRLModule, TargetNetworkAPI, InferenceOnlyAPI):
    """StaQ for a 1-D Box action space (``model_config`` as the discrete module's MLP)."""

    @override(RLModule)
    def setup(self):
        space = self.action_space
        if not isinstance(space, gym.spaces.Box) or box_action_space_error(space):
            raise ValueError(
                box_action_space_error(space)
                if isinstance(space, gym.spaces.Box)
                else f"ContinuousStaQTorchRLModule needs a Box action space, got {space}."
            )
        obs_shape = tuple(self.observation_space.shape)
        if len(obs_shape) != 1:
            raise ValueError(
                "StaQ's continuous module needs a flat (1-D) Box observation space, got "
                f"shape {obs_shape}."
            )
        config = self.model_config
        self.obs_dim = int(obs_shape[0])
        self.action_dim = int(space.shape[0])
        self.stack_size = int(config.get("stack_size", 300))
        self.num_q_networks = int(config.get("num_q_networks", 2))
        self._epsilon_schedule = Scheduler(config.get("epsilon", 0.05))
        hiddens = list(config.get("fcnet_hiddens") or _MLP_DEFAULTS["fcnet_hiddens"])
        activation_name = config.get("fcnet_activation", _MLP_DEFAULTS["fcnet_activation"])
        self.activation = get_activation_fn(activation_name, framework="torch")()
        self._network_kwargs = dict(
            in_features=self.obs_dim + self.action_dim, hiddens=hiddens, activation=self.activation
        )
        self.actor = GaussianActor(self.obs_dim, self.action_dim, hiddens, self.activation)
        # Number of actor fits so far (k): 0 means pi_0 (uniform). Synced to EnvRunners.
        self.register_buffer("num_actor_fits", torch.zeros((), dtype=torch.long))
        if self.inference_only:
            return
        template = Critic(**self._network_kwargs)
        self.param_names = [name for name, _ in template.named_parameters()]
        self.num_dense = len(hiddens)
        self.stack = _Stack()
        rows = self.stack_size * self.num_q_networks
        for name, param in template.named_parameters():
            self.stack.register_buffer(_buffer_name(name), torch.zeros(rows, *param.shape))
        self.stack.register_buffer("slot_decay", torch.zeros(self.stack_size))
        self.stack.register_buffer("logit_scale", torch.zeros(()))
        self.stack.register_buffer("num_pushes", torch.zeros((), dtype=torch.long))
        self.stack.register_buffer("num_grad_steps", torch.zeros((), dtype=torch.long))
        self.critics = nn.ModuleList(
            [template] + [Critic(**self._network_kwargs) for _ in range(self.num_q_networks - 1)]
        )

    # ------------------------------------------------------------------ #
    # The policy.
    # ------------------------------------------------------------------ #
    @property
    def acts_uniformly(self) -> bool:
        """pi_0 (uniform on the box) until the first actor fit."""
        return int(self.num_actor_fits) == 0

    def sample_actions(
        self, obs: torch.Tensor, noise: Optional[torch.Tensor] = None, generator=None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``a ~ pi_theta_k(.|obs)`` reparameterised, with ``log pi(a|obs)``: ``[B, d], [B]``.

        Uniform on [-1, 1]^d (log density -d ln 2) before the first actor fit.
        """
        shape = (obs.shape[0], self.action_dim)
        if self.acts_uniformly:
            actions = torch.rand(shape, generator=generator, device=obs.device) * 2.0 - 1.0
            return actions, pmd.uniform_box_log_prob(shape, device=obs.device)
        mean, log_std = self.actor(obs.float())
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=obs.device)
        return pmd.squashed_gaussian_rsample(mean, log_std, noise)

    @torch.no_grad()
    def _checked_obs(self, obs: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(obs).all()):
            raise ValueError(
                "StaQ: an observation with NaN or inf reached the policy (field `obs`); "
                "the env returned it. Fix the env or wrap it to clean the value."
            )
        return obs.float()

    @override(RLModule)
    def _forward_inference(self, batch: Dict[str, Any], **kwargs) -> Dict[str, Any]:
        """Greedy action ``tanh(mean)`` (0, the box centre, before the first fit)."""
        obs = self._checked_obs(batch[Columns.OBS])
        with torch.no_grad():
            mean, log_std = self.actor(obs)
            actions = torch.tanh(mean) if not self.acts_uniformly else torch.zeros_like(mean)
        return {
            Columns.ACTIONS: actions,
            Columns.ACTION_DIST_INPUTS: torch.cat([mean, log_std], -1),
        }

    @override(RLModule)
    def _forward_exploration(
        self, batch: Dict[str, Any], t: Optional[int] = None, **kwargs
    ) -> Dict[str, Any]:
        """``a ~ pi_theta_k``; with probability epsilon a uniform action instead."""
        obs = self._checked_obs(batch[Columns.OBS])
        with torch.no_grad():
            mean, log_std = self.actor(obs)
            actions, _ = self.sample_actions(obs)
            uniform = torch.rand(obs.shape[0], device=obs.device) < self.current_epsilon(t)
            if bool(uniform.any()):
                actions[uniform] = torch.rand_like(actions[uniform]) * 2.0 - 1.0
        return {
            Columns.ACTIONS: actions,
            Columns.ACTION_DIST_INPUTS: torch.cat([mean, log_std], -1),
        }

    def current_epsilon(self, t: Optional[int]) -> float:
        if t is None or not self._epsilon_schedule.use_schedule:
            return float(self._epsilon_schedule.get_current_value())
        return float(self._epsilon_schedule.update(t))

    # ------------------------------------------------------------------ #
    # Critics and the stack (learner side only).
    # ------------------------------------------------------------------ #
    def critic_values(
        self, obs: torch.Tensor, actions: torch.Tensor, target: bool = False
    ) -> torch.Tensor:
        """``Q_e(obs, actions)`` of the trainable (or target) ensemble: ``[E, B]``."""
        nets = self.target_critics if target else self.critics
        obs_actions = torch.cat([obs.float(), actions.float()], -1)
        return torch.stack([net(obs_actions) for net in nets])

    @property
    def stack_fill(self) -> int:
        return min(int(self.stack.num_pushes), self.stack_size)

    def stack_buffer(self, param_name: str) -> torch.Tensor:
        return getattr(self.stack, _buffer_name(param_name))

    def stack_energy(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        forward: Callable[..., torch.Tensor] = pmd.stacked_forward,
    ) -> torch.Tensor:
        """``xi_{k+1}(obs, actions)`` from the whole stack in one batched pass: ``[B]``.

        ``logit_scale * sum_j decay_j sum_e Q_{j,e}`` with
        ``logit_scale = alpha * c / E`` (Eq. 7 of the paper, ensemble mean). It
        is differentiable in ``actions`` (the stack itself is frozen buffers).
        ``forward`` is one of pmd's exact forms (default: picked by device and batch).
        """
        fill = self.stack_fill
        if fill == 0:
            return torch.zeros(obs.shape[0], device=obs.device, dtype=actions.dtype)
        rows = slice(0, fill * self.num_q_networks)
        denses = [
            (
                self.stack_buffer(f"denses.{i}.weight")[rows],
                self.stack_buffer(f"denses.{i}.bias")[rows],
            )
            for i in range(self.num_dense)
        ]
        coeffs = self.stack.slot_decay[:fill].repeat_interleave(self.num_q_networks)
        obs_actions = torch.cat([obs.to(actions.dtype), actions], -1)
        total = forward(
            obs_actions,
            [],
            denses,
            self.stack_buffer("head.weight")[rows],
            self.stack_buffer("head.bias")[rows],
            coeffs,
            self.activation,
        )  # [B, 1]
        return self.stack.logit_scale * total.squeeze(-1)

    @torch.no_grad()
    def push_onto_stack(self, alpha: float, beta: float, correction: float) -> int:
        """Frozen copies of the critics onto the ring (as the discrete module's push)."""
        stack = self.stack
        new_decay, slot = pmd.decay_slots_for_push(stack.slot_decay, int(stack.num_pushes), beta)
        stack.slot_decay.copy_(new_decay)
        for member, net in enumerate(self.critics):
            row = slot * self.num_q_networks + member
            for name, param in net.named_parameters():
                self.stack_buffer(name)[row].copy_(param)
        stack.logit_scale.fill_(alpha * correction / self.num_q_networks)
        stack.num_pushes += 1
        return slot

    @override(RLModule)
    def _forward_train(self, batch: Dict[str, Any], **kwargs) -> Dict[str, Any]:
        return {QF_PREDS: self.critic_values(batch[Columns.OBS], batch[Columns.ACTIONS])}

    @override(TorchRLModule)
    def set_state(self, state: Dict[str, Any]) -> None:
        """Refuses a state whose networks or stack have other shapes, naming why."""
        check_state_shapes(self, state)
        super().set_state(state)

    # ------------------------------------------------------------------ #
    # TargetNetworkAPI / InferenceOnlyAPI / distributions.
    # ------------------------------------------------------------------ #
    @override(TargetNetworkAPI)
    def make_target_networks(self) -> None:
        self.target_critics = copy.deepcopy(self.critics)
        for param in self.target_critics.parameters():
            param.requires_grad_(False)

    @override(TargetNetworkAPI)
    def get_target_network_pairs(self) -> List[Tuple[nn.Module, nn.Module]]:
        return [(self.critics, self.target_critics)]

    @override(TargetNetworkAPI)
    def forward_target(self, batch: Dict[str, Any], **kwargs) -> Dict[str, Any]:
        return {
            QF_PREDS: self.critic_values(batch[Columns.OBS], batch[Columns.ACTIONS], target=True)
        }

    @override(InferenceOnlyAPI)
    def get_non_inference_attributes(self) -> List[str]:
        return ["critics", "target_critics", "stack"]

    # ACTION_DIST_INPUTS are (mean, log_std) of this distribution; acting returns
    # ACTIONS itself (epsilon mixes in uniform actions the distribution lacks).
    @override(RLModule)
    def get_exploration_action_dist_cls(self):
        return TorchSquashedGaussian

    @override(RLModule)
    def get_inference_action_dist_cls(self):
        return TorchSquashedGaussian

    @override(RLModule)
    def get_train_action_dist_cls(self):
        return TorchSquashedGaussian


def _buffer_name(param_name: str) -> str:
    return param_name.replace(".", "_")
