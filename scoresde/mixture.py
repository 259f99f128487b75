"""Gaussian mixtures: the exact oracle that samplers and likelihoods are judged against.

Under a linear SDE, p_t(x | x0) = N(alpha(t) x0, sigma(t)^2 I), so a mixture
p_0 = sum_k w_k N(mu_k, C_k) stays a mixture at every t:

    p_t(x) = sum_k w_k N(x; alpha mu_k, alpha^2 C_k + sigma^2 I).

With C_k = U_k diag(lam_k) U_k^T, each component's covariance at t is
U_k diag(alpha^2 lam_k + sigma^2) U_k^T, so its log-density and score take one projection:

    y_k = U_k^T (x - alpha mu_k),  log N_k = -1/2 sum y_k^2 / v_k - 1/2 sum log v_k - D/2 log 2 pi,
    grad log p_t(x) = sum_k r_k(x) (-U_k (y_k / v_k)),  r = softmax_k(log w_k + log N_k),

computed in float64 with log-sum-exp, so it is stable far from the modes and at tiny t.

Classes.  Each component k carries a class label c(k) (by default its own index).  The class
conditional p_0(x | y) = sum_{c(k)=y} (w_k / W_y) N(mu_k, C_k), W_y = sum_{c(k)=y} w_k, is again
a mixture, and diffusing commutes with conditioning (p_t(x | y) = int p(x_t | x_0) p_0(x_0 | y)),
so the exact time-dependent classifier is

    log p_t(y | x) = logsumexp_{c(k)=y} log r_k(x, t),

with r the responsibilities above; its gradient is grad log p_t(x | y) - grad log p_t(x) exactly
(Bayes: log p_t(y | x) = log p_t(x | y) + log W_y - log p_t(x)), the field classifier guidance adds.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from .sde import SDE, TimeLike, as_time

Tensor = torch.Tensor

__all__ = ["GaussianMixture", "ring8", "anisotropic", "build_mixture", "MIXTURES"]


class GaussianMixture:
    """A mixture of K Gaussians in D dimensions, with exact p_t and score under any linear SDE.

    Args:
        weights: ``[K]`` non-negative, not all zero; normalized here.
        means: ``[K, D]``.
        covs: ``[K, D, D]`` symmetric positive semi-definite, or ``[K, D]`` diagonals, or ``[K]``
            isotropic variances.  Singular covariances (an exact posterior given noiseless
            observations) sample exactly, and their p_t and score are regular for sigma(t) > 0;
            at sigma = 0 the density is taken on the support (see :meth:`condition`).
        event_shape: the data shape of one sample (default ``(D,)``); samples are reshaped to
            ``[n, *event_shape]`` and inputs of that shape are flattened, so a mixture can stand in
            for image-shaped data too.
        labels: ``[K]`` integer class of each component (default ``arange(K)``: each component
            its own class); see :meth:`conditional` and :meth:`class_log_prob_t`.
        num_classes: number of classes (default ``max(labels) + 1``).  A class may own no
            component (as in ``mix.conditional(y)``, which keeps the class count): its
            probability is zero and it has no conditional.
    """

    def __init__(self, weights, means, covs, event_shape: Optional[Sequence[int]] = None,
                 labels=None, num_classes: Optional[int] = None):
        w = torch.as_tensor(weights, dtype=torch.float64).detach().clone()
        mu = torch.as_tensor(means, dtype=torch.float64).detach().clone()
        c = torch.as_tensor(covs, dtype=torch.float64).detach().clone()
        if w.dim() != 1:
            raise ValueError(f"weights must have shape [K], got {tuple(w.shape)}")
        K = w.shape[0]
        if mu.dim() != 2 or mu.shape[0] != K:
            raise ValueError(f"means must have shape [K={K}, D], got {tuple(mu.shape)}")
        D = mu.shape[1]
        if not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"mixture weights must be finite and non-negative, got {w.tolist()}")
        if w.sum() <= 0:
            raise ValueError("mixture weights are all zero")
        if not torch.isfinite(mu).all():
            raise ValueError("means must be finite")
        if c.dim() == 1:
            if c.shape[0] != K:
                raise ValueError(f"isotropic covs must have shape [K={K}], got {tuple(c.shape)}")
            c = c[:, None, None] * torch.eye(D, dtype=torch.float64)
        elif c.dim() == 2:
            if c.shape != (K, D):
                raise ValueError(f"diagonal covs must have shape [K={K}, D={D}], got {tuple(c.shape)}")
            c = torch.diag_embed(c)
        elif c.dim() != 3 or c.shape != (K, D, D):
            raise ValueError(f"covs must have shape [K={K}, D={D}, D={D}], [K, D] or [K], got {tuple(c.shape)}")
        if not torch.isfinite(c).all():
            raise ValueError("covariances must be finite")
        if not torch.allclose(c, c.transpose(1, 2), rtol=1e-10, atol=1e-12):
            raise ValueError("covariances must be symmetric")
        lam, U = torch.linalg.eigh(c)
        # positive semi-definite covariances are allowed (an exact posterior given noiseless
        # observations is singular): eigenvalues within rounding of zero become exactly zero
        tol = 1e-12 * lam.abs().amax(1, keepdim=True).clamp_min(1.0)
        if (lam < -tol).any():
            bad = sorted(set(torch.nonzero(lam < -tol)[:, 0].tolist()))
            raise ValueError(f"covariances of components {bad} are not positive semi-definite "
                             f"(smallest eigenvalue {lam.min().item():.3g})")
        lam = torch.where(lam <= tol, torch.zeros_like(lam), lam)
        self._singular = bool((lam == 0).any())
        self.weights = w / w.sum()
        self.means = mu
        self.covs = c
        self._lam = lam            # [K, D] eigenvalues
        self._U = U                # [K, D, D] eigenvectors as columns
        self._log_w = torch.log(self.weights)
        self.event_shape = tuple(event_shape) if event_shape is not None else (D,)
        if math.prod(self.event_shape) != D:
            raise ValueError(f"event_shape {self.event_shape} does not hold D={D} values")
        self.labels, self.num_classes = _check_labels(labels, num_classes, K)

    @property
    def n_components(self) -> int:
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def to_dict(self) -> dict:
        return {"weights": self.weights, "means": self.means, "covs": self.covs}

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, D={self.dim})"

    # -- helpers --------------------------------------------------------------------------------
    def _flatten(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x[0].numel() != self.dim:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, self.event_shape))}] "
                             f"(D={self.dim} values a sample), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.dim)

    def _params_on(self, device) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        return (self._log_w.to(device), self.means.to(device), self._lam.to(device), self._U.to(device))

    def _component_terms(self, x: Tensor, alpha: Tensor, sigma: Tensor, want_score: bool):
        """log w_k + log N_k(x) ``[B, K]`` and, if asked, each component's score ``[B, K, D]``.

        ``alpha``, ``sigma`` are ``[B]`` (float64); x is ``[B, D]`` float64.
        """
        log_w, mu, lam, U = self._params_on(x.device)
        diff = x[:, None, :] - alpha[:, None, None] * mu[None]                 # [B, K, D]
        y = torch.einsum("bkd,kde->bke", diff, U)                               # U^T diff
        v = alpha[:, None, None] ** 2 * lam[None] + sigma[:, None, None] ** 2   # [B, K, D]
        if self._singular and bool((v == 0).any()):
            # a singular covariance at sigma = 0: the density on the component's support (the
            # directions of zero variance are left out; see `condition`, whose components share
            # one support, so that the responsibilities are the posterior's)
            pos = v > 0
            v = torch.where(pos, v, torch.ones_like(v))
            y = torch.where(pos, y, torch.zeros_like(y))
            rank = pos.sum(-1)
            logn = -0.5 * (y ** 2 / v).sum(-1) - 0.5 * torch.log(v).sum(-1) - 0.5 * rank * math.log(2 * math.pi)
        else:
            logn = -0.5 * (y ** 2 / v).sum(-1) - 0.5 * torch.log(v).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
        terms = log_w[None] + logn
        comp_score = None
        if want_score:
            comp_score = -torch.einsum("kde,bke->bkd", U, y / v)
        return terms, comp_score

    # -- densities ------------------------------------------------------------------------------
    def log_prob(self, x: Tensor) -> Tensor:
        """log p_0(x), shape ``[B]``, in x's dtype."""
        xf = self._flatten(x).to(torch.float64)
        B = xf.shape[0]
        one = torch.ones(B, dtype=torch.float64, device=x.device)
        terms, _ = self._component_terms(xf, one, torch.zeros_like(one), False)
        return torch.logsumexp(terms, 1).to(x.dtype)

    def log_prob_t(self, x: Tensor, sde: SDE, t: TimeLike) -> Tensor:
        """log p_t(x) under ``sde``: the exact density of the diffused mixture, shape ``[B]``."""
        xf = self._flatten(x).to(torch.float64)
        t64 = as_time(t, xf)
        terms, _ = self._component_terms(xf, sde.mean_coef(t64), sde.std(t64), False)
        return torch.logsumexp(terms, 1).to(x.dtype)

    def _log_joint_t(self, x: Tensor, sde: Optional[SDE], t: TimeLike) -> Tensor:
        """``[B, K]`` float64: log w_k + log N(x; alpha mu_k, alpha^2 C_k + sigma^2 I) under p_t
        (p_0 when ``sde`` is None), the terms responsibilities and class posteriors normalise."""
        xf = self._flatten(x).to(torch.float64)
        if sde is None:
            alpha = torch.ones(xf.shape[0], dtype=torch.float64, device=x.device)
            sigma = torch.zeros_like(alpha)
        else:
            t64 = as_time(t, xf)
            alpha, sigma = sde.mean_coef(t64), sde.std(t64)
        terms, _ = self._component_terms(xf, alpha, sigma, False)
        return terms

    def responsibilities(self, x: Tensor, sde: Optional[SDE] = None, t: TimeLike = 0.0) -> Tensor:
        """Posterior component probabilities ``[B, K]`` under p_t (p_0 when ``sde`` is None)."""
        terms = self._log_joint_t(x, sde, t)
        return torch.softmax(terms, 1)

    def score_t(self, x: Tensor, sde: SDE, t: TimeLike) -> Tensor:
        """grad_x log p_t(x) in closed form, in x's shape and dtype."""
        xf = self._flatten(x).to(torch.float64)
        t64 = as_time(t, xf)
        terms, comp = self._component_terms(xf, sde.mean_coef(t64), sde.std(t64), True)
        r = torch.softmax(terms, 1)
        score = (r[:, :, None] * comp).sum(1)
        return score.reshape(x.shape).to(x.dtype)

    def score_fn(self, sde: SDE):
        """The exact score of p_t under ``sde`` as a ``score_fn(x, t)``."""
        mix = self

        def score_fn(x: Tensor, t: Tensor) -> Tensor:
            return mix.score_t(x, sde, t)

        score_fn.sde = sde  # type: ignore[attr-defined]
        return score_fn

    def marginal_t(self, sde: SDE, t: float) -> "GaussianMixture":
        """The mixture p_t itself (at a single time t)."""
        tt = torch.tensor([float(t)], dtype=torch.float64)
        a, s = float(sde.mean_coef(tt)), float(sde.std(tt))
        covs = a ** 2 * self.covs + s ** 2 * torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, a * self.means, covs, self.event_shape, self.labels, self.num_classes)

    # -- sampling -------------------------------------------------------------------------------
    def sample(self, n: int, generator: Optional[torch.Generator] = None, dtype: Optional[torch.dtype] = None,
               device=None, return_labels: bool = False):
        """``n`` exact samples ``[n, *event_shape]`` (and their component labels if asked)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        gdev = generator.device if generator is not None else torch.device("cpu")
        labels = torch.multinomial(self.weights.to(gdev), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=gdev)
        lam, U = self._lam.to(gdev), self._U.to(gdev)
        # x = mu_k + U_k diag(sqrt(lam_k)) z
        x = self.means.to(gdev)[labels] + torch.einsum("nde,ne->nd", U[labels], lam[labels].sqrt() * z)
        x = x.to(dtype=dtype or torch.get_default_dtype(), device=device or gdev)
        x = x.reshape((n,) + self.event_shape)
        return (x, labels.to(x.device)) if return_labels else x

    def posterior_sample(self, x_t: Tensor, sde: SDE, t: float, generator: Optional[torch.Generator] = None) -> Tensor:
        """Exact draws of x0 ~ p(x0 | x_t), one for each row of ``x_t`` ``[B, *event_shape]``.

        x_t = alpha x0 + sigma e observes x0 through A = alpha I with noise sigma, so the
        posterior is the mixture of :meth:`condition` (``condition(alpha I, x_t, sigma)``),
        here for a whole batch at once: in component k's eigenbasis (C_k = U diag(lam) U^T),
        with y = U^T (x_t - alpha mu_k) and v = alpha^2 lam + sigma^2,

            k ~ r_k(x_t) (the responsibilities under p_t),
            x0 = mu_k + U (alpha lam / v * y + sqrt(lam sigma^2 / v) z),   z ~ N(0, I).

        The law of SDEdit with the exact score and a stochastic sampler, given its x_t0
        (:func:`scoresde.edit.sdedit`).  Returns float64 ``[B, *event_shape]``.
        """
        xf = self._flatten(x_t).to(torch.float64).cpu()
        B = xf.shape[0]
        tt = torch.tensor([float(t)], dtype=torch.float64)
        a, s = float(sde.mean_coef(tt)), float(sde.std(tt))
        r = self.responsibilities(xf, sde, float(t))                             # [B, K]
        gdev = generator.device if generator is not None else torch.device("cpu")
        k = torch.multinomial(r.to(gdev), 1, generator=generator).reshape(B).cpu()
        z = torch.randn(B, self.dim, generator=generator, dtype=torch.float64, device=gdev).cpu()
        mu, lam, U = self.means[k], self._lam[k], self._U[k]                    # [B, D], [B, D], [B, D, D]
        y = torch.einsum("bde,bd->be", U, xf - a * mu)
        v = a ** 2 * lam + s ** 2
        coef = a * lam / v * y + torch.sqrt(lam * s ** 2 / v) * z
        x0 = mu + torch.einsum("bde,be->bd", U, coef)
        return x0.reshape((B,) + self.event_shape)

    def entropy(self, n: int = 100_000, generator: Optional[torch.Generator] = None) -> Tuple[float, float]:
        """Differential entropy H(p_0) in nats, a Monte Carlo estimate, and its standard error.

        The plain estimate -mean log p(x) has the spread of log p itself (about 1 nat).  This one
        splits off the exact part: with r_k(x) = w_k N_k(x) / p(x) the responsibility of
        component k, log p(x) = log w_k + log N_k(x) - log r_k(x) for every k, so drawing
        (k, x) ~ p jointly,

            H = sum_k w_k (H_k - log w_k) + E_{(k, x) ~ p}[log r_k(x)],

        with the component entropies H_k exact (:meth:`gaussian_entropies`) and only the last
        term estimated, from ``n`` draws on ``generator``.  log r_k is 0 wherever the modes do not
        overlap, so the standard error std(log r_k) / sqrt(n) is tiny for separated modes (below
        1e-12 nats for ring8 at the default ``n``).

        Returns ``(entropy, standard_error)``.
        """
        if n < 2:
            raise ValueError(f"n must be >= 2 for a standard error, got {n}")
        x, k = self.sample(n, generator=generator, dtype=torch.float64, return_labels=True)
        xf = self._flatten(x)
        one = torch.ones(n, dtype=torch.float64, device=xf.device)
        terms, _ = self._component_terms(xf, one, torch.zeros_like(one), False)
        # log_softmax, not log(softmax): r_k = 1 - 1e-12 must give -1e-12, not 0 or log of a clamp
        log_r = torch.log_softmax(terms, 1).gather(1, k[:, None]).squeeze(1)
        w = self.weights.to(log_r.device)
        # xlogy: a component of weight 0 adds 0, not 0 * log 0 = nan
        exact = (w * self.gaussian_entropies().to(log_r.device)).sum() - torch.xlogy(w, w).sum()
        return float(exact + log_r.mean()), float(log_r.std() / math.sqrt(n))

    def gaussian_entropies(self) -> Tensor:
        """Entropy of each component, ``[K]`` nats."""
        return 0.5 * self.dim * (1 + math.log(2 * math.pi)) + 0.5 * torch.log(self._lam).sum(1)

    # -- inverse problems -----------------------------------------------------------------------
    def condition(self, A, y, noise_std: Optional[float] = None) -> "GaussianMixture":
        """The exact posterior p(x0 | y) for y = A x0 + noise_std * e, e ~ N(0, I): a mixture again.

        ``A``: a :mod:`scoresde.inverse.operators` operator or a dense ``[m, D]`` matrix; ``y``: one observation,
        of the operator's output shape with or without a batch dimension of 1; ``noise_std``
        (default: the operator's, 0 for a matrix).  Component by component (Bishop, PRML eq. 2.116;
        the Kalman update), with G_k = A C_k A^T + s^2 I:

            w_k'  ∝ w_k N(y; A mu_k, G_k)                      (the evidence reweights the modes),
            mu_k' = mu_k + C_k A^T G_k^-1 (y - A mu_k),
            C_k'  = C_k - C_k A^T G_k^-1 A C_k.

        For s = 0 the posterior covariances are singular (zero variance along the row space of A;
        every component's mean satisfies A mu_k' = y, so all components share one support, and
        :meth:`log_prob` and :meth:`responsibilities` are densities on it).  G_k must be
        invertible: for s = 0, A needs full row rank on each component's support.

        The exact conditional score of p_t(x_t | y) at every t is this posterior's score under the
        SDE, ``mix.condition(A, y).score_fn(sde)``: diffusing p(x0 | y) gives p_t(x_t | y), since the
        forward noise does not depend on y.
        """
        from .inverse.operators import as_operator

        op = as_operator(A, noise_std, self.event_shape)
        s = op.noise_std if noise_std is None else float(noise_std)
        if not (s >= 0 and math.isfinite(s)):
            raise ValueError(f"noise_std must be a finite number >= 0, got {s}")
        M = op.as_matrix(self.event_shape)                                     # [m, D]
        m = M.shape[0]
        yf = torch.as_tensor(y, dtype=torch.float64).detach().cpu().reshape(-1)
        if yf.numel() != m:
            raise ValueError(f"y must hold the m={m} values the operator gives one sample "
                             f"(one observation, batch dimension 1 at most), got shape {tuple(torch.as_tensor(y).shape)}")
        if not torch.isfinite(yf).all():
            raise ValueError("y must be finite")
        AC = torch.einsum("md,kde->kme", M, self.covs)                         # [K, m, D]
        G = AC @ M.T + s ** 2 * torch.eye(m, dtype=torch.float64)              # [K, m, m]
        L, info = torch.linalg.cholesky_ex(0.5 * (G + G.transpose(1, 2)))
        if bool((info != 0).any()):
            bad = torch.nonzero(info).reshape(-1).tolist()
            raise ValueError(f"A C_k A^T + noise_std^2 I is singular for components {bad}: with noise_std = 0, "
                             "A needs independent rows (full row rank on each component's support)")
        r = yf[None] - self.means @ M.T                                        # [K, m]
        sol = torch.cholesky_solve(r[..., None], L)                            # G^-1 r
        log_ev = (-0.5 * (r[..., None] * sol).sum((1, 2)) - torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)
                  - 0.5 * m * math.log(2 * math.pi))
        means = self.means + (AC.transpose(1, 2) @ sol)[..., 0]
        X = torch.linalg.solve_triangular(L, AC, upper=False)                  # L^-1 A C
        covs = self.covs - X.transpose(1, 2) @ X
        covs = 0.5 * (covs + covs.transpose(1, 2))
        log_w = self._log_w + log_ev
        weights = torch.softmax(log_w, 0)
        return GaussianMixture(weights, means, covs, self.event_shape, labels=self.labels,
                               num_classes=self.num_classes)

    def prune(self, min_weight: float = 1e-6) -> "GaussianMixture":
        """The mixture without components of weight below ``min_weight`` (weights renormalized).

        A posterior often keeps modes of weight 1e-20; mode-by-mode W2 needs samples in every
        mode it scores, so judge samples against the pruned posterior (it differs from the full
        one by at most K * min_weight in total variation).
        """
        keep = self.weights >= min_weight
        if not bool(keep.any()):
            raise ValueError(f"no component has weight >= {min_weight} (largest {float(self.weights.max()):.3g})")
        return GaussianMixture(self.weights[keep], self.means[keep], self.covs[keep], self.event_shape,
                               labels=self.labels[keep], num_classes=self.num_classes)

    # -- classes --------------------------------------------------------------------------------
    def _class_mask(self, device) -> Tensor:
        """``[K, C]`` one-hot: component k belongs to class c."""
        return torch.nn.functional.one_hot(self.labels.to(device), self.num_classes).to(torch.bool)

    def _check_class(self, y) -> int:
        if isinstance(y, bool) or not isinstance(y, int) and not (torch.is_tensor(y) and y.numel() == 1
                                                                   and not y.is_floating_point()):
            raise ValueError(f"class y must be an integer in [0, {self.num_classes}), got {y!r}")
        y = int(y)
        if not 0 <= y < self.num_classes:
            raise ValueError(f"class y must lie in [0, {self.num_classes}), got {y}")
        return y

    def class_weights(self) -> Tensor:
        """The class prior W_y = sum_{c(k)=y} w_k, ``[C]`` float64."""
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, self.labels, self.weights)

    def conditional(self, y: int) -> "GaussianMixture":
        """p_0(x | y): the mixture of class ``y``'s components with weights w_k / W_y (labels kept)."""
        y = self._check_class(y)
        keep = self.labels == y
        if not keep.any():
            raise ValueError(f"class {y} owns no component of this mixture (labels {self.labels.tolist()})")
        return GaussianMixture(self.weights[keep], self.means[keep], self.covs[keep], self.event_shape,
                               self.labels[keep], self.num_classes)

    def class_log_prob_t(self, x: Tensor, sde: Optional[SDE], t: TimeLike = 0.0) -> Tensor:
        """The exact classifier log p_t(y | x) for every class, ``[B, C]`` in x's dtype.

        log-sum-exp over each class's component log-responsibilities, in float64 (so a class far
        from x gets a finite, very negative value, not -inf); differentiable in x.  ``sde=None``
        gives the classifier of p_0.
        """
        terms = self._log_joint_t(x, sde, t)
        B = terms.shape[0]
        log_r = torch.log_softmax(terms, 1)                                         # [B, K]
        mask = self._class_mask(x.device)                                           # [K, C]
        present = mask.any(0)
        masked = log_r[:, :, None].masked_fill(~mask[None, :, present], -math.inf)  # [B, K, C']
        # an empty class is -inf without a graph (log-sum-exp over nothing has a NaN gradient)
        out = torch.full((B, self.num_classes), -math.inf, dtype=torch.float64, device=x.device)
        out = out.masked_scatter(present[None].expand(B, -1), torch.logsumexp(masked, 1))
        return out.to(x.dtype)

    def _labels_for(self, labels, B: int, device) -> Tensor:
        y = torch.as_tensor(labels, device=device)
        if y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got dtype {y.dtype}")
        if y.dim() == 0:
            y = y.expand(B)
        if y.shape != (B,):
            raise ValueError(f"labels must be an integer or have shape [B={B}], got {tuple(y.shape)}")
        if ((y < 0) | (y >= self.num_classes)).any():
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got values {sorted(set(y.tolist()))}")
        return y.long()

    def class_score_t(self, x: Tensor, sde: SDE, t: TimeLike, labels) -> Tensor:
        """grad_x log p_t(x | y_b) for each sample's own class ``labels [B]`` (or one int for all).

        The components outside y_b are dropped from the responsibilities: the renormalised weights
        w_k / W_y only shift every kept log-term by the same constant, which the softmax ignores.
        """
        xf = self._flatten(x).to(torch.float64)
        y = self._labels_for(labels, xf.shape[0], x.device)
        t64 = as_time(t, xf)
        terms, comp = self._component_terms(xf, sde.mean_coef(t64), sde.std(t64), True)
        inside = self.labels.to(x.device)[None, :] == y[:, None]                    # [B, K]
        r = torch.softmax(terms.masked_fill(~inside, -math.inf), 1)
        score = (r[:, :, None] * comp).sum(1)
        return score.reshape(x.shape).to(x.dtype)

    def class_score_fn(self, sde: SDE, labels):
        """The exact conditional score grad log p_t(x | y) as a ``score_fn(x, t)``.

        ``labels`` is one class for every sample or a ``[B]`` tensor, one class a sample (then
        the sampler's batch must be B).  For a single class this equals
        ``mix.conditional(y).score_fn(sde)``.
        """
        mix = self
        if not torch.is_tensor(labels):
            labels = self._check_class(labels)

        def score_fn(x: Tensor, t: Tensor) -> Tensor:
            return mix.class_score_t(x, sde, t, labels)

        score_fn.sde = sde  # type: ignore[attr-defined]
        return score_fn

    def class_log_prob_fn(self, sde: SDE, labels):
        """``log_prob_fn(x, t) -> [B]`` = exact log p_t(y_b | x_b), the input of classifier guidance."""
        mix = self
        if not torch.is_tensor(labels):
            labels = self._check_class(labels)

        def log_prob_fn(x: Tensor, t: Tensor) -> Tensor:
            y = mix._labels_for(labels, x.shape[0], x.device)
            return mix.class_log_prob_t(x, sde, t).gather(1, y[:, None])[:, 0]

        return log_prob_fn

    def sample_labelled(self, n: int, generator: Optional[torch.Generator] = None,
                        dtype: Optional[torch.dtype] = None, device=None) -> Tuple[Tensor, Tensor]:
        """``n`` exact samples and their classes ``[n]`` (the same draws as :meth:`sample`)."""
        x, comp = self.sample(n, generator=generator, dtype=dtype, device=device, return_labels=True)
        return x, self.labels.to(comp.device)[comp]


