"""``scoresde-likelihood``: the NLL of a checkpoint's data through the probability-flow ODE.

    scoresde-likelihood checkpoint=outputs/train/.../checkpoints/last.pt            # 2000 test points
    scoresde-likelihood checkpoint=... split=train n=500 divergence=hutchinson seed=1
    python -m scoresde.apps.likelihood checkpoint=... rtol=1e-6 atol=1e-6
    scoresde-likelihood checkpoint=diffusers:/models/ddpm data=image_folder data.root=/my/images data.size=32
    scoresde-likelihood checkpoint=score_sde:checkpoint_26.pth score_sde.config=vp/cifar10_ddpmpp_continuous \
        data=cifar10 data.root=/data protocol=score_sde repeats=5 n=null     # the paper's bits/dim

The data set is rebuilt from the checkpoint's config (same seed: the same held-out points the
trainer evaluated); ``data=NAME data.KEY=...`` scores another data set instead (it must live in
the model's space).  ``checkpoint=diffusers:PATH`` is a local diffusers model folder
(:func:`scoresde.checkpoints.load_score`): it carries no data set, so ``data=`` is required (an
image data set: 8-bit levels on the grid x = 2 k / 255 - 1, the DDPM convention); so does
``checkpoint=score_sde:PATH`` with ``score_sde.config=NAME_OR_FILE`` (a score_sde_pytorch checkpoint).
``protocol=score_sde`` is the paper's bits/dim (cells [k/256, (k+1)/256) of pixel intensity in the
model's data range, one Rademacher probe per image per pass, ``repeats`` passes; ``log_det_bits``
is the reference's 7 / 8 bits "offset"); ``protocol=ours`` centres the cells on the training grid
(docs/likelihood.md says how the two relate).
``sd.log_likelihood`` gives log p in the model's space; the density of the
data as given is

    log p_data(x) = log p_model(s(x)) + log|det ds/dx|          (s: the data set's affine scaler)

so ``nll`` (nats per sample, mean over the points, with its standard error ``nll_se``) is in data
space.  For Gaussian-mixture data sets, ``kl`` = mean(log p_data - log p_model) over the same
points, from the exact density, and ``entropy`` (+ ``_se``) = H(p_data) in data space, the NLL's
floor (E nll = H + KL).  For continuous data ``bits_per_dim`` is null and ``bits_per_dim_note``
says why.  Every key, with its units: docs/outputs.md.

Image data sets hold discrete levels k in {0, ..., L-1} (L = 17 for the digits, 256 for 8-bit
images), so their likelihood is a probability, bounded by uniform dequantization
(``sd.bits_per_dim``): log P(k) >= E_u log p(x_u) + D log(cell width), with x_u uniform in a cell
around level k of the grid the model was trained on.  A data set trained on dequantized levels
(``dequantize=true``: x = 2 (k + u) / L - 1) has the cells [2k/L - 1, 2(k+1)/L - 1); one trained
on the plain grid x_k = 2 k / (L - 1) - 1 has cells of width 2 / (L - 1) centred on its points
(``data_range`` = (-L/(L-1), L/(L-1)) in ``sd.bits_per_dim``'s terms).  There ``nll`` is this
bound on -log P(k) in nats and ``bits_per_dim`` = nll / (D ln 2), one dequantization draw per point.

Writes ``likelihood.json`` with these, the NFE (summed over batches, and per batch) and the seconds.

``method``: ``ode`` (the above), ``elbo``, ``both`` or a list (``method=[ode,elbo]``).  ``elbo``
replaces log p by the variational lower bound of the reverse SDE (``sd.elbo``, ``n_t`` time draws per point, ``estimator`` dsm with
antithetic Stein pairs, or ism with the ODE's ``divergence``), with the same data-space and
dequantization terms: ``elbo_nll`` (an upper bound on the NLL in expectation) with ``elbo_nll_se``
over the points, ``elbo_mc_se`` (the Monte Carlo error of that mean, sqrt(mean_i se_i^2 / n): n_t ~ 1000
or more for honest values, the per-draw values are right-skewed), ``elbo_bits_per_dim`` for images,
``elbo_nfe`` and ``elbo_seconds``.  ``both`` writes the ODE keys and the ELBO keys side by side, plus
``elbo_minus_ode`` = mean(nll_elbo - nll_ode) paired per point (its ``_se``); the bound is not
ordered against the ODE likelihood of an imperfect score, so this difference can have either sign.
Each method starts from the same generator state, so both see the same points and dequantization.
``importance_sampling=true`` draws the ELBO's t from g^2 / sigma^2 (measured to raise its variance,
see ``scoresde.likelihood.elbo``).  ``likelihood.md`` holds the side-by-side table (also logged).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ..data import Scaler
from ..data.images import from_model_range
from . import schema  # noqa: F401  (registers the group schemas)
from ..checkpoints import LoadedScore, load_score, loaded_model
from ._likelihood_parts import (DIVERGENCES, ESTIMATORS, METHODS, NONFINITE, SPLITS, _methods,  # noqa: F401
                                _points, dataset_to_score, table)
from ._common import ScoreSdeOptions, config_path, cpu_generator, exit_on_user_error, run_app, run_dir

log = logging.getLogger("scoresde")

__all__ = ["LikelihoodAppSchema", "checkpoint_likelihood", "run_likelihood", "table", "main", "SPLITS",
           "DIVERGENCES", "METHODS", "ESTIMATORS", "PROTOCOLS"]

PROTOCOLS = ("ours", "score_sde")


@dataclass
class LikelihoodAppSchema:
    checkpoint: str = MISSING
    score_sde: ScoreSdeOptions = field(default_factory=ScoreSdeOptions)   # checkpoint=score_sde:PATH
    split: str = "test"
    n: Optional[int] = 2000
    batch_size: int = 1000
    divergence: str = "auto"           # auto | exact | hutchinson (auto: hutchinson under protocol=score_sde)
    protocol: str = "ours"             # images: ours | score_sde (the paper's bits/dim, docs/likelihood.md)
    repeats: int = 1                   # images: dequantization passes per image (a solve holds batch x repeats)
    solver: str = "dopri5"             # the ODE's torchdiffeq method, or adams (ours)
    rtol: float = 1e-5
    atol: float = 1e-5
    eps: float = 1e-5
    seed: int = 0
    device: str = "auto"
    ema: bool = True
    data: Optional[Dict[str, Any]] = None
    method: Any = "ode"             # ode | elbo | both | a list of ode, elbo
    n_t: int = 1000
    estimator: str = "dsm"
    importance_sampling: bool = False
    nonfinite: str = "raise"
    noise: str = "stream"           # stream (one generator) | per_item (from (seed, i); torchrun: _shard_likelihood.py)


ConfigStore.instance().store(name="likelihood_schema", node=LikelihoodAppSchema)


def checkpoint_likelihood(checkpoint, split: str = "test", n: Optional[int] = 2000, batch_size: int = 1000,
                          divergence: str = "auto", rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-5,
                          seed: int = 0, device: str = "auto", ema: bool = True,
                          method: Union[str, Sequence[str]] = "ode", n_t: int = 1000, estimator: str = "dsm",
                          importance_sampling: bool = False,
                          data: Optional[Dict[str, Any]] = None, nonfinite: str = "raise", score_sde_config: Any = None,
                          protocol: str = "ours", repeats: int = 1, solver: str = "dopri5") -> Dict[str, Any]:
    """The NLL of ``n`` points of ``split`` under a checkpoint's model, by the probability-flow
    ODE and/or the reverse SDE's variational bound (see the module docstring).

    ``checkpoint``: a path, ``diffusers:PATH``, ``score_sde:PATH`` (with ``score_sde_config``), a
    model from :func:`scoresde.load_model` or a :class:`LoadedScore`.  ``data``: a data set config
    (``name`` and its arguments) in place of the checkpoint's own; required for a diffusers or
    score_sde model.  ``batch_size`` bounds the points a solve takes and the rows of every score
    call (``max_rows``: an ELBO's n_t draws and Stein pairs are split into calls of at most
    ``batch_size`` rows).  ``divergence="auto"``: exact up to D = 64, Hutchinson above
    (``divergence_used`` in the output says which ran).  ``nonfinite``: ``"raise"`` (stop on a
    NaN/Inf) or ``"count"`` (keep going; ``nonfinite`` and ``elbo_nonfinite`` in the output count
    the points).  Images only: ``protocol`` ``"ours"`` (cells of width 1 / (L - 1) centred on the
    training grid, or the dequantization cells of a dequantized set) or ``"score_sde"`` (the
    paper's: cells [k / L, (k + 1) / L) of pixel intensity, i.e. (U + 255 img) / 256, one
    Rademacher probe per image per pass: ``divergence`` auto means hutchinson), ``repeats``
    dequantization passes (each image's bound averaged over them), ``solver`` the ODE's method.
    """
    import scoresde as sd

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid protocols: {list(PROTOCOLS)}")
    if protocol == "score_sde" and divergence == "auto":
        divergence = "hutchinson"
    if protocol == "score_sde" and divergence != "hutchinson":
        raise ValueError(f"protocol=score_sde draws one Rademacher probe per image per pass: divergence must be "
                         f"hutchinson, got {divergence!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid estimators: {list(DIVERGENCES)}")
    if nonfinite not in NONFINITE:
        raise ValueError(f"unknown nonfinite {nonfinite!r}; valid: {list(NONFINITE)}")
    methods = _methods(method)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid estimators: {list(ESTIMATORS)}")
    if isinstance(n_t, bool) or not isinstance(n_t, int) or n_t < 2:
        raise ValueError(f"n_t must be an integer >= 2, got {n_t!r}")
    if n is not None and n < 1:
        raise ValueError(f"n must be positive or null (the whole split), got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    loaded = checkpoint if isinstance(checkpoint, LoadedScore) else (
        loaded_model(checkpoint) if isinstance(checkpoint, torch.nn.Module) else
        load_score(checkpoint, device, ema, score_sde_config=score_sde_config))
    score_fn, sde, event_shape, meta = loaded
    dev = next(score_fn.parameters()).device
    data = dataset_to_score(data, meta, event_shape)
    g = cpu_generator(seed)
    x = _points(data, split, n, g)
    levels = data.info.get("levels") if len(data.event_shape) == 3 else None
    if levels is not None:
        levels = int(levels)
        dequantized = bool(data.info.get("dequantize", False))
        k = from_model_range(x, levels, dequantized=dequantized)
        # the cells in pixel intensity (the image sets' data space, [0, 1]), then in the model's space
        half = 0.0 if dequantized or protocol == "score_sde" else 0.5 / (levels - 1)
        to_model = Scaler(**meta["scaler"]) if meta["source"] == "score_sde" else data.scaler
        grid = (float(to_model.to_model(torch.tensor(-half))), float(to_model.to_model(torch.tensor(1.0 + half))))
    elif protocol != "ours" or repeats != 1:
        raise ValueError(f"protocol and repeats are for images (dequantized levels); {data.name} is continuous")
    dims = math.prod(data.event_shape)
    log_det = data.scaler.log_det(data.event_shape) if levels is None else 0.0
    out: Dict[str, Any] = {
        "step": meta["step"], "source": meta["source"], "data": data.name, "split": split, "n": int(x.shape[0]),
        "dims": dims, "method": "both" if len(methods) == 2 else methods[0], "divergence": divergence,
        "rtol": rtol, "atol": atol, "eps": eps, "seed": seed, "ema": ema, "device": str(dev),
    }
    if levels is not None:
        out.update(levels=levels, protocol=protocol, repeats=repeats, data_range=list(grid),
                   log_det_bits=-dims * math.log((grid[1] - grid[0]) / levels) / (dims * math.log(2.0)))
    if "ode" in methods:
        out["solver"] = solver
    if "elbo" in methods:
        out.update(n_t=n_t, estimator=estimator, importance_sampling=bool(importance_sampling))
    state = g.get_state()       # after the points: each method draws the same dequantization / probes
    nll_by: Dict[str, torch.Tensor] = {}
    for m in methods:
        g.set_state(state)
        if m == "ode":
            kwargs: Dict[str, Any] = dict(divergence=divergence, rtol=rtol, atol=atol, eps=eps, generator=g,
                                          max_rows=batch_size, nonfinite=nonfinite)
            if solver != "dopri5":
                kwargs["solver" if levels is not None else "method"] = solver
        else:
            kwargs = dict(n_t=n_t, estimator=estimator, importance_sampling=bool(importance_sampling), eps=eps,
                          generator=g, max_rows=batch_size, nonfinite=nonfinite)
            if estimator == "ism":
                kwargs["divergence"] = divergence
        logps, ses, nfes, n_bad, used = [], [], [], 0, None
        t0 = time.perf_counter()
        for start in range(0, x.shape[0], batch_size):
            if levels is None:
                xb = x[start:start + batch_size].to(dev)
                if m == "ode":
                    ll = sd.log_likelihood(score_fn, sde, xb, **kwargs)
                    logps.append(ll.logp.detach().double().cpu())
                else:
                    ll = sd.elbo(score_fn, sde, xb, **kwargs)
                    logps.append(ll.elbo.detach().double().cpu())
                    ses.append(ll.stderr.detach().double().cpu())
            else:  # the dequantization bound on log P(k), in nats
                ll = sd.bits_per_dim(score_fn, sde, k[start:start + batch_size].to(dev), levels=levels,
                                     data_range=grid, method=m, repeats=repeats, **kwargs)
                logps.append(ll.logp.mean(0).detach().double().cpu() + ll.log_det)
                if m == "elbo":
                    ses.append(ll.stderr.detach().double().cpu() * (dims * math.log(2.0)))
            nfes.append(int(ll.nfe))
            n_bad += int(getattr(ll, "nonfinite", 0))
            used = getattr(ll, "divergence", used)
        seconds = time.perf_counter() - t0
        logp = torch.cat(logps)
        nll = -(logp + log_det)
        nll_by[m] = nll
        p = "" if m == "ode" else "elbo_"
        out[p + "nll"] = float(nll.mean())
        out[p + "nll_se"] = float(nll.std() / math.sqrt(nll.numel())) if nll.numel() > 1 else float("nan")
        if m == "ode" and data.mixture is not None:
            # the NLL's floor: E[nll] = H(p_data) + KL(p_data || p_model) >= H(p_data), in data space
            h, h_se = data.mixture.entropy(n=100_000, generator=torch.Generator().manual_seed(seed))
            out["entropy"], out["entropy_se"] = float(h) - log_det, float(h_se)
        out[p + "bits_per_dim"] = None if levels is None else out[p + "nll"] / (dims * math.log(2.0))
        if levels is None:
            out[p + "bits_per_dim_note"] = (
                f"null: bits/dim is defined for discrete data (images of L levels, by a dequantization bound on "
                f"-log2 P(k) / D); {data.name} is continuous, so {p}nll is a density: nats per sample in data space")
        out[p + "nfe"] = sum(nfes)
        out[p + "nfe_per_batch"] = nfes
        out[p + "seconds"] = round(seconds, 4)
        out[p + "nonfinite"] = n_bad
        if m == "ode" and used:
            out["divergence_used"] = used
        if m == "elbo":
            se = torch.cat(ses)                 # the Monte Carlo error of the mean over the points
            out["elbo_mc_se"] = float(se.pow(2).mean().div(se.numel()).sqrt())
        if m == "ode" and data.mixture is not None:
            diff = data.mixture.log_prob(x.double().cpu()) - logp
            out["kl"] = float(diff.mean())
            out["kl_se"] = float(diff.std() / math.sqrt(diff.numel()))
    if len(methods) == 2:
        gap = nll_by["elbo"] - nll_by["ode"]
        out["elbo_minus_ode"] = float(gap.mean())
        out["elbo_minus_ode_se"] = float(gap.std() / math.sqrt(gap.numel())) if gap.numel() > 1 else float("nan")
    return out


def run_likelihood(cfg: DictConfig, out_dir: Path) -> Dict[str, Any]:
    """The body of the app: likelihood.json and likelihood.md in ``out_dir`` (with ``noise=per_item``
    or under torchrun: sharded over the ranks, :mod:`scoresde.apps._shard_likelihood`)."""
    from ..training import distributed
    if cfg.get("noise", "stream") != "stream" or distributed.world_size() > 1:
        from ._shard_likelihood import run_sharded_likelihood
        return run_sharded_likelihood(cfg, out_dir)
    method = cfg.method if isinstance(cfg.method, str) else list(cfg.method)
    data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else None
    out = checkpoint_likelihood(cfg.checkpoint, cfg.split, cfg.n, cfg.batch_size, cfg.divergence, cfg.rtol,
                                cfg.atol, cfg.eps, cfg.seed, cfg.device, cfg.ema, method=method, n_t=cfg.n_t,
                                estimator=cfg.estimator, importance_sampling=cfg.importance_sampling, data=data,
                                nonfinite=cfg.get("nonfinite", "raise"), score_sde_config=cfg.score_sde.config,
                                protocol=cfg.protocol, repeats=cfg.repeats, solver=cfg.solver)
    out = {"checkpoint": str(cfg.checkpoint), **out}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "likelihood.json").write_text(json.dumps(out, indent=2))
    text = table(out)
    (out_dir / "likelihood.md").write_text(f"# {out['data']}: {out['n']} {out['split']} points, step "
                                           f"{out['step']}, eps {out['eps']:g}\n\n{text}\n")
    log.info("%s over %d %s points -> %s\n%s", "NLL" if out["method"] == "ode" else
             ("NLL (ODE) and its ELBO bound" if out["method"] == "both" else "ELBO bound on the NLL"),
             out["n"], out["split"], out_dir / "likelihood.json", text)
    return out


@hydra.main(version_base="1.3", config_path=config_path(), config_name="likelihood")
def _app(cfg: DictConfig) -> None:
    exit_on_user_error(run_likelihood)(cfg, run_dir())


def main() -> None:
    """Console script ``scoresde-likelihood``; under torchrun, one rank of a sharded run
    (``_shard_likelihood.py``)."""
    run_app(_app, "likelihood")


if __name__ == "__main__":
    main()
