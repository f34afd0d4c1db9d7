"""Policy Mirror Descent math of StaQ: pure torch functions, no Ray.

Notation (see ``README.md`` and the paper, arXiv 2506.13862):

* ``kl_coeff`` is 1/eta, ``entropy_coeff`` is tau.
* PMD step (Eq. 5 of the paper): ``xi_{k+1} = beta * xi_k + alpha * Q_k`` with
  ``beta = 1 / (1 + eta * tau)`` and ``alpha = eta / (1 + eta * tau)``.
* Unrolled from ``xi_0 = 0`` and truncated to the last M Q-functions (Eq. 7):
  ``xi = c * alpha * sum_{i=0}^{M-1} beta^i Q_{k-i}`` with the weight correction
  ``c = 1 / (1 - beta^M)`` (``c = 1`` for the vanilla truncation).

Shapes: ``S`` = number of stacked members (slots x ensemble), ``B`` = batch,
``A`` = number of actions, ``H`` = hidden width.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


# --------------------------------------------------------------------------- #
# Step sizes and per-slot weights.
# --------------------------------------------------------------------------- #
def pmd_step_sizes(kl_coeff: float, entropy_coeff: float) -> Tuple[float, float]:
    """Returns ``(alpha, beta)`` of the PMD closed form (Eq. 5).

    With eta = 1/kl_coeff: beta = 1/(1+eta*tau) = kl/(kl+tau) and
    alpha = eta/(1+eta*tau) = 1/(kl+tau). Note alpha/(1-beta) = 1/tau.
    """
    denominator = kl_coeff + entropy_coeff
    return 1.0 / denominator, kl_coeff / denominator


def weight_correction(beta: float, stack_size: int, enabled: bool = True) -> float:
    """The finite-memory correction ``1/(1-beta^M)`` (1.0 when disabled)."""
    if not enabled:
        return 1.0
    return 1.0 / (1.0 - beta**stack_size)


def closed_form_slot_weights(
    alpha: float,
    beta: float,
    num_members: int,
    stack_size: int,
    corrected: bool = True,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Weights of the stacked Q-functions, newest first, for a constant tau.

    Returns ``[n]`` with ``n = min(num_members, stack_size)``:
    ``w_i = c * alpha * beta^i``. This is the reference the incremental ring
    bookkeeping (:func:`decay_slots_for_push`) is tested against.
    """
    kept = min(num_members, stack_size)
    powers = beta ** torch.arange(kept, dtype=dtype)
    return weight_correction(beta, stack_size, corrected) * alpha * powers


def decay_slots_for_push(slot_decay: Tensor, num_pushes: int, beta: float) -> Tuple[Tensor, int]:
    """Ring bookkeeping of one push: old members decay by beta, the new one gets 1.

    ``slot_decay``: ``[M]``, the product of the betas applied to each slot since
    it was written (0 for empty slots). Multiplying the stored decays by the
    current beta, as the official code does with the output layers, keeps the
    recursion ``xi_{k+1} = beta_k xi_k + alpha Q_k`` exact for an annealed tau.

    Returns the new decays and the slot the new member is written to (the
    oldest member is evicted once the ring is full).
    """
    stack_size = slot_decay.shape[0]
    slot = num_pushes % stack_size
    new_decay = slot_decay * beta
    new_decay[slot] = 1.0
    return new_decay, slot


def slots_newest_first(num_pushes: int, stack_size: int) -> list:
    """Ring slot indices, newest member first (for tests and diagnostics)."""
    kept = min(num_pushes, stack_size)
    return [(num_pushes - 1 - i) % stack_size for i in range(kept)]


# --------------------------------------------------------------------------- #
# Stacked forward pass.
# --------------------------------------------------------------------------- #
# Batch size from which, on CPU, one small network per member beats batched
# products (measured by benchmarks/stack_cost.py: crossover between 32 and 64
# rows for the 2x256 MLP; torch's CPU bmm is several times slower than plain
# GEMMs at large batches).
CPU_MEMBER_LOOP_MIN_BATCH = 48
# Batch size up to which, on CPU, :func:`batched_stacked_forward` multiplies the
# members' dense layers as ``W_s @ h_s^T`` (:func:`stacked_dense`): measured by
# ``benchmarks/stack_cost.py --part dense-layout``, 2.8x faster at M=300 for one
# row of the 2x256 MLP and 1.7x for MinAtar's 1024->128 layer, slower from 4
# rows for the latter.
CPU_FEATURE_MAJOR_MAX_BATCH = 2


