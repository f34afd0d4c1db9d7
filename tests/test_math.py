"""PMD math (rllib_staq.pmd) against closed forms, in float64."""

import math

import pytest
import torch

from rllib_staq import pmd


def unrolled_pmd_logits(q_values, kl_coeff, taus):
    """Reference: iterate xi_{k+1} = beta_k xi_k + alpha_k Q_k from xi_0 = 0."""
    xi = torch.zeros_like(q_values[0])
    for q, tau in zip(q_values, taus):
        alpha, beta = pmd.pmd_step_sizes(kl_coeff, tau)
        xi = beta * xi + alpha * q
    return xi


def test_step_sizes_closed_form():
    alpha, beta = pmd.pmd_step_sizes(kl_coeff=20.0, entropy_coeff=0.4 / math.log(2))
    eta, tau = 1 / 20.0, 0.4 / math.log(2)
    assert alpha == pytest.approx(eta / (1 + eta * tau))
    assert beta == pytest.approx(1 / (1 + eta * tau))
    assert alpha / (1 - beta) == pytest.approx(1 / tau)  # weights sum to 1/tau
    # Spec, section 4: CartPole at the final tau.
    assert alpha == pytest.approx(0.0486, abs=1e-4)
    assert beta == pytest.approx(0.972, abs=1e-3)


@pytest.mark.parametrize("stack_size", [1, 3, 10])
@pytest.mark.parametrize("corrected", [True, False])
def test_closed_form_weights_sum(stack_size, corrected):
    alpha, beta = pmd.pmd_step_sizes(20.0, 2.0)
    weights = pmd.closed_form_slot_weights(alpha, beta, 10**6, stack_size, corrected)
    expected = alpha * (1 - beta**stack_size) / (1 - beta)
    if corrected:
        expected = 1 / 2.0  # exactly 1/tau once the stack is full
    assert weights.sum().item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("stack_size", [1, 2, 5])
@pytest.mark.parametrize("num_pushes", [1, 4, 5, 6, 13])
def test_ring_decay_matches_closed_form(stack_size, num_pushes):
    beta = 0.9
    decay = torch.zeros(stack_size, dtype=torch.float64)
    for push in range(num_pushes):
        decay, slot = pmd.decay_slots_for_push(decay, push, beta)
        assert slot == push % stack_size
    newest_first = decay[pmd.slots_newest_first(num_pushes, stack_size)]
    expected = pmd.closed_form_slot_weights(1.0, beta, num_pushes, stack_size, False)
    torch.testing.assert_close(newest_first, expected)
    # Evicted/empty slots carry no weight.
    assert (decay > 0).sum().item() == min(num_pushes, stack_size)


def test_ring_order_and_eviction():
    assert pmd.slots_newest_first(7, 3) == [0, 2, 1]
    assert pmd.slots_newest_first(2, 5) == [1, 0]


def _random_mlp_stack(num_members, in_dim=4, hidden=8, actions=3, seed=0, num_layers=2):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    dense = [(rand(num_members, hidden, in_dim), rand(num_members, hidden))]
    dense += [
        (rand(num_members, hidden, hidden), rand(num_members, hidden))
        for _ in range(num_layers - 1)
    ]
    head = (rand(num_members, actions, hidden), rand(num_members, actions))
    return dense, head


def _member_q(obs, dense, head, member):
    h = obs
    for weight, bias in dense:
        h = torch.relu(h @ weight[member].T + bias[member])
    return h @ head[0][member].T + head[1][member]


# Both exact forms, and the dispatcher below and at its CPU switch batch sizes
# (feature-major dense layers up to CPU_FEATURE_MAJOR_MAX_BATCH rows, one row
# included, then batch-major; member loop from CPU_MEMBER_LOOP_MIN_BATCH).
STACKED_FORMS = [pmd.batched_stacked_forward, pmd.member_loop_stacked_forward, pmd.stacked_forward]
BATCHES = [1, pmd.CPU_FEATURE_MAJOR_MAX_BATCH, 5, pmd.CPU_MEMBER_LOOP_MIN_BATCH]


