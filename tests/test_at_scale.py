"""At image size (issue 29.1): no score call sees more rows than the bound (``max_rows``, default
``scoresde.score.MAX_ROWS``) in elbo, log_likelihood, bits_per_dim and the likelihood app at
3x32x32, and ``divergence="auto"`` takes Hutchinson's estimate there, not D backward passes.

The score is N(0, I)'s under VP, -x at every t (exact for standard normal data), so the solves are
short and every value has a closed form to check against."""

import math

import pytest
import torch

import scoresde as sd
from scoresde.score import MAX_ROWS

pytestmark = pytest.mark.usefixtures("one_thread")

CIFAR = (3, 32, 32)


class RecordingScore:
    """-x, recording the rows of every call."""

    def __init__(self):
        self.rows = []

    def __call__(self, x, t):
        self.rows.append(x.shape[0])
        return -x


@pytest.fixture
def vjp_count(monkeypatch):
    """The number of vector-Jacobian products (backward passes, batched or not) the divergence takes."""
    import scoresde.likelihood.divergence as div

    count = [0]
    orig = div._vjps

    def counted(s, x, V, *args, **kw):
        count[0] += V.shape[0]
        return orig(s, x, V, *args, **kw)

    monkeypatch.setattr(div, "_vjps", counted)
    return count


def _gauss(n, seed=0):
    return torch.randn((n,) + CIFAR, generator=torch.Generator().manual_seed(seed))


def test_elbo_at_cifar_size_with_1000_time_draws_never_exceeds_the_row_bound():
    """3 points x n_t = 1,000 x 2 Stein rows = 6,000 rows: split into calls of <= MAX_ROWS, and the
    bound stays tight for the exact score (ELBO = log p_eps within its standard error)."""
    score = RecordingScore()
    x = _gauss(3)
    res = sd.elbo(score, sd.VPSDE(), x, n_t=1000, generator=torch.Generator().manual_seed(1))
    assert max(score.rows) <= MAX_ROWS and sum(score.rows) == 3 * 1000 * 2
    assert res.nfe == len(score.rows) == math.ceil(6000 / MAX_ROWS)
    # exact score, prior N(0, I) = p_T: the bound is log N(x; 0, I) up to eps's blur
    logp = -0.5 * (x.reshape(3, -1).pow(2).sum(1) + x[0].numel() * math.log(2 * math.pi))
    assert torch.allclose(res.elbo.double(), logp.double(), atol=5 * float(res.stderr.max()) + 0.5)


@pytest.mark.parametrize("max_rows,batch_size", [(100, None), (7, 2), (2, None)])
def test_elbo_splits_draws_by_the_given_bound_whatever_the_batch_size(max_rows, batch_size):
    score = RecordingScore()
    sd.elbo(score, sd.VPSDE(), _gauss(5)[:, :1, :4, :4], n_t=30, max_rows=max_rows, batch_size=batch_size,
            generator=torch.Generator().manual_seed(1))
    assert max(score.rows) <= max_rows and sum(score.rows) == 5 * 30 * 2


def test_elbo_rejects_a_bound_below_one_draws_rows():
    with pytest.raises(ValueError, match="max_rows"):
        sd.elbo(RecordingScore(), sd.VPSDE(), _gauss(2)[:, :1, :2, :2], n_t=4, max_rows=1)
    with pytest.raises(TypeError, match="max_rows"):
        sd.elbo(RecordingScore(), sd.VPSDE(), _gauss(2)[:, :1, :2, :2], n_t=4, max_rows=2.5)


def test_log_likelihood_at_cifar_size_with_defaults_takes_hutchinson_one_backward_an_evaluation(vjp_count):
    """D = 3072 with the defaults: one backward pass an evaluation (the exact trace would take 3072)."""
    res = sd.log_likelihood(RecordingScore(), sd.VPSDE(), _gauss(2), generator=torch.Generator().manual_seed(1))
    assert res.divergence == "hutchinson" and vjp_count[0] == res.nfe


def test_log_likelihood_at_cifar_size_chunks_to_a_small_bound():
    score = RecordingScore()
    sd.log_likelihood(score, sd.VPSDE(), _gauss(5), max_rows=2, rtol=1e-3, atol=1e-3)
    assert max(score.rows) == 2 and min(score.rows) == 1