def stacked_forward(
    obs: Tensor,
    conv_layers: Sequence[Tuple[Tensor, Tensor, int]],
    dense_layers: Sequence[Tuple[Tensor, Tensor]],
    head_weight: Tensor,
    head_bias: Tensor,
    member_coeffs: Tensor,
    activation: Callable[[Tensor], Tensor],
) -> Tensor:
    """Weighted sum of S Q-networks: ``sum_s c_s Q_s(obs)``, ``[B, A]``.

    Args:
        obs: ``[B, D]`` (MLP) or ``[B, C, H, W]`` (CNN), shared by all members.
        conv_layers: ``(weight [S, out, in, k, k], bias [S, out], stride)``.
        dense_layers: ``(weight [S, out, in], bias [S, out])``.
        head_weight: ``[S, A, H]``; head_bias: ``[S, A]``.
        member_coeffs: ``[S]``, the PMD weight of each member.
        activation: applied after every conv and dense layer (not the head).

    Both forms are exact (they differ by float rounding only); the faster one
    is picked by device and batch size: :func:`batched_stacked_forward` (few
    large kernels: GPUs, and small CPU batches such as acting) or
    :func:`member_loop_stacked_forward` (large CPU batches).
    """
    if obs.device.type == "cpu" and obs.shape[0] >= CPU_MEMBER_LOOP_MIN_BATCH:
        return member_loop_stacked_forward(
            obs, conv_layers, dense_layers, head_weight, head_bias, member_coeffs, activation
        )
    return batched_stacked_forward(
        obs, conv_layers, dense_layers, head_weight, head_bias, member_coeffs, activation
    )


def batched_stacked_forward(
    obs: Tensor,
    conv_layers: Sequence[Tuple[Tensor, Tensor, int]],
    dense_layers: Sequence[Tuple[Tensor, Tensor]],
    head_weight: Tensor,
    head_bias: Tensor,
    member_coeffs: Tensor,
    activation: Callable[[Tensor], Tensor],
) -> Tensor:
    """:func:`stacked_forward` with one kernel per layer for all members.

    All members share their input, so the first layer is one matrix product
    (one convolution) with S times the output units; later layers are batched
    matrix products (grouped convolutions; :func:`stacked_dense`, feature-major
    for CPU batches of at most ``CPU_FEATURE_MAJOR_MAX_BATCH`` rows); the
    weights ``c_s`` are folded into the output layer so the weighted sum over
    members is one last product.
    """
    batch = obs.shape[0]
    num_members = member_coeffs.shape[0]
    feature_major = obs.device.type == "cpu" and batch <= CPU_FEATURE_MAJOR_MAX_BATCH
    hidden: Optional[Tensor] = None  # [S, B, H], contiguous (bmm copies strided input)
    if conv_layers:
        hidden = stacked_conv_features(obs, conv_layers, activation)
    for weight, bias in dense_layers:
        if hidden is None:
            # First layer of an MLP: the input is shared -> one [B, D] x [D, S*H].
            out_units = weight.shape[1]
            flat = torch.addmm(
                bias.reshape(-1),
                obs,
                weight.reshape(num_members * out_units, -1).t(),
            )
            hidden = flat.view(batch, num_members, out_units).transpose(0, 1).contiguous()
        else:
            hidden = stacked_dense(hidden, weight, bias, feature_major)
        hidden = activation(hidden)
    if hidden is None:
        raise ValueError("A Q-network needs at least one hidden layer.")

    # Output layer with the PMD weights folded in: [B, S*H] x [S*H, A].
    scaled_head = head_weight * member_coeffs[:, None, None]  # [S, A, H]
    flat_hidden = hidden.transpose(0, 1).reshape(batch, -1)  # [B, S*H]
    flat_head = scaled_head.transpose(0, 1).reshape(head_weight.shape[1], -1)  # [A, S*H]
    return torch.addmm(member_coeffs @ head_bias, flat_hidden, flat_head.t())


