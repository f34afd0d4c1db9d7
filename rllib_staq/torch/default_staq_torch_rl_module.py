"""The StaQ RL module: trainable Q-ensemble, target networks and the frozen stack.

Everything the policy needs (the stacked weights of the last M Q-networks, the
per-slot decays, the logit scale and the push counter) lives in persistent
buffers, so RLlib's weight sync carries it to the EnvRunners and checkpoints
store it. EnvRunners build the module with ``inference_only=True`` and hold only
the stack.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchCategorical
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, QNetAPI, TargetNetworkAPI
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from ray.rllib.models.utils import get_activation_fn
from ray.rllib.utils.annotations import override
from ray.rllib.utils.schedules.scheduler import Scheduler
from torch import nn

from rllib_staq import pmd
from rllib_staq.staq_learner import STACK_SUM, STACK_VERSION

QF_PREDS = "qf_preds"  # [E, B, A] trainable ensemble (forward_train)
# compute_q_values (RLlib's QNetAPI): QF_PREDS is the ensemble mean [B, A], as in
# RLlib's DQN module, and this key holds the members' Q-values [E, B, A].
QF_PREDS_PER_MEMBER = "qf_preds_per_member"
QF_TARGET_NEXT_PREDS = "qf_target_next_preds"  # [E, B, A] target ensemble

_MLP_DEFAULTS = {"fcnet_hiddens": [256, 256], "fcnet_activation": "relu"}
# MinAtar network of the paper: conv 16x3x3 stride 1 -> dense 128 -> head.
_CNN_DEFAULTS = {"conv_filters": [[16, 3, 1]], "head_fcnet_hiddens": [128]}


class QNetwork(nn.Module):
    """One Q-network: optional valid-padding convs, dense layers, linear head.

    The head starts at zero so that the first policy (and every fresh member)
    contributes nothing until trained: pi_0 is uniform.
    """

    def __init__(
        self,
        obs_shape: Tuple[int, ...],
        num_actions: int,
        conv_filters: List[List[int]],
        hiddens: List[int],
        activation: str,
    ):
        super().__init__()
        self.image_input = len(obs_shape) == 3
        self.strides = [stride for _, _, stride in conv_filters]
        self.activation = get_activation_fn(activation, framework="torch")()
        self.convs = nn.ModuleList()
        in_features = obs_shape[0] if len(obs_shape) == 1 else None
        if self.image_input:
            height, width, channels = obs_shape  # RLlib images are channels-last.
            for out_channels, kernel, stride in conv_filters:
                self.convs.append(nn.Conv2d(channels, out_channels, kernel, stride))
                channels = out_channels
                height = (height - kernel) // stride + 1
                width = (width - kernel) // stride + 1
            in_features = channels * height * width
        self.denses = nn.ModuleList()
        for units in hiddens:
            self.denses.append(nn.Linear(in_features, units))
            in_features = units
        self.head = nn.Linear(in_features, num_actions)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        features = to_network_input(obs, self.image_input)
        for conv in self.convs:
            features = self.activation(conv(features))
        features = features.flatten(1)
        for dense in self.denses:
            features = self.activation(dense(features))
        return self.head(features)


def to_network_input(obs: torch.Tensor, image_input: bool) -> torch.Tensor:
    """Float input; images go from RLlib's [B, H, W, C] to torch's [B, C, H, W]."""
    obs = obs.float()
    return obs.permute(0, 3, 1, 2) if image_input else obs


def check_state_shapes(module: TorchRLModule, state: Dict[str, Any], settings: str = "") -> None:
    """ValueError naming the first tensor of ``state`` whose shape differs from the
    module's (a checkpoint of another stack_size, num_q_networks or network)."""
    own = module.state_dict()
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(np.shape(value)):
            raise ValueError(
                f"Mismatched StaQ checkpoint: `{key}` has shape {tuple(np.shape(value))}, "
                f"this module expects {tuple(own[key].shape)} (stack_size="
                f"{module.stack_size}, num_q_networks={module.num_q_networks}"
                f"{', ' + settings if settings else ''}). Build the algorithm with the "
                "checkpoint's settings."
            )