@pytest.mark.slow
def test_log_likelihood_at_cifar_size_chunks_to_the_bound_and_takes_hutchinson(vjp_count):
    """D = 3072 with the defaults: divergence 'auto' runs Hutchinson (one backward pass an
    evaluation, not 3072), every call within MAX_ROWS, and log p is N(0, I)'s."""
    score = RecordingScore()
    n = MAX_ROWS + 6
    x = _gauss(n)
    res = sd.log_likelihood(score, sd.VPSDE(), x, generator=torch.Generator().manual_seed(1), rtol=1e-3, atol=1e-3)
    assert res.divergence == "hutchinson"
    assert max(score.rows) <= MAX_ROWS and min(score.rows) == 6
    assert vjp_count[0] == res.nfe                       # one vector-Jacobian product an evaluation
    logp = -0.5 * (x.reshape(n, -1).pow(2).sum(1) + x[0].numel() * math.log(2 * math.pi))
    assert torch.allclose(res.logp.double(), logp.double(), rtol=1e-4, atol=0.5)


def test_divergence_auto_is_exact_up_to_64_dimensions(vjp_count):
    res = sd.log_likelihood(RecordingScore(), sd.VPSDE(), torch.zeros(3, 1, 8, 8), rtol=1e-3, atol=1e-3)
    assert res.divergence == "exact" and vjp_count[0] == 64 * res.nfe        # D vector-Jacobian products
    res = sd.log_likelihood(RecordingScore(), sd.VPSDE(), torch.zeros(3, 65), rtol=1e-3, atol=1e-3)
    assert res.divergence == "hutchinson"
    assert sd.likelihood.ode.resolve_divergence("auto", 64) == "exact"
    assert sd.likelihood.ode.resolve_divergence("auto", 65) == "hutchinson"


def test_log_likelihood_honours_an_explicit_bound_below_batch_size():
    score = RecordingScore()
    sd.log_likelihood(score, sd.VPSDE(), torch.zeros(10, 2), batch_size=8, max_rows=3, rtol=1e-3, atol=1e-3)
    assert max(score.rows) == 3


def test_bits_per_dim_at_cifar_size_honours_a_small_bound():
    score = RecordingScore()
    k = torch.randint(0, 256, (3,) + CIFAR, generator=torch.Generator().manual_seed(0))
    sd.bits_per_dim(score, sd.VPSDE(), k, repeats=2, max_rows=4, rtol=1e-3, atol=1e-3,
                    generator=torch.Generator().manual_seed(1))
    assert max(score.rows) == 4 and sum(score.rows) % 6 == 0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ode", "elbo"])
def test_bits_per_dim_at_cifar_size_never_exceeds_the_row_bound(method):
    """Repeats x points are one batch for the solver: 3 repeats of 400 images (1,200 rows) split."""
    score = RecordingScore()
    k = torch.randint(0, 256, (400 if method == "ode" else 2,) + CIFAR, generator=torch.Generator().manual_seed(0))
    kw = dict(rtol=1e-3, atol=1e-3) if method == "ode" else dict(n_t=300)
    res = sd.bits_per_dim(score, sd.VPSDE(), k, repeats=3, method=method, generator=torch.Generator().manual_seed(1),
                          **kw)
    assert max(score.rows) <= MAX_ROWS
    assert sum(score.rows) > MAX_ROWS            # it did have to split
    assert res.bpd.shape == (k.shape[0],) and torch.isfinite(res.bpd).all()


def test_likelihood_app_at_cifar_size_chunks_score_calls_by_its_batch_size(tmp_path):
    """The app's batch_size is its row bound: 3 images, method=both, n_t = 1,000 (6,000 ELBO rows)."""
    from PIL import Image

    from scoresde.apps import likelihood as likelihood_app

    g = torch.Generator().manual_seed(0)
    for i in range(5):
        img = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(img).save(tmp_path / f"{i}.png")

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sde = sd.VPSDE()
            self.rec = RecordingScore()
            self.dummy = torch.nn.Parameter(torch.zeros(()))
            self.checkpoint = {"step": 0, "config": {"data": {"name": "image_folder", "root": str(tmp_path),
                                                               "n_test": 3}}}

        def forward(self, x, t):
            return self.rec(x, t)

    model = Model()
    out = likelihood_app.checkpoint_likelihood(model, n=3, batch_size=500, method="both", n_t=1000, rtol=1e-3,
                                               atol=1e-3, seed=1)
    assert max(model.rec.rows) <= 500 and sum(model.rec.rows) > 6000
    assert out["divergence"] == "auto" and out["divergence_used"] == "hutchinson"
    assert out["nonfinite"] == 0 and out["elbo_nonfinite"] == 0