def stacked_dense(hidden: Tensor, weight: Tensor, bias: Tensor, feature_major: bool) -> Tensor:
    """One dense layer of every member, ``h_s @ W_s^T + b_s``: ``[S, B, in] -> [S, B, out]``.

    ``feature_major`` computes the transpose, ``W_s @ h_s^T + b_s`` (``[S, out, B]``),
    and returns it viewed as ``[S, B, out]``: the same values up to float
    rounding. For one or two rows on CPU, torch's batched product runs this
    form at about the memory's speed for reading ``W`` and ``h_s @ W_s^T``
    2-3x slower (measured, ``CPU_FEATURE_MAJOR_MAX_BATCH``).
    It needs ``h_s^T`` to be the transpose of a row-major ``[B, in]`` block,
    strides included: a ``[S, 1, in]`` tensor whose size-1 dimension has stride
    1 (the view this function returns, for one row) counts as contiguous in
    torch but sends the product to the slow path, so such input is copied into
    fresh row-major strides first (``[S*B*in]`` floats, small next to ``W``).
    """
    if not feature_major:
        return torch.baddbmm(bias.unsqueeze(1), hidden, weight.transpose(1, 2))
    if hidden.stride(2) != 1 or hidden.stride(1) < hidden.shape[2]:  # not row-major
        hidden = hidden.clone(memory_format=torch.contiguous_format)
    return torch.baddbmm(bias.unsqueeze(-1), weight, hidden.transpose(1, 2)).transpose(1, 2)


def mixed_precision_stacked_forward(
    obs: Tensor,
    conv_layers: Sequence[Tuple[Tensor, Tensor, int]],
    dense_layers: Sequence[Tuple[Tensor, Tensor]],
    head_weight: Tensor,
    head_bias: Tensor,
    member_coeffs: Tensor,
    activation: Callable[[Tensor], Tensor],
) -> Tensor:
    """:func:`stacked_forward` with each hidden layer in its weights' dtype.

    Same arguments and result (float32) as :func:`batched_stacked_forward`; each
    conv and dense layer runs in the dtype of its weights (e.g. bfloat16 for the
    large member-by-member layers, float32 for the first layer, which reads the
    observation), while the output layer, the PMD weights and the sum over
    members run in float32: the logits' error is that of the rounded hidden
    features, not a rounding of the (large) logits themselves.

    Hidden features are feature-major, ``[S, H, B]`` (``W_s @ h_s``): for the
    small batches of acting, bf16 batched products are several times faster in
    this layout on CPU than ``h_s @ W_s^T`` (benchmarks/stack_dtype.py).
    """
    batch = obs.shape[0]
    num_members = member_coeffs.shape[0]
    hidden: Optional[Tensor] = None  # [S, H, B]
    if conv_layers:
        hidden = stacked_conv_features(obs, conv_layers, activation).transpose(1, 2)
    for weight, bias in dense_layers:
        if hidden is None:
            # Shared input: one [S*H, D] x [D, B] product.
            flat_weight = weight.reshape(-1, weight.shape[2])
            flat = torch.addmm(bias.reshape(-1, 1), flat_weight, obs.to(weight.dtype).t())
            hidden = flat.view(num_members, weight.shape[1], batch)
        else:
            hidden = torch.baddbmm(bias.unsqueeze(-1), weight, hidden.to(weight.dtype))
        hidden = activation(hidden)
    if hidden is None:
        raise ValueError("A Q-network needs at least one hidden layer.")

    # Output layer in float32, the PMD weights folded in: [A, S*H] x [S*H, B].
    coeffs = member_coeffs.float()
    scaled_head = head_weight.float() * coeffs[:, None, None]  # [S, A, H]
    flat_head = scaled_head.transpose(0, 1).reshape(head_weight.shape[1], -1)  # [A, S*H]
    flat_hidden = hidden.float().reshape(-1, batch)  # [S*H, B]
    return (flat_head @ flat_hidden).t() + coeffs @ head_bias.float()