class DefaultStaQTorchRLModule(TorchRLModule, TargetNetworkAPI, InferenceOnlyAPI, QNetAPI):
    """Q-ensemble (trainable + target) and the frozen stack of the last M members.

    ``model_config`` keys (RLlib's ``DefaultModelConfig`` names): ``fcnet_hiddens``,
    ``fcnet_activation``, ``conv_filters`` (``[[out, kernel, stride], ...]``),
    ``head_fcnet_hiddens`` (dense layers after the convs); StaQ keys come from
    ``StaQConfig._model_config_auto_includes``.
    """

    @override(RLModule)
    def setup(self):
        if not isinstance(self.action_space, gym.spaces.Discrete):
            raise ValueError(f"StaQ supports only Discrete action spaces, got {self.action_space}.")
        config = self.model_config
        self.num_actions = int(self.action_space.n)
        self.stack_size = int(config.get("stack_size", 300))
        self.num_q_networks = int(config.get("num_q_networks", 2))
        self._epsilon_schedule = Scheduler(config.get("epsilon", 0.05))
        self._network_kwargs = self._network_kwargs_from_config(config)
        template = QNetwork(**self._network_kwargs)
        self.image_input = template.image_input
        self.conv_strides = template.strides
        self.activation = template.activation
        self.param_names = [name for name, _ in template.named_parameters()]

        # The frozen stack, slot-major: member e of slot j is row j*E + e, so the
        # first `fill` slots are one contiguous slice. Only an EnvRunner's copy
        # (inference-only) may store its hidden layers in `stack_dtype`: the
        # learner's stack feeds the cached next-state sums and the FQI targets.
        rows = self.stack_size * self.num_q_networks
        hidden_dtype = _STACK_DTYPES[config.get("stack_dtype", "float32")]
        first_layer_name = self.param_names[0].rsplit(".", 1)[0]
        self.low_precision_stack = self.inference_only and hidden_dtype != torch.float32
        for name, param in template.named_parameters():
            # The first layer (it reads the observation; few weights) and the
            # output layer stay float32: see pmd.mixed_precision_stacked_forward.
            layer = name.rsplit(".", 1)[0]
            reduced = layer.split(".")[0] in ("denses", "convs") and layer != first_layer_name
            dtype = hidden_dtype if self.low_precision_stack and reduced else None
            self.register_buffer(
                _stack_buffer_name(name), torch.zeros(rows, *param.shape, dtype=dtype)
            )
        self.register_buffer("slot_decay", torch.zeros(self.stack_size))
        self.register_buffer("logit_scale", torch.zeros(()))
        self.register_buffer("num_pushes", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_grad_steps", torch.zeros((), dtype=torch.long))

        if not self.inference_only:
            self.q_nets = nn.ModuleList(
                [template]
                + [QNetwork(**self._network_kwargs) for _ in range(self.num_q_networks - 1)]
            )

    def _network_kwargs_from_config(self, config: Dict[str, Any]) -> Dict[str, Any]:
        obs_shape = tuple(self.observation_space.shape)
        if len(obs_shape) not in (1, 3):
            raise ValueError(
                "StaQ's default module needs a flat (1D) or image (H, W, C) Box "
                f"observation space, got shape {obs_shape}."
            )
        image = len(obs_shape) == 3
        if image:
            conv_filters = config.get("conv_filters") or _CNN_DEFAULTS["conv_filters"]
            hiddens = config.get("head_fcnet_hiddens") or _CNN_DEFAULTS["head_fcnet_hiddens"]
            activation = config.get("conv_activation", "relu")
        else:
            conv_filters = []
            hiddens = config.get("fcnet_hiddens") or _MLP_DEFAULTS["fcnet_hiddens"]
            activation = config.get("fcnet_activation", _MLP_DEFAULTS["fcnet_activation"])
        return dict(
            obs_shape=obs_shape,
            num_actions=int(self.action_space.n),
            conv_filters=[list(f) for f in conv_filters],
            hiddens=list(hiddens),
            activation=activation,
        )

    # ------------------------------------------------------------------ #
    # The stack.
    # ------------------------------------------------------------------ #
    @property
    def stack_fill(self) -> int:
        return min(int(self.num_pushes), self.stack_size)

    def stack_buffer(self, param_name: str) -> torch.Tensor:
        return getattr(self, _stack_buffer_name(param_name))

    def _stacked_layers(self, rows: slice):
        """The stack's layers restricted to ``rows`` (in pmd.stacked_forward form)."""
        convs = [
            (
                self.stack_buffer(f"convs.{i}.weight")[rows],
                self.stack_buffer(f"convs.{i}.bias")[rows],
                stride,
            )
            for i, stride in enumerate(self.conv_strides)
        ]
        num_dense = sum(name.startswith("denses.") for name in self.param_names) // 2
        denses = [
            (
                self.stack_buffer(f"denses.{i}.weight")[rows],
                self.stack_buffer(f"denses.{i}.bias")[rows],
            )
            for i in range(num_dense)
        ]
        head = (self.stack_buffer("head.weight")[rows], self.stack_buffer("head.bias")[rows])
        return convs, denses, head

    def stack_logits(self, obs: torch.Tensor) -> torch.Tensor:
        """xi_k(obs): the weighted sum of all stacked members, ``[B, A]``."""
        return self.logit_scale * self.unscaled_stack_sum(obs)

    def unscaled_stack_sum(self, obs: torch.Tensor) -> torch.Tensor:
        """``sum_j decay_j sum_e Q_{j,e}(obs)``: xi_k / logit_scale, ``[B, A]``.

        The learner caches this per transition (it does not change when tau, and
        with it the logit scale, changes).
        """
        fill = self.stack_fill
        return self._weighted_slots(obs, 0, fill, self.slot_decay[:fill])

    def slot_member_sum(self, obs: torch.Tensor, slot: int) -> torch.Tensor:
        """``sum_e Q_{slot,e}(obs)``: one slot's ensemble, unweighted, ``[B, A]``."""
        return self._weighted_slots(obs, slot, slot + 1, torch.ones(1, device=obs.device))

    def _weighted_slots(
        self, obs: torch.Tensor, first: int, stop: int, slot_coeffs: torch.Tensor
    ) -> torch.Tensor:
        """``sum_{j in [first, stop)} c_j sum_e Q_{j,e}(obs)`` in one batched pass."""
        if stop <= first:
            return torch.zeros(obs.shape[0], self.num_actions, device=obs.device)
        rows = slice(first * self.num_q_networks, stop * self.num_q_networks)
        convs, denses, (head_w, head_b) = self._stacked_layers(rows)
        forward = (
            pmd.mixed_precision_stacked_forward if self.low_precision_stack else pmd.stacked_forward
        )
        return forward(
            to_network_input(obs, self.image_input),
            convs,
            denses,
            head_w,
            head_b,
            # Each slot's coefficient is shared by its E members.
            slot_coeffs.repeat_interleave(self.num_q_networks),
            self.activation,
        )

    @torch.no_grad()
    def push_onto_stack(self, alpha: float, beta: float, correction: float) -> int:
        """Pushes frozen copies of the trainable ensemble; returns the slot used.

        Old members decay by ``beta`` (``decay_slots_for_push``); the oldest is
        overwritten once M members are stored; the logit scale becomes
        ``alpha * correction / E`` (ensemble mean of the members' logits).
        """
        new_decay, slot = pmd.decay_slots_for_push(self.slot_decay, int(self.num_pushes), beta)
        self.slot_decay.copy_(new_decay)
        for member, net in enumerate(self.q_nets):
            row = slot * self.num_q_networks + member
            for name, param in net.named_parameters():
                self.stack_buffer(name)[row].copy_(param)
        self.logit_scale.fill_(alpha * correction / self.num_q_networks)
        self.num_pushes += 1
        return slot

    # ------------------------------------------------------------------ #
    # RLModule forward passes.
    # ------------------------------------------------------------------ #
    @torch.no_grad()
    def _acting_stack_outputs(self, obs: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """The logits xi_k(obs) and the extra outputs that let the learner reuse them."""
        if not bool(torch.isfinite(obs).all()):
            # Else the sampling fails deep inside torch with an unclear message.
            raise ValueError(
                "StaQ: an observation with NaN or inf reached the policy (field `obs`); "
                "the env returned it. Fix the env or wrap it to clean the value."
            )
        stack_sum = self.unscaled_stack_sum(obs)
        # The learner reuses the acting sums as its cached next-state sums; a
        # reduced-precision stack's sums are not exact, so the learner computes
        # those rows itself from its float32 stack.
        extra = (
            {}
            if self.low_precision_stack
            else {STACK_SUM: stack_sum, STACK_VERSION: self.num_pushes.expand(obs.shape[0])}
        )
        return self.logit_scale * stack_sum, extra

    @override(RLModule)
    def _forward_inference(self, batch: Dict[str, Any], **kwargs) -> Dict[str, Any]:
        logits, extra = self._acting_stack_outputs(batch[Columns.OBS])
        # Greedy evaluation: argmax of the PMD logits.
        return {Columns.ACTIONS: logits.argmax(-1), Columns.ACTION_DIST_INPUTS: logits, **extra}

    @override(RLModule)
    def _forward_exploration(
        self, batch: Dict[str, Any], t: Optional[int] = None, **kwargs
    ) -> Dict[str, Any]:
        logits, extra = self._acting_stack_outputs(batch[Columns.OBS])
        probs = pmd.epsilon_softmax_probs(logits, self.current_epsilon(t))
        # Sampled here, as DQN's module does: RLlib's GetActions connector would
        # build a Categorical distribution per env step for the same draw (13%
        # of the EnvRunner's time per env step at M=1, one env). The draw is
        # torch.multinomial's, without its input checks (8 instead of 20 µs).
        actions = pmd.sample_categorical(probs).squeeze(-1)
        log_probs = probs.log()
        return {
            Columns.ACTIONS: actions,
            Columns.ACTION_LOGP: log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1),
            Columns.ACTION_DIST_INPUTS: log_probs,
            **extra,
        }

    def current_epsilon(self, t: Optional[int]) -> float:
        if t is None or not self._epsilon_schedule.use_schedule:
            return float(self._epsilon_schedule.get_current_value())
        return float(self._epsilon_schedule.update(t))

    @override(RLModule)
    def _forward_train(self, batch: Dict[str, Any], **kwargs) -> Dict[str, Any]:
        obs = batch[Columns.OBS]
        return {QF_PREDS: torch.stack([net(obs) for net in self.q_nets])}

    @override(QNetAPI)
    def compute_q_values(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """Q(obs, .) of the trainable ensemble (the Q-network FQI is fitting now).

        Returns ``QF_PREDS`` ``[B, A]`` (the mean over the E members, which is
        what the target's ``ensemble_target="mean"`` uses) and
        ``QF_PREDS_PER_MEMBER`` ``[E, B, A]``. The policy itself is the stack
        (``stack_logits``), not these Q-values. Gradients flow as in any forward
        pass: wrap the call in ``torch.no_grad()`` to only read the values.
        """
        if self.inference_only:
            raise ValueError(
                "StaQ: this RL module is inference-only (an EnvRunner's copy holds the "
                "stack, not the trainable Q-networks); call compute_q_values on the "
                "Learner's module, e.g. algo.learner_group.foreach_learner(lambda learner: "
                "learner.module[module_id].unwrapped().compute_q_values(batch))."
            )
        per_member = torch.stack([net(batch[Columns.OBS]) for net in self.q_nets])
        return {QF_PREDS: per_member.mean(0), QF_PREDS_PER_MEMBER: per_member}

    @override(TorchRLModule)
    def set_state(self, state: Dict[str, Any]) -> None:
        """Refuses a state whose stack or networks have other shapes, naming why."""
        check_state_shapes(self, state, f"model {self._network_kwargs}")
        super().set_state(state)

    # ------------------------------------------------------------------ #
    # TargetNetworkAPI / InferenceOnlyAPI.
    # ------------------------------------------------------------------ #
    @override(TargetNetworkAPI)
    def make_target_networks(self) -> None:
        self.target_q_nets = copy.deepcopy(self.q_nets)
        for param in self.target_q_nets.parameters():
            param.requires_grad_(False)

    @override(TargetNetworkAPI)
    def get_target_network_pairs(self) -> List[Tuple[nn.Module, nn.Module]]:
        return [(self.q_nets, self.target_q_nets)]

    @override(TargetNetworkAPI)
    def forward_target(self, batch: Dict[str, Any], **kwargs) -> Dict[str, Any]:
        obs = batch[Columns.OBS]
        return {QF_TARGET_NEXT_PREDS: torch.stack([net(obs) for net in self.target_q_nets])}

    @override(InferenceOnlyAPI)
    def get_non_inference_attributes(self) -> List[str]:
        return ["q_nets", "target_q_nets"]

    @override(RLModule)
    def get_exploration_action_dist_cls(self):
        return TorchCategorical

    @override(RLModule)
    def get_inference_action_dist_cls(self):
        return TorchCategorical

    @override(RLModule)
    def get_train_action_dist_cls(self):
        return TorchCategorical


_STACK_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _stack_buffer_name(param_name: str) -> str:
    return "stack_" + param_name.replace(".", "_")