@pytest.mark.parametrize("form", STACKED_FORMS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("num_members,num_layers", [(1, 2), (4, 2), (7, 2), (4, 3)])
def test_stacked_forward_equals_weighted_sum_mlp(num_members, num_layers, batch, form):
    dense, head = _random_mlp_stack(num_members, num_layers=num_layers)
    obs = torch.randn(batch, 4, dtype=torch.float64)
    coeffs = torch.rand(num_members, dtype=torch.float64)
    got = form(obs, [], dense, head[0], head[1], coeffs, torch.relu)
    expected = sum(coeffs[m] * _member_q(obs, dense, head, m) for m in range(num_members))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("batch", [1, 3])
def test_stacked_dense_layouts_agree_for_any_input_strides(batch):
    """Both layouts of one dense layer give h_s @ W_s^T + b_s, also for the
    transposed view that the feature-major layout returns (for one row its
    size-1 dimension has stride 1, which the layer copies away)."""
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(3, 6, 4, generator=gen, dtype=torch.float64)
    bias = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    row_major = torch.randn(3, batch, 4, generator=gen, dtype=torch.float64)
    # The same values laid out as a feature-major layer's output: the rows' stride is 1.
    feature_major_view = torch.as_strided(
        row_major.transpose(1, 2).contiguous(), (3, batch, 4), (4 * batch, 1, batch)
    )
    expected = row_major @ weight.transpose(1, 2) + bias.unsqueeze(1)
    for hidden in (row_major, feature_major_view):
        assert torch.equal(hidden, row_major)
        for feature_major in (False, True):
            got = pmd.stacked_dense(hidden, weight, bias, feature_major)
            assert got.shape == (3, batch, 6)
            torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("form", STACKED_FORMS)
@pytest.mark.parametrize("batch", BATCHES)
def test_stacked_forward_equals_weighted_sum_cnn(batch, form):
    members, gen = 3, torch.Generator().manual_seed(1)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    conv = [
        (rand(members, 4, 2, 3, 3), rand(members, 4), 1),
        (rand(members, 5, 4, 2, 2), rand(members, 5), 2),
    ]
    obs = rand(batch, 2, 7, 7)
    feat = 5 * 2 * 2  # 7x7 -> 5x5 (k3) -> 2x2 (k2, stride 2)
    dense = [(rand(members, 8, feat), rand(members, 8))]
    head = (rand(members, 3, 8), rand(members, 3))
    coeffs = torch.rand(members, generator=gen, dtype=torch.float64)
    got = form(obs, conv, dense, head[0], head[1], coeffs, torch.relu)
    expected = 0
    for m in range(members):
        x = obs
        for w, b, stride in conv:
            x = torch.relu(torch.nn.functional.conv2d(x, w[m], b[m], stride=stride))
        x = torch.relu(x.flatten(1) @ dense[0][0][m].T + dense[0][1][m])
        expected = expected + coeffs[m] * (x @ head[0][m].T + head[1][m])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("stack_size,num_pushes", [(3, 2), (3, 3), (3, 8), (6, 6), (1, 4)])
@pytest.mark.parametrize("corrected", [True, False])
def test_ring_with_annealed_tau_equals_pmd_recursion(stack_size, num_pushes, corrected):
    """Ring bookkeeping + stacked forward == truncated PMD recursion, annealed tau."""
    kl = 20.0
    taus = [2.0 - 1.5 * k / max(1, num_pushes - 1) for k in range(num_pushes)]
    dense, head = _random_mlp_stack(num_pushes, seed=3)
    obs = torch.randn(4, 4, dtype=torch.float64)
    q_values = [_member_q(obs, dense, head, k) for k in range(num_pushes)]

    decay = torch.zeros(stack_size, dtype=torch.float64)
    slot_of_member = {}
    for k, tau in enumerate(taus):
        _, beta = pmd.pmd_step_sizes(kl, tau)
        decay, slot = pmd.decay_slots_for_push(decay, k, beta)
        slot_of_member[slot] = k
    alpha, beta = pmd.pmd_step_sizes(kl, taus[-1])
    scale = alpha * pmd.weight_correction(beta, stack_size, corrected)
    kept = sorted(slot_of_member)  # slots in use
    members = [slot_of_member[s] for s in kept]
    sub_dense = [(w[members], b[members]) for w, b in dense]
    got = pmd.stacked_forward(
        obs, [], sub_dense, head[0][members], head[1][members], scale * decay[kept], torch.relu
    )

    # Reference: recursion over the kept members only, then alpha*c of the last tau.
    xi = torch.zeros_like(q_values[0])
    first_kept = max(0, num_pushes - stack_size)
    for k in range(first_kept, num_pushes):
        _, beta_k = pmd.pmd_step_sizes(kl, taus[k])
        xi = beta_k * xi + q_values[k]
    torch.testing.assert_close(got, scale * xi)


def test_full_pmd_iterate_without_truncation_constant_tau():
    """With M >= k and vanilla weights, the stack is exactly xi_k of Eq. 5."""
    kl, tau, k = 20.0, 1.0, 5
    dense, head = _random_mlp_stack(k, seed=4)
    obs = torch.randn(3, 4, dtype=torch.float64)
    q_values = [_member_q(obs, dense, head, i) for i in range(k)]
    alpha, beta = pmd.pmd_step_sizes(kl, tau)
    newest_first = pmd.closed_form_slot_weights(alpha, beta, k, 10, corrected=False)
    coeffs = newest_first.flip(0)  # member i (oldest first) has weight alpha*beta^(k-1-i)
    got = pmd.stacked_forward(obs, [], dense, head[0], head[1], coeffs, torch.relu)
    torch.testing.assert_close(got, unrolled_pmd_logits(q_values, kl, [tau] * k))


def test_soft_sarsa_target_hand_computed():
    rewards = torch.tensor([1.0, 0.5], dtype=torch.float64)
    terminateds = torch.tensor([0.0, 1.0], dtype=torch.float64)
    target_q = torch.tensor([[2.0, 4.0], [1.0, 1.0]], dtype=torch.float64)
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]], dtype=torch.float64)
    # pi = [0.25, 0.75] in row 0; H = -(0.25 ln 0.25 + 0.75 ln 0.75)
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    expected_row0 = 10 * 1.0 + 0.99 * (0.25 * 2 + 0.75 * 4 + 0.3 * entropy)
    got = pmd.soft_sarsa_target(rewards, terminateds, target_q, logits, 0.3, 0.99, 10.0)
    torch.testing.assert_close(got, torch.tensor([expected_row0, 5.0], dtype=torch.float64))
    sampled = pmd.soft_sarsa_target(
        rewards, terminateds, target_q, logits, 0.3, 0.99, 10.0, next_actions=torch.tensor([0, 1])
    )
    assert sampled[0].item() == pytest.approx(10 + 0.99 * (2.0 + 0.3 * entropy))
    assert sampled[1].item() == pytest.approx(5.0)  # terminated: no bootstrap


def test_epsilon_softmax_and_divergences():
    logits = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    probs = pmd.epsilon_softmax_probs(logits, 0.1)
    torch.testing.assert_close(probs, 0.9 * torch.softmax(logits, -1) + 0.1 / 3)
    assert pmd.categorical_kl(logits, logits).item() == pytest.approx(0.0, abs=1e-12)
    assert pmd.categorical_entropy(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))
    assert pmd.scaled_entropy_coeff(2.0, 2, True) == pytest.approx(2.0 / math.log(2))
    assert pmd.scaled_entropy_coeff(2.0, 2, False) == 2.0
