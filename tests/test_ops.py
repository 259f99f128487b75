import pytest
import torch

import scoresde as sd
from scoresde import ops


def _cases():
    g = torch.Generator().manual_seed(0)
    img_mask = torch.rand(1, 4, 6, generator=g) < 0.4
    A = torch.randn(3, 5, generator=g, dtype=torch.float64)
    A_dep = torch.cat([A, A[:1] + A[1:2]])          # dependent rows: rank 3 of 4
    return {
        "mask_vec": (ops.Mask(torch.tensor([True, False, True, False, False])), (5,)),
        "mask_img": (ops.Mask(img_mask.expand(3, 4, 6)), (3, 4, 6)),
        "matrix": (ops.Matrix(A), (5,)),
        "matrix_rank_deficient": (ops.Matrix(A_dep), (5,)),
        "matrix_img": (ops.Matrix(torch.randn(4, 12, generator=g), event_shape=(3, 2, 2)), (3, 2, 2)),
        "downsample": (ops.Downsample(2), (2, 4, 6)),
        "gray_mean": (ops.Grayscale("mean"), (3, 4, 2)),
        "gray_lum": (ops.Grayscale("luminance", noise_std=0.1), (3, 2, 2)),
    }


CASES = _cases()


@pytest.fixture(params=sorted(CASES))
def case(request):
    return CASES[request.param]


def _x(shape, n=7, seed=1):
    return torch.randn((n,) + shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_adjoint_identity(case):
    op, shape = case
    x = _x(shape)
    y = torch.randn(op.forward(x).shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lhs = (op.forward(x) * y).flatten(1).sum(1)
    rhs = (x * op.adjoint(y)).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_pinv_is_a_generalized_inverse_and_matches_dense_pinv(case):
    op, shape = case
    x = _x(shape)
    Ax = op.forward(x)
    torch.testing.assert_close(op.forward(op.pinv(Ax)), Ax, rtol=1e-10, atol=1e-10)   # A A^+ A = A
    M = op.as_matrix(shape)
    y = torch.randn(Ax.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = (y.reshape(y.shape[0], -1) @ torch.linalg.pinv(M).T).reshape(x.shape)
    torch.testing.assert_close(op.pinv(y), ref, rtol=1e-9, atol=1e-9)


def test_dense_matrix_is_consistent_with_forward(case):
    op, shape = case
    x = _x(shape)
    M = op.as_matrix(shape)
    assert M.shape == (op.forward(x)[0].numel(), x[0].numel())
    torch.testing.assert_close(op.forward(x).reshape(x.shape[0], -1), x.reshape(x.shape[0], -1) @ M.T)


def test_obs_coords_are_orthonormal_coordinates_of_the_row_space(case):
    op, shape = case
    x = _x(shape)
    obs_shape = tuple(op.forward(x).shape[1:])
    r = op.obs_coords(x).shape[1]
    V = op.embed(torch.eye(r, dtype=torch.float64), obs_shape).reshape(r, -1).T      # [D, r]
    torch.testing.assert_close(V.T @ V, torch.eye(r, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    # V V^T is the projection A^+ A, and whiten(A x) = V^T x
    torch.testing.assert_close((x.reshape(x.shape[0], -1) @ V) @ V.T, op.project(x).reshape(x.shape[0], -1),
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(op.whiten(op.forward(x)), op.obs_coords(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("a,b", [(1.0, 0.0), (0.3, 0.7), (2.0, 1e-3)])
def test_gram_solve_matches_dense_solve(case, a, b):
    op, shape = case
    M = op.as_matrix(shape)
    G = a * M @ M.T + b * torch.eye(M.shape[0], dtype=torch.float64)
    v = op.forward(_x(shape))
    ref = v.reshape(v.shape[0], -1) @ torch.linalg.pinv(G).T
    torch.testing.assert_close(op.gram_solve(v, a, b).reshape(v.shape[0], -1), ref, rtol=1e-8, atol=1e-8)


def test_mask_consistent_sets_observed_entries_exactly():
    op = ops.Mask(torch.tensor([True, False, True]))
    x = torch.tensor([[0.1, 5.0, 0.7]], dtype=torch.float32)
    y = torch.tensor([[0.3, 0.2]], dtype=torch.float32)
    out = op.consistent(x, y)
    assert torch.equal(op.forward(out), y) and out[0, 1] == 5.0


def test_operators_keep_dtype_and_shapes():
    x = torch.randn(2, 3, 4, 4)
    assert ops.Downsample(2).forward(x).shape == (2, 3, 2, 2)
    assert ops.Grayscale().forward(x).shape == (2, 1, 4, 4)
    assert ops.Grayscale().pinv(ops.Grayscale().forward(x)).dtype == torch.float32
    assert ops.Downsample(2).input_shape((3, 2, 2)) == (3, 4, 4)


@pytest.mark.parametrize("make,match", [
    (lambda: ops.Mask(torch.zeros(3, dtype=torch.bool)), "observes nothing"),
    (lambda: ops.Mask(torch.tensor([0.5, 1.0])), "only 0 and 1"),
    (lambda: ops.Grayscale("sepia"), "valid names"),
    (lambda: ops.Downsample(0), "positive integer"),
    (lambda: ops.Matrix(torch.zeros(2, 3)), "observes nothing"),
    (lambda: ops.Mask(torch.tensor([True]), noise_std=-1.0), "noise_std"),
])
def test_bad_operators_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="event shape"):
        ops.Mask(torch.tensor([True, False])).forward(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="divisible"):
        ops.Downsample(3).forward(torch.zeros(1, 1, 4, 4))


def test_exported():
    assert sd.ops.Mask is ops.Mask and callable(sd.sample_posterior)