def _check_labels(labels, num_classes: Optional[int], K: int) -> Tuple[Tensor, int]:
    """Component classes ``[K]`` (long, CPU) and the class count, validated."""
    if labels is None:
        lab = torch.arange(K)
    else:
        lab = torch.as_tensor(labels).detach().clone()
        if lab.is_floating_point() or lab.dtype == torch.bool:
            if lab.is_floating_point() and torch.equal(lab, lab.round()):
                lab = lab.long()
            else:
                raise ValueError(f"labels must be integers, got {lab.tolist()}")
        if lab.shape != (K,):
            raise ValueError(f"labels must have shape [K={K}], got {tuple(lab.shape)}")
        lab = lab.long().cpu()
        if (lab < 0).any():
            raise ValueError(f"labels must be non-negative, got {lab.tolist()}")
    C = int(lab.max()) + 1 if num_classes is None else num_classes
    if isinstance(C, bool) or not isinstance(C, int) or C < int(lab.max()) + 1:
        raise ValueError(f"num_classes must be an integer > max(labels) = {int(lab.max())}, got {num_classes!r}")
    return lab, C


def ring8(radius: float = 4.0, std: float = 0.25, labels=None) -> GaussianMixture:
    """Eight equal modes of std 0.25 centred on a circle of radius 4 (2-D).

    Classes: one a mode by default (mode k, at angle 2 pi k / 8, is class k); pass ``labels``
    (``[8]``) to group modes, e.g. ``[0, 1] * 4`` for two interleaved classes of four modes.
    """
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return GaussianMixture(torch.ones(8), means, torch.full((8,), std ** 2, dtype=torch.float64), labels=labels)