def member_loop_stacked_forward(
    obs: Tensor,
    conv_layers: Sequence[Tuple[Tensor, Tensor, int]],
    dense_layers: Sequence[Tuple[Tensor, Tensor]],
    head_weight: Tensor,
    head_bias: Tensor,
    member_coeffs: Tensor,
    activation: Callable[[Tensor], Tensor],
) -> Tensor:
    """:func:`stacked_forward` as one small network per member (contiguous GEMMs).

    The PMD weight of each member is folded into its head, which accumulates
    into the logits in place.
    """
    logits = (member_coeffs @ head_bias).expand(obs.shape[0], -1).contiguous()  # [B, A]
    scaled_head = head_weight * member_coeffs[:, None, None]  # [S, A, H]
    for member in range(member_coeffs.shape[0]):
        features = obs
        for weight, bias, stride in conv_layers:
            features = activation(F.conv2d(features, weight[member], bias[member], stride=stride))
        features = features.flatten(1)
        for weight, bias in dense_layers:
            features = activation(F.linear(features, weight[member], bias[member]))
        logits.addmm_(features, scaled_head[member].t())
    return logits


def stacked_conv_features(
    obs: Tensor,
    conv_layers: Sequence[Tuple[Tensor, Tensor, int]],
    activation: Callable[[Tensor], Tensor],
) -> Tensor:
    """The conv layers of S members in one pass each: ``[B, C, H, W] -> [S, B, F]``.

    The first convolution sees the shared input, so it is one convolution with
    S times the output channels; later ones are grouped convolutions (group s =
    member s).
    """
    batch = obs.shape[0]
    num_members = conv_layers[0][0].shape[0]
    features = obs
    for index, (weight, bias, stride) in enumerate(conv_layers):
        features = features.to(weight.dtype)  # layers may differ (mixed precision)
        out_channels = weight.shape[1]
        flat_weight = weight.reshape(num_members * out_channels, *weight.shape[2:])
        features = F.conv2d(
            features,
            flat_weight,
            bias.reshape(-1),
            stride=stride,
            groups=1 if index == 0 else num_members,
        )
        features = activation(features)  # [B, S*out, H', W']
    return features.reshape(batch, num_members, -1).transpose(0, 1).contiguous()


# --------------------------------------------------------------------------- #
# Policy quantities.
# --------------------------------------------------------------------------- #
def categorical_entropy(logits: Tensor) -> Tensor:
    """Exact entropy of softmax(logits): ``[..., A] -> [...]``."""
    log_probs = torch.log_softmax(logits, dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)


