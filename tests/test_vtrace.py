"""V-trace against a float64 NumPy implementation of the IMPALA paper's definition (eq. 1).

The reference sums the n-step series explicitly,
    v_s = V(x_s) + sum_{t >= s} (prod_{i=s}^{t-1} gamma_i c_i) delta_t,
    delta_t = rho_t (r_t + gamma_t V(x_{t+1}) - V(x_t)),
rather than the backward recursion the implementation uses, so the two check each other.
"""
import numpy as np
import pytest
import torch

from torchbeast.core import vtrace


def reference_vtrace(log_rhos, discounts, rewards, values, bootstrap_value, clip_rho, clip_pg_rho):
    rhos = np.exp(log_rhos)
    clipped_rhos = np.minimum(clip_rho, rhos) if clip_rho is not None else rhos
    cs = np.minimum(1.0, rhos)
    T = len(rewards)
    values_next = np.concatenate([values[1:], bootstrap_value[None]], axis=0)
    deltas = clipped_rhos * (rewards + discounts * values_next - values)
    vs = np.zeros_like(values)
    for s in range(T):
        total = np.zeros_like(bootstrap_value)
        weight = np.ones_like(bootstrap_value)
        for t in range(s, T):
            total += weight * deltas[t]
            weight = weight * discounts[t] * cs[t]
        vs[s] = values[s] + total
    vs_next = np.concatenate([vs[1:], bootstrap_value[None]], axis=0)
    pg_rhos = np.minimum(clip_pg_rho, rhos) if clip_pg_rho is not None else rhos
    pg_advantages = pg_rhos * (rewards + discounts * vs_next - values)
    return vs, pg_advantages


def random_inputs(rng, T=7, B=5, with_terminals=True):
    log_rhos = rng.normal(0.0, 1.0, size=(T, B))
    discounts = np.full((T, B), 0.9)
    if with_terminals:
        discounts[rng.random((T, B)) < 0.2] = 0.0
    rewards = rng.normal(size=(T, B))
    values = rng.normal(size=(T, B))
    bootstrap_value = rng.normal(size=(B,))
    return log_rhos, discounts, rewards, values, bootstrap_value


@pytest.mark.parametrize("clip_rho,clip_pg_rho", [(1.0, 1.0), (0.5, 2.0), (3.7, 2.2), (None, None)])
@pytest.mark.parametrize("with_terminals", [False, True])
def test_from_importance_weights_matches_reference(clip_rho, clip_pg_rho, with_terminals):
    rng = np.random.default_rng(42)
    inputs = random_inputs(rng, with_terminals=with_terminals)
    expected_vs, expected_pg = reference_vtrace(*inputs, clip_rho, clip_pg_rho)
    out = vtrace.from_importance_weights(*(torch.from_numpy(x) for x in inputs),
                                         clip_rho_threshold=clip_rho, clip_pg_rho_threshold=clip_pg_rho)
    np.testing.assert_allclose(out.vs.numpy(), expected_vs, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.pg_advantages.numpy(), expected_pg, rtol=1e-10, atol=1e-10)


def test_on_policy_without_discount_cut_is_n_step_return():
    """With rho = 1 everywhere, v_s is the discounted return bootstrapped from the last value."""
    rng = np.random.default_rng(0)
    T, B = 6, 3
    rewards = rng.normal(size=(T, B))
    values = rng.normal(size=(T, B))
    bootstrap = rng.normal(size=(B,))
    gamma = 0.95
    out = vtrace.from_importance_weights(
        torch.zeros(T, B, dtype=torch.float64), torch.full((T, B), gamma, dtype=torch.float64),
        torch.from_numpy(rewards), torch.from_numpy(values), torch.from_numpy(bootstrap))
    expected = np.zeros((T, B))
    acc = bootstrap.copy()
    for t in reversed(range(T)):
        acc = rewards[t] + gamma * acc
        expected[t] = acc
    np.testing.assert_allclose(out.vs.numpy(), expected, rtol=1e-12)


def test_terminal_step_stops_bootstrapping():
    T, B = 4, 1
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)
    discounts = torch.tensor([[0.5], [0.0], [0.5], [0.5]], dtype=torch.float64)
    values = torch.zeros(T, B, dtype=torch.float64)
    bootstrap = torch.tensor([100.0], dtype=torch.float64)
    out = vtrace.from_importance_weights(torch.zeros(T, B, dtype=torch.float64), discounts, rewards, values, bootstrap)
    # Step 1 ends the episode: v_1 = r_1 and v_0 = r_0 + 0.5 * r_1, untouched by the bootstrap value.
    assert out.vs[1].item() == pytest.approx(2.0)
    assert out.vs[0].item() == pytest.approx(1.0 + 0.5 * 2.0)
    assert out.vs[3].item() == pytest.approx(4.0 + 0.5 * 100.0)


def test_from_logits_matches_importance_weights_and_has_no_grad():
    torch.manual_seed(0)
    T, B, A = 5, 4, 6
    behaviour = torch.randn(T, B, A, dtype=torch.float64)
    target = torch.randn(T, B, A, dtype=torch.float64, requires_grad=True)
    actions = torch.randint(A, (T, B))
    discounts = torch.full((T, B), 0.9, dtype=torch.float64)
    rewards = torch.randn(T, B, dtype=torch.float64)
    values = torch.randn(T, B, dtype=torch.float64, requires_grad=True)
    bootstrap = torch.randn(B, dtype=torch.float64)
    out = vtrace.from_logits(behaviour, target, actions, discounts, rewards, values, bootstrap)
    log_pi = torch.log_softmax(target, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    log_mu = torch.log_softmax(behaviour, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(out.log_rhos, log_pi - log_mu)
    direct = vtrace.from_importance_weights(log_pi - log_mu, discounts, rewards, values, bootstrap)
    torch.testing.assert_close(out.vs, direct.vs)
    torch.testing.assert_close(out.pg_advantages, direct.pg_advantages)
    assert not out.vs.requires_grad and not out.pg_advantages.requires_grad
    assert isinstance(out, tuple) and out._fields[:2] == ("vs", "pg_advantages")
