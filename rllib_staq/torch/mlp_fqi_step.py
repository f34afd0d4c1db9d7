"""The FQI step of an MLP Q-ensemble with its gradients written out (no autograd).

An FQI phase is thousands of identical steps on small networks (2x256 by
default). On a CPU, autograd's graph, its allocation of every intermediate and
its per-op dispatch cost a large share of such a step besides the matrix products
(``python benchmarks/throughput.py --part fqi-step`` measures the two paths side
by side). :class:`MlpFqiStep` runs the products and elementwise ops that
autograd runs for the learner's loss, in the same order and with the same
kernels, into buffers allocated once per phase. The gradients, and so whole
phases, are bit-identical to the autograd path (``tests/test_fqi_step.py``).

With ``fqi_matmul_dtype="bfloat16"`` it runs the casts and bf16 products that
autograd runs under autocast (``mixed_precision_q``), bit-identically too.

Used only where that holds: the package's own ``QNetwork`` without
convolutions, with ReLU, in the package's own module and learner code (a
subclass that changes the forward pass or the loss keeps autograd), a
:class:`FlatAdam` that owns the gradient tensors, and a CPU learner (the
learner decides, ``StaQTorchLearner._mlp_fqi_step``).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from ray.rllib.core.columns import Columns
from torch import nn

from rllib_staq.torch.default_staq_torch_rl_module import (
    QF_TARGET_NEXT_PREDS,
    DefaultStaQTorchRLModule,
    QNetwork,
    to_network_input,
)

# One layer's (weight [out, in], bias [out]), input layer first, head last.
Layers = List[Tuple[torch.Tensor, torch.Tensor]]


def _layers(net: QNetwork) -> Layers:
    dense_layers = [(dense.weight, dense.bias) for dense in net.denses]
    return dense_layers + [(net.head.weight, net.head.bias)]


def _is_plain_relu_mlp(net: nn.Module) -> bool:
    return type(net) is QNetwork and not net.convs and type(net.activation) is nn.ReLU


class MlpFqiStep:
    """Forward passes and loss gradients of one FQI phase for an MLP Q-ensemble.

    ``forward_target`` and ``forward_train`` give what the module's
    ``forward_target`` and ``_forward_train`` give (``[E, B, A]``);
    ``write_gradients`` puts the gradients of the learner's loss (summed squared
    TD error of each member, averaged over the batch) into the parameters'
    ``.grad`` tensors, which the caller's :class:`FlatAdam` owns. The returned
    tensors are buffers that the next call overwrites.
    """

    @staticmethod
    def supports(module: nn.Module) -> bool:
        """The package's module class with plain ReLU MLP networks (trainable and target)."""
        module_class = type(module)
        return (
            isinstance(module, DefaultStaQTorchRLModule)
            and module_class._forward_train is DefaultStaQTorchRLModule._forward_train
            and module_class.forward_target is DefaultStaQTorchRLModule.forward_target
            and len(module.q_nets) == len(module.target_q_nets) > 0
            and all(_is_plain_relu_mlp(net) for net in (*module.q_nets, *module.target_q_nets))
        )

    def __init__(
        self, module: nn.Module, batch_size: int, matmul_dtype: torch.dtype = torch.float32
    ):
        self.members = [_layers(net) for net in module.q_nets]
        self.target_members = [_layers(net) for net in module.target_q_nets]
        if any(param.grad is None for layers in self.members for pair in layers for param in pair):
            raise ValueError("MlpFqiStep writes into existing .grad tensors (FlatAdam's views).")
        num_members, num_actions = len(self.members), module.num_actions
        widths = [weight.shape[0] for weight, _ in self.members[0][:-1]]
        # Each hidden layer's product dtype: as mixed_precision_q (the learner's
        # fqi_matmul_dtype), the first layer float32 and the ones after it in
        # matmul_dtype; the head always float32.
        dtypes = [torch.float32] + [matmul_dtype] * (len(widths) - 1)
        device = self.members[0][0][0].device

        def empty(*shape, dtype=torch.float32):
            return torch.empty(*shape, device=device, dtype=dtype)

        # Each trainable member's post-ReLU features (kept for its backward pass).
        self.features = [
            [empty(batch_size, w, dtype=d) for w, d in zip(widths, dtypes)] for _ in self.members
        ]
        # The target members' features are not kept: one set serves them all.
        self.target_features = [empty(batch_size, w, dtype=d) for w, d in zip(widths, dtypes)]
        self.feature_grads = [empty(batch_size, w) for w in widths]  # float32 layers' only
        self.q_values = empty(num_members, batch_size, num_actions)
        self.target_q_values = empty(num_members, batch_size, num_actions)
        self.q_grads = empty(num_members, batch_size, num_actions)
        # Autograd's mean backward: the float32 quotient 1/B (torch's mean_backward).
        self.inv_batch_size = torch.ones((), device=device) / batch_size
        self.obs = None
        self.products = []  # per member and layer: (weight, input) as multiplied

    @staticmethod
    def _forward(layers: Layers, obs: torch.Tensor, features, out: torch.Tensor) -> list:
        """``QNetwork.forward`` (``F.linear`` is ``addmm(bias, x, W.t())``), or
        ``mixed_precision_q`` where a feature buffer is not float32: autocast
        casts the bias, input and weight of such a layer to its dtype, and the
        head reads the features cast back. Returns each layer's (weight, input)
        as multiplied."""
        x, products = obs, []
        for (weight, bias), feature in zip(layers[:-1], features):
            dtype = feature.dtype
            weight, x_in = weight.to(dtype), x.to(dtype)  # no-ops for float32
            x = torch.addmm(bias.to(dtype), x_in, weight.t(), out=feature).relu_()
            products.append((weight, x_in))
        weight, bias = layers[-1]
        x = x.float()
        torch.addmm(bias, x, weight.t(), out=out)
        products.append((weight, x))
        return products

    @torch.no_grad()
    def forward_target(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        obs = to_network_input(batch[Columns.OBS], image_input=False)
        for layers, out in zip(self.target_members, self.target_q_values):
            self._forward(layers, obs, self.target_features, out)
        return {QF_TARGET_NEXT_PREDS: self.target_q_values}

    @torch.no_grad()
    def forward_train(self, obs: torch.Tensor) -> torch.Tensor:
        self.obs = to_network_input(obs, image_input=False)
        self.products = [
            self._forward(layers, self.obs, features, out)
            for layers, features, out in zip(self.members, self.features, self.q_values)
        ]
        return self.q_values

    @torch.no_grad()
    def write_gradients(self, actions: torch.Tensor, targets: torch.Tensor) -> None:
        """Gradients of ``sum_e mean_b (Q_e(s_b, a_b) - y_b)^2`` after :meth:`forward_train`.

        Each expression below is the one autograd evaluates for that loss:
        pow's backward ``grad * (2 * d)`` with ``grad = 1/B`` from mean's, the
        gather's scatter into zeros, per linear layer (``addmm`` with the
        weight transposed) ``grad @ W``, ``grad.t() @ x`` and ``grad.sum(0)``,
        ReLU's ``threshold_backward`` on its output, and a cast's backward
        (the gradient cast back) where a layer multiplies in another dtype.
        """
        index = actions.long().view(1, -1, 1).expand(self.q_values.shape[0], -1, 1)
        td_errors = self.q_values.gather(-1, index).squeeze(-1) - targets  # [E, B]
        taken_grads = self.inv_batch_size * (2.0 * td_errors)
        self.q_grads.zero_().scatter_(-1, index, taken_grads.unsqueeze(-1))
        for layers, features, products, q_grad in zip(
            self.members, self.features, self.products, self.q_grads
        ):
            grad = q_grad
            for depth in range(len(layers) - 1, -1, -1):
                if depth < len(features):  # a hidden layer: back through its ReLU
                    feature = features[depth]
                    grad = grad.to(feature.dtype)  # the cast's backward (no-op if equal)
                    grad = torch.ops.aten.threshold_backward.grad_input(
                        grad, feature, 0, grad_input=grad
                    )
                (weight, bias), (multiplied_weight, layer_input) = layers[depth], products[depth]
                _mm_into(weight.grad, grad.t(), layer_input)
                _sum_rows_into(bias.grad, grad)
                if depth == 0:
                    break  # the observations need no gradient
                if grad.dtype == torch.float32:
                    grad = torch.mm(grad, multiplied_weight, out=self.feature_grads[depth - 1])
                else:
                    grad = torch.mm(grad, multiplied_weight)


def _mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out = a @ b``, cast to ``out``'s dtype (a cast's backward) where they differ."""
    if a.dtype == out.dtype:
        torch.mm(a, b, out=out)
    else:
        out.copy_(torch.mm(a, b))


def _sum_rows_into(out: torch.Tensor, grad: torch.Tensor) -> None:
    """A broadcast bias's gradient ``grad.sum(0)`` (autograd's ``sum_to``), cast to ``out``'s."""
    if grad.dtype == out.dtype:
        torch.sum(grad, 0, out=out)
    else:
        out.copy_(grad.sum(0))