def categorical_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """KL(softmax(p) || softmax(q)): ``[..., A] -> [...]``."""
    log_p = torch.log_softmax(logits_p, dim=-1)
    log_q = torch.log_softmax(logits_q, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def truncation_kl(logit_scale: float, stack_sums: Tensor, oldest_term: Tensor) -> Tensor:
    """KL(pi_k || pi_k without its oldest member), per state: ``[N, A] x 2 -> [N]``.

    ``stack_sums``: the unscaled stack sum ``sum_i d_i Q_i(s)`` (Eq. 7 without
    ``c * alpha``); ``oldest_term``: the oldest member's part of it,
    ``d_oldest Q_oldest(s)``. Both policies use pi_k's scale, so the KL measures
    only what the truncation to M members drops at the next push (large values:
    M is too small for this beta).
    """
    return categorical_kl(logit_scale * stack_sums, logit_scale * (stack_sums - oldest_term))


def soft_q_magnitude_bound(
    max_abs_scaled_reward: float, gamma: float, entropy_coeff: float, num_actions: int
) -> float:
    """Bound on |Q| at the fixed point of the soft target (Eq. 8).

    With ``|rs * r| <= R`` and ``0 <= H(pi) <= ln|A|``, a target
    ``y = rs*r + gamma*(Qbar + tau*H)`` of a Q bounded by ``Q*`` is bounded by
    ``R + gamma*(Q* + tau*ln|A|)``, whose fixed point is
    ``(R + gamma * tau * ln|A|) / (1 - gamma)``. ``entropy_coeff`` is tau as it
    multiplies H in the target (scaled by 1/ln|A| where configured).
    A fitted Q above it is over-estimation (or divergence), not signal.
    """
    return (max_abs_scaled_reward + gamma * entropy_coeff * math.log(num_actions)) / (1.0 - gamma)


def epsilon_softmax_probs(logits: Tensor, epsilon: float) -> Tensor:
    """``(1-eps) * softmax(logits) + eps/|A|`` (the behaviour policy): ``[..., A]``."""
    num_actions = logits.shape[-1]
    return (1.0 - epsilon) * torch.softmax(logits, dim=-1) + epsilon / num_actions


def sample_categorical(probs: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """One draw per row of ``probs`` ``[B, A]``: ``[B, 1]`` action indices.

    The exponential race ``argmax_a p_a / E_a`` with ``E_a ~ Exp(1)``: the
    Gumbel-max trick with the exponent taken, exact for any ``probs`` with
    non-negative rows that are not all zero (a sum of 1 is not needed). It is
    the draw ``torch.multinomial(probs, 1, generator=generator)`` makes on CPU,
    from the same random numbers, without that function's checks of its input,
    which cost several times the draw at the FQI phase's batch sizes (tests).
    """
    races = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return torch.div(probs, races, out=races).argmax(-1, keepdim=True)


def scaled_entropy_coeff(entropy_coeff: float, num_actions: int, scale: bool) -> float:
    """tau / ln|A| as in the official code (no-op when ``scale`` is False)."""
    if scale and num_actions > 1:
        return entropy_coeff / math.log(num_actions)
    return entropy_coeff


def soft_sarsa_target(
    rewards: Tensor,
    terminateds: Tensor,
    next_target_q: Tensor,
    next_policy_logits: Tensor,
    entropy_coeff: float,
    gamma: float,
    reward_scale: float,
    next_actions: Optional[Tensor] = None,
    horizons: Optional[Tensor] = None,
) -> Tensor:
    """The FQI regression target of one iteration (Eq. 8 of the paper).

    ``y = reward_scale*r + gamma*(1-terminated)*(Qbar(s',a') + tau*H(pi_k(.|s')))``

    Args:
        rewards, terminateds: ``[B]``. For n-step transitions ``rewards`` holds
            :func:`n_step_returns` and s' is the state ``horizons`` steps ahead.
        next_target_q: ``[B, A]``, the target network at s' (ensemble-reduced).
        next_policy_logits: ``[B, A]``, xi_k at s' (fixed during the iteration).
        next_actions: ``[B]`` sampled a' ~ pi_k(.|s'); ``None`` takes the exact
            expectation over pi_k instead (lower variance).
        horizons: ``[B]`` steps between s and s' (:func:`n_step_horizons`);
            ``None`` is 1 for every transition. The bootstrap is discounted by
            ``gamma^horizon``.

    Returns:
        ``[B]``. Truncated transitions bootstrap (only ``terminateds`` cut).
    """
    if next_actions is None:
        probs = torch.softmax(next_policy_logits, dim=-1)
        next_q = (probs * next_target_q).sum(-1)
    else:
        next_q = next_target_q.gather(-1, next_actions.long().unsqueeze(-1)).squeeze(-1)
    soft_value = next_q + entropy_coeff * categorical_entropy(next_policy_logits)
    discount = gamma if horizons is None else gamma ** horizons.float()
    return reward_scale * rewards + discount * (1.0 - terminateds.float()) * soft_value


def n_step_horizons(num_steps: int, n_step: int) -> Tensor:
    """``k_t = min(n, T - t)``: how far each transition of an episode chunk looks ahead.

    Returns ``[T]`` (int64) for the ``T`` transitions of one chunk. The last
    ``n - 1`` transitions of a chunk look ahead only as far as the chunk goes
    (a chunk ends at an episode's end or at a sampling boundary); each target
    then bootstraps from the state its horizon reaches, which keeps it valid.
    """
    return torch.clamp(num_steps - torch.arange(num_steps), max=n_step)


def n_step_returns(rewards: Tensor, gamma: float, n_step: int) -> Tensor:
    """``R_t = sum_{j < k_t} gamma^j r_{t+j}`` over one episode chunk: ``[T] -> [T]``.

    ``k_t`` is :func:`n_step_horizons`: rewards past the chunk's end count as 0.
    The n-step FQI target (README, deviation "n-step targets") is then
    ``reward_scale * R_t + gamma^k_t * (1 - terminated) * (Qbar(s_{t+k_t}, a') + tau * H)``.
    """
    windows = F.pad(rewards, (0, n_step - 1)).unfold(0, n_step, 1)  # [T, n]
    discounts = gamma ** torch.arange(n_step, dtype=rewards.dtype)  # [n]
    return windows @ discounts


# --------------------------------------------------------------------------- #
# Continuous actions (Box): the stack as the exact target of an amortised actor.
# Notation: d = action dimension, actions in RLlib's normalised box [-1, 1]^d,
# pi_0 uniform on it (density 2^-d). See rllib_staq/continuous.py.
# --------------------------------------------------------------------------- #
def box_log_volume(action_dim: int) -> float:
    """``ln vol([-1, 1]^d) = d ln 2``: the entropy of pi_0, the Box analogue of ln|A|."""
    return action_dim * math.log(2.0)


def scaled_box_entropy_coeff(entropy_coeff: float, action_dim: int, scale: bool) -> float:
    """tau / (d ln 2) (no-op when ``scale`` is False).

    Discrete StaQ divides tau by ln|A|, the entropy of the uniform pi_0; on the
    box [-1, 1]^d the uniform pi_0 has differential entropy d ln 2.
    """
    if scale:
        return entropy_coeff / box_log_volume(action_dim)
    return entropy_coeff


def uniform_box_log_prob(shape: Sequence[int], device=None, dtype=torch.float32) -> Tensor:
    """``log pi_0(a) = -d ln 2`` for a batch: ``shape = [B, d] -> [B]``."""
    return torch.full(tuple(shape[:-1]), -box_log_volume(shape[-1]), device=device, dtype=dtype)


def log_one_minus_tanh_squared(pre_tanh: Tensor) -> Tensor:
    """``ln(1 - tanh(u)^2) = 2 (ln 2 - u - softplus(-2u))``, stable for large |u|."""
    return 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))