def anisotropic(dim: int = 16, n_modes: int = 4, seed: int = 0, spread: float = 4.0,
                eig_min: float = 0.01, eig_max: float = 1.0, labels=None) -> GaussianMixture:
    """A higher-dimensional mixture with unequal weights and rotated, anisotropic covariances.

    Means are drawn on a sphere of radius ``spread``; each covariance is R diag(lam) R^T with a
    random rotation R and eigenvalues log-spaced in [eig_min, eig_max] (condition number 100 by
    default); weights are 1..K normalized.  Fixed by ``seed``.  Classes: one a mode (mode k is
    class k) unless ``labels`` groups them.
    """
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n_modes, dim, generator=g, dtype=torch.float64)
    means = spread * m / m.norm(dim=1, keepdim=True)
    lam = torch.logspace(math.log10(eig_min), math.log10(eig_max), dim, dtype=torch.float64)
    covs = []
    for _ in range(n_modes):
        q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))[None]
        c = (q * lam[None]) @ q.T
        covs.append(0.5 * (c + c.T))
    weights = torch.arange(1, n_modes + 1, dtype=torch.float64)
    return GaussianMixture(weights, means, torch.stack(covs), labels=labels)


MIXTURES = {
    "ring8": ring8,
    "aniso16": lambda: anisotropic(dim=16, n_modes=4, seed=0),
    "aniso8": lambda: anisotropic(dim=8, n_modes=3, seed=1),
}


def build_mixture(name: str) -> GaussianMixture:
    """A ready-made problem by name: ``ring8``, ``aniso16`` (16-d, 4 modes) or ``aniso8``."""
    if name not in MIXTURES:
        raise ValueError(f"unknown mixture {name!r}; valid names: {sorted(MIXTURES)}")
    return MIXTURES[name]()
