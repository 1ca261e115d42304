"""Subspace selectors and the projection geometry."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtrain.optim.subspace.selectors import exact_svd_basis, randomized_svd_basis
from slimtrain.optim.subspace.geometry import (apply_back_, basis_shape, choose_side, project,
                                               projected_shape, reproject_moments_)


def project_back(N, basis, side):
    """back(N) through the optimizer's own back-map (param ← 0·param + 1·back(N))."""
    m, n = (basis.shape[0], N.shape[1]) if side == "left" else (N.shape[0], basis.shape[1])
    out = torch.zeros(m, n, dtype=N.dtype)
    apply_back_(out, N, basis, side, alpha=1.0, beta=0.0)
    return out


def low_rank_plus_noise(m, n, r, noise=1e-3, seed=0):
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(m, r, generator=g))[0]
    V = torch.linalg.qr(torch.randn(n, r, generator=g))[0]
    s = torch.linspace(10, 1, r)
    return U @ torch.diag(s) @ V.t() + noise * torch.randn(m, n, generator=g)


def subspace_gap(A, B):
    """‖A Aᵀ − B Bᵀ‖ for two orthonormal bases with columns as vectors: 0 when they span the same space."""
    return torch.linalg.matrix_norm(A @ A.t() - B @ B.t(), ord=2).item()


@pytest.mark.parametrize("shape", [(40, 90), (90, 40), (64, 64)])
def test_randomized_matches_exact_on_low_rank_gradients(shape):
    G = low_rank_plus_noise(*shape, r=6)
    for side in ("left", "right"):
        exact = exact_svd_basis(G, 6, side)[0]
        approx, R = randomized_svd_basis(G, 6, side, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(R, project(G, approx, side), atol=1e-4, rtol=1e-4)
        a, b = (exact, approx) if side == "left" else (exact.t(), approx.t())
        assert subspace_gap(a, b) < 1e-3
        assert torch.allclose(b.t() @ b, torch.eye(6), atol=1e-5)


def test_warm_start_beats_cold_start_on_a_drifting_gradient():
    """A flat-spectrum matrix is hard for a cold range finder; the previous basis helps."""
    G0 = low_rank_plus_noise(128, 256, r=16, noise=0.3, seed=0)
    G1 = G0 + 0.05 * torch.randn(128, 256, generator=torch.Generator().manual_seed(5))
    exact = exact_svd_basis(G1, 16, "left")[0]
    previous = exact_svd_basis(G0, 16, "left")[0]

    def captured(B):  # energy of G1 captured by the basis, relative to the optimum
        return (torch.linalg.matrix_norm(B.t() @ G1) / torch.linalg.matrix_norm(exact.t() @ G1)).item()

    cold = randomized_svd_basis(G1, 16, "left", power_iters=1, oversample=0,
                                generator=torch.Generator().manual_seed(0))[0]
    warm = randomized_svd_basis(G1, 16, "left", previous=previous, power_iters=1, oversample=0,
                                generator=torch.Generator().manual_seed(0))[0]
    assert captured(cold) < 0.95
    assert captured(warm) > max(captured(previous), 0.998)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(2, 40), n=st.integers(2, 40), r=st.integers(1, 40), rule=st.sampled_from(
    ["auto", "left", "right", "reverse"]))
def test_projection_shapes_for_every_m_n_r(m, n, r, rule):
    """Property: for any shape and any rank below min(m, n), project / back-map shapes are right,
    the state is r × max(m, n) under 'auto', and P Pᵀ is a projection."""
    if r >= min(m, n):
        return
    side = choose_side((m, n), rule)
    g = torch.Generator().manual_seed(m * 1000 + n)
    G = torch.randn(m, n, generator=g, dtype=torch.float64)
    B, R_free = exact_svd_basis(G, r, side)
    B = B.double()  # float32 precision: orthonormal to ~1e-6
    assert tuple(B.shape) == basis_shape((m, n), r, side)
    R = project(G, B, side)
    torch.testing.assert_close(R_free.double(), R, atol=1e-4, rtol=1e-4)
    assert tuple(R.shape) == projected_shape((m, n), r, side)
    if rule == "auto":
        assert R.numel() == r * max(m, n)
    back = project_back(R, B, side)
    assert back.shape == G.shape
    torch.testing.assert_close(project_back(project(back, B, side), B, side), back, atol=1e-5, rtol=1e-5)
    W = torch.randn(m, n, generator=g, dtype=torch.float64)
    expected = 0.9 * W - 0.1 * back
    apply_back_(W, R, B, side, alpha=-0.1, beta=0.9)
    torch.testing.assert_close(W, expected)


@pytest.mark.parametrize("side", ["left", "right"])
def test_reprojection_is_exact_for_a_permuted_signed_basis(side):
    shape = (20, 50) if side == "left" else (50, 20)
    G = torch.randn(*shape)
    old = exact_svd_basis(G, 5, side)[0]
    perm, signs = torch.tensor([3, 0, 4, 1, 2]), torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0])
    new = old[:, perm] * signs if side == "left" else old[perm, :] * signs[:, None]
    M = torch.randn(projected_shape(shape, 5, side))
    V = torch.rand(projected_shape(shape, 5, side))
    M2, V2 = M.clone(), V.clone()
    reproject_moments_({"exp_avg": (M2, "first"), "exp_avg_sq": (V2, "second")}, old, new, side)
    # the momentum expressed in the full space is unchanged, and V is permuted
    torch.testing.assert_close(project_back(M2, new, side), project_back(M, old, side), atol=1e-5, rtol=1e-5)
    if side == "left":
        torch.testing.assert_close(V2, V[perm], atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(V2, V[:, perm], atol=1e-5, rtol=1e-5)
    assert (V2 >= 0).all()