def gaussian_rsample(mean: Tensor, log_std: Tensor, noise: Tensor) -> Tuple[Tensor, Tensor]:
    """Reparameterised ``u = mean + std * noise`` and ``log N(u; mean, std)``.

    ``mean, log_std, noise``: ``[B, d]``; returns ``u`` ``[B, d]`` and the log
    density ``[B]`` (summed over the d independent dimensions).
    """
    std = log_std.exp()
    pre_tanh = mean + std * noise
    log_prob = (-0.5 * noise**2 - log_std - 0.5 * math.log(2.0 * math.pi)).sum(-1)
    return pre_tanh, log_prob


def squashed_gaussian_rsample(
    mean: Tensor, log_std: Tensor, noise: Tensor
) -> Tuple[Tensor, Tensor]:
    """``a = tanh(mean + std * noise)`` and its log density on [-1, 1]^d.

    Change of variables: ``log pi(a) = log N(u) - sum_j ln(1 - tanh(u_j)^2)``
    (the density RLlib's ``TorchSquashedGaussian`` assigns, computed from u
    rather than from atanh(a), so it stays finite where tanh(u) rounds to +-1).
    Returns ``a`` ``[B, d]`` and ``log pi(a)`` ``[B]``.
    """
    pre_tanh, log_prob = gaussian_rsample(mean, log_std, noise)
    return torch.tanh(pre_tanh), log_prob - log_one_minus_tanh_squared(pre_tanh).sum(-1)


