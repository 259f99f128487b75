"""Benchmark problems: what a cell samples and what its samples are compared with.

A **problem** is an exact-score Gaussian mixture by name (``ring8``, ``aniso16``, ...: every error
is the sampler's) or the path of a trained checkpoint (:func:`scoresde.load_model`); a checkpoint
brings its own SDE, and its samples are judged in its model space against its data set's held-out
split (and its mixture, when the data set is one).  :func:`network_problem` puts an untrained
network of a configured architecture in place of a mixture's exact score (what the overhead
benchmark times).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from ..mixture import MIXTURES, GaussianMixture, build_mixture
from ..sde import SDE, build_sde

Tensor = torch.Tensor

__all__ = ["is_checkpoint", "Problem", "load_problem", "network_problem"]


def is_checkpoint(problem: str) -> bool:
    """A problem name that is not a known mixture is a checkpoint path."""
    return problem not in MIXTURES


class Problem:
    """What a cell samples: a score, an SDE, and exact (or held-out) samples to compare with.

    ``mixture`` is set when the target is a Gaussian mixture (mode-by-mode W2 applies; exact
    samples come from it).  A checkpoint's samples are compared in its model space (where its
    data set's held-out split and mixture live).
    """

    def __init__(self, name: str, shape: Tuple[int, ...], mixture: Optional[GaussianMixture] = None,
                 model=None, sde: Optional[SDE] = None, data=None):
        self.name, self.shape, self.mixture = name, tuple(shape), mixture
        self.model, self.own_sde, self.data = model, sde, data
        self._scores: Dict[str, Any] = {}

    @property
    def dtype(self) -> torch.dtype:
        # the exact mixture score runs in float64 for the reference solve; networks in float32
        return torch.float64 if self.model is None else torch.float32

    def sde(self, name: str) -> SDE:
        return self.own_sde if self.own_sde is not None else build_sde(name)

    def score_fn(self, sde_name: str):
        if sde_name not in self._scores:
            self._scores[sde_name] = (self.mixture.score_fn(self.sde(sde_name)) if self.model is None
                                      else self.model)
        return self._scores[sde_name]

    def exact(self, n: int, seed: int, which: int = 0) -> Tensor:
        """``n`` exact samples (``which`` tells independent sets apart): from the mixture, else the
        held-out split (which=0) and fresh data or the training split (which=1)."""
        g = torch.Generator().manual_seed(10_000 * (which + 1) + seed)
        if self.mixture is not None:
            return self.mixture.sample(n, generator=g, dtype=torch.float64)
        d = self.data
        if which == 1 and d.sampler is not None:
            return d.sampler(n, g).to(torch.float64).cpu()
        pool = d.test if which == 0 else d.train
        if pool is None or pool.shape[0] < n:
            raise ValueError(f"problem {self.name!r}: need {n} data points to compare with, "
                             f"have {0 if pool is None else pool.shape[0]}; lower n")
        return pool[torch.randperm(pool.shape[0], generator=g)[:n]].to(torch.float64).cpu()


def load_problem(name: str, device=None) -> Problem:
    """A mixture by name, or a checkpoint path (:func:`scoresde.load_model`, data set rebuilt
    from its config)."""
    if not is_checkpoint(name):
        mix = build_mixture(name)
        return Problem(name, mix.event_shape, mixture=mix)
    path = Path(name).expanduser()
    if not path.is_file():
        raise ValueError(f"problem {name!r} is neither a mixture ({sorted(MIXTURES)}) nor a checkpoint file")
    from ..data import build_dataset
    from ..checkpoints import load_model

    model = load_model(path, device=device)
    data_cfg = dict((model.checkpoint.get("config") or {}).get("data") or {})
    data = build_dataset(data_cfg.pop("name"), **data_cfg)
    return Problem(name, tuple(data.event_shape), mixture=data.mixture, model=model, sde=model.sde, data=data)


def network_problem(problem: str, sde: str, network: Dict[str, Any], seed: int = 0) -> Problem:
    """``problem`` (a mixture name) with the score of an untrained network in place of its exact one.

    ``network`` is a model config (the keys of ``conf/model/*.yaml``: ``name``, the network's
    arguments, ``parameterization``, ``time_input``).  The weights are drawn from ``seed``, and the
    output layer, which the networks start at zero, is drawn too, so that the flow moves and the
    adaptive solvers take steps as they would; an evaluation costs what a trained one would.
    """
    from ..score import build_score_model

    base = load_problem(problem)
    if base.model is not None:
        raise ValueError(f"problem {problem!r} already has its own network; give a mixture name")
    net = dict(network)
    param, time_input = net.pop("parameterization", "noise"), net.pop("time_input", "t")
    net["data_shape"] = list(base.shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_score_model({"sde": {"name": sde}, "model": net, "parameterization": param,
                                   "time_input": time_input})
        out = getattr(model.net, "out", None)
        if out is not None and hasattr(out, "reset_parameters"):
            out.reset_parameters()
    model.eval()
    return Problem(f"{problem}+{net['name']}", base.shape, mixture=base.mixture, model=model)