def gaussian_log_prob(pre_tanh: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """``log N(u; mean, std)`` summed over the last (action) dimension: ``[..., d] -> [...]``."""
    z = (pre_tanh - mean) / log_std.exp()
    return (-0.5 * z**2 - log_std - 0.5 * math.log(2.0 * math.pi)).sum(-1)


def self_normalised_weights(energy: Tensor, proposal_log_prob: Tensor) -> Tensor:
    """Importance weights of N proposal actions per state for exp(xi_{k+1}): ``[n, N] -> [n, N]``.

    ``w_j ∝ exp(xi_{k+1}(s, a_j)) / q(a_j|s)`` for ``a_j ~ q(.|s)``, normalised
    over the N actions of each state, so neither Z(s) nor q's normaliser is
    needed (the E-step of MPO, Abdolmaleki et al. 2018, with the stack's energy
    in place of MPO's Q/eta and no KL trust region: the PMD step is already in xi).
    """
    return torch.softmax(energy - proposal_log_prob, dim=-1)


def defensive_mixture_log_prob(
    policy_log_prob: Tensor, uniform_log_prob: Tensor, uniform_fraction: float
) -> Tensor:
    """``log q(a)`` of the proposal ``q = (1 - lam) pi_theta + lam U(box)``: ``[...] -> [...]``.

    Defensive importance sampling (Hesterberg 1995): the uniform part bounds the
    weights ``exp(xi) / q <= exp(xi) / (lam U)`` where pi_{k+1} has moved away
    from pi_theta_k, which otherwise sees few samples there and shrinks the fitted
    spread. ``lam`` in (0, 1); ``lam = 0`` is the plain proposal (no mixture).
    """
    return torch.logaddexp(
        math.log1p(-uniform_fraction) + policy_log_prob,
        math.log(uniform_fraction) + uniform_log_prob,
    )


def effective_sample_size(weights: Tensor) -> Tensor:
    """Kish's ``1 / sum_j w_j^2`` per state: ``[n, N] -> [n]`` (N if uniform, 1 if degenerate)."""
    return 1.0 / (weights**2).sum(-1)


def weighted_ml_actor_loss(
    weights: Tensor, pre_tanh: Tensor, mean: Tensor, log_std: Tensor
) -> Tensor:
    """``-E_s sum_j w_j log pi_theta(a_j|s)`` up to a constant: weights ``[n, N]``,
    ``pre_tanh`` (``u_j = atanh a_j``) ``[n, N, d]``, ``mean, log_std`` ``[n, d]`` -> ``[]``.

    The forward KL ``KL(pi_{k+1} || pi_theta)`` estimated with the weighted
    samples (MPO's M-step). The tanh Jacobian ``-sum ln(1 - a^2)`` does not
    depend on theta, so the squashed Gaussian's fit is the Gaussian fit of
    the pre-tanh samples, whose minimiser is the weighted mean and variance.
    """
    log_prob = gaussian_log_prob(pre_tanh, mean.unsqueeze(1), log_std.unsqueeze(1))  # [n, N]
    return -(weights * log_prob).sum(-1).mean()


def reverse_kl_actor_loss(log_prob: Tensor, energy: Tensor) -> Tensor:
    """``E_{a ~ pi_theta}[log pi_theta(a|s) - xi_{k+1}(s, a)]`` from samples: ``[B] -> []``.

    Equals ``KL(pi_theta || pi_{k+1}) - E_s[log Z(s)]`` with
    ``pi_{k+1} = exp(xi_{k+1}) / Z``: log Z does not depend on theta, so within one
    iteration the loss on fixed states and noise falls exactly as the KL does.
    With the reparameterisation ``a = f_theta(s, noise)`` its gradient reaches
    theta through ``log_prob`` and through ``a`` inside ``energy``.
    """
    return (log_prob - energy).mean()


def box_soft_target(
    rewards: Tensor,
    terminateds: Tensor,
    next_target_q: Tensor,
    next_log_prob: Tensor,
    entropy_coeff: float,
    gamma: float,
    reward_scale: float,
) -> Tensor:
    """FQI target for a Box action, one sample a' ~ pi_theta_k(.|s'):

    ``y = reward_scale*r + gamma*(1-terminated)*(Qbar(s', a') - tau*log pi_theta_k(a'|s'))``

    (Eq. 8 of the paper with SAC's one-sample entropy estimate ``-log pi(a')``.)
    All inputs ``[B]``; returns ``[B]``.
    """
    soft_value = next_target_q - entropy_coeff * next_log_prob
    return reward_scale * rewards + gamma * (1.0 - terminateds.float()) * soft_value


def gaussian_energy_closed_form(
    slot_weights: Tensor, curvatures: Tensor, centres: Tensor
) -> Tuple[float, float]:
    """``exp(sum_i w_i * (-q_i (a - m_i)^2))`` is ``N(m*, v*)`` up to a constant.

    ``m* = sum w_i q_i m_i / sum w_i q_i``, ``v* = 1 / (2 sum w_i q_i)`` (all ``[n]``).
    The reference of the one-dimensional Gaussian bandit test.
    """
    precision_half = (slot_weights * curvatures).sum()
    mean = (slot_weights * curvatures * centres).sum() / precision_half
    return float(mean), float(0.5 / precision_half)


def diagonal_gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor):
    """``KL(N(mean_p, std_p^2) || N(mean_q, std_q^2))`` summed over d: ``[B, d] -> [B]``.

    Also the KL of the tanh-squashed pair (an invertible map keeps the KL).
    """
    var_ratio = torch.exp(2.0 * (log_std_p - log_std_q))
    mean_term = ((mean_p - mean_q) / log_std_q.exp()) ** 2
    return 0.5 * (var_ratio + mean_term - 1.0 - torch.log(var_ratio)).sum(-1)
