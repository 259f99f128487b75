"""``scoresde-bench``: the sampler benchmark grid as a Hydra app (config: ``conf/bench.yaml``).

    scoresde-bench quick=true                   # a smoke run (under 2 minutes)
    scoresde-bench                              # the full grid
    python -m scoresde.apps.bench sdes=[vp] budgets=[10,20,50] only=[unipc,heun] seeds=[0,1,2]

A thin layer: the config's plain values go to :func:`scoresde.bench.run_grid`, which writes
``bench.csv``, ``bench.md`` and ``bench_<problem>.png`` into the run directory (or ``out_dir``).
"""

from __future__ import annotations

import logging
import platform
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from . import schema as _schemas  # noqa: F401  (stores schema/<group>/<name>, which conf/model/ uses)
from ._common import check_overrides, config_path, exit_on_user_error

log = logging.getLogger("scoresde")

__all__ = ["run_bench", "main", "BenchAppSchema"]


@dataclass
class BenchAppSchema:
    """The bench app's top level, typed (a wrong type fails at composition, naming the key);
    the values themselves are stated once, in ``conf/bench.yaml``.  ``samplers`` and ``only``
    (null or lists) and the ``overhead``, ``likelihood`` and ``quick_settings`` nodes stay
    free-form: :func:`scoresde.bench.run_grid` and its peers check them."""

    quick: bool = False
    problems: List[str] = field(default_factory=list)
    sdes: List[str] = field(default_factory=list)
    budgets: List[int] = field(default_factory=list)
    seeds: List[int] = field(default_factory=list)
    n: int = 3000
    eps: float = 1e-3
    ref_tol: float = 1e-9
    floor_repeats: int = 5
    device: str = "cpu"
    threads: int = 1
    samplers: Any = None
    only: Any = None
    progress: bool = True
    out_dir: Optional[str] = None
    overhead: Dict[str, Any] = field(default_factory=dict)
    likelihood: Dict[str, Any] = field(default_factory=dict)
    quick_settings: Dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(name="bench_schema", node=BenchAppSchema)


def _check_ranges(cfg: Dict[str, Any]) -> None:
    """ValueError naming the first top-level setting outside its range."""
    for key, ok, what in (("n", lambda v: v >= 1, "an integer >= 1"),
                          ("floor_repeats", lambda v: v >= 1, "an integer >= 1"),
                          ("threads", lambda v: v >= 1, "an integer >= 1"),
                          ("eps", lambda v: 0 < v < 1, "a number in (0, 1)"),
                          ("ref_tol", lambda v: v > 0, "a number > 0")):
        v = cfg.get(key)
        if v is not None and not ok(v):
            raise ValueError(f"{key} must be {what}, got {v!r}")
    for key in ("budgets", "seeds"):
        bad = [v for v in cfg.get(key) or () if v < (1 if key == "budgets" else 0)]
        if bad:
            raise ValueError(f"{key} must be integers >= {1 if key == 'budgets' else 0}, got {bad}")

_KEYS = ("quick", "problems", "sdes", "budgets", "seeds", "n", "eps", "ref_tol", "floor_repeats", "device",
         "threads", "samplers", "only", "progress", "out_dir", "quick_settings", "likelihood", "overhead")


def _load_average() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def run_bench(cfg: Dict[str, Any], out_dir: Path):
    """The body of the app: a plain config dict -> rows and the files written in ``out_dir``."""
    from .. import bench

    cfg = dict(cfg)
    unknown = sorted(set(cfg) - set(_KEYS))
    if unknown:
        raise ValueError(f"unknown bench setting(s) {unknown}; valid: {sorted(_KEYS)}")
    _check_ranges(cfg)              # as given, and as the quick settings leave it
    if cfg.get("quick"):
        cfg.update(cfg.get("quick_settings") or {})
        _check_ranges(cfg)
    threads = int(cfg.get("threads") or 1)
    torch.set_num_threads(threads)
    out = Path(cfg["out_dir"]) if cfg.get("out_dir") else out_dir
    device = cfg.get("device") or "cpu"
    preamble = (f"Measured with `scoresde-bench{' quick=true' if cfg.get('quick') else ''}`: n = {cfg['n']} samples "
                f"per cell (one batch), seeds {list(cfg['seeds'])}, eps = {cfg['eps']}, device {device}, "
                f"torch {torch.__version__} with {threads} thread(s) on {os.cpu_count()} CPU core(s) "
                f"({platform.processor() or platform.machine()}), load average at the start "
                f"{_load_average()} (1/5/15 min).  The quality of a mixture cell is its mode-by-mode W2 "
                "divided by that of as many exact samples (1 = as good as exact samples); the ODE error "
                "is the mean |x - x_ref| against a float64 dopri5 solve at rtol = atol = "
                f"{cfg['ref_tol']:g} from the same noise.\n")
    rows, files = bench.run_grid(out, problems=list(cfg["problems"]), sdes=list(cfg["sdes"]),
                                 budgets=list(cfg["budgets"]), seeds=list(cfg["seeds"]), n=int(cfg["n"]),
                                 eps=float(cfg["eps"]), ref_tol=float(cfg["ref_tol"]),
                                 floor_repeats=int(cfg["floor_repeats"]), device=device,
                                 samplers=cfg.get("samplers"), only=cfg.get("only"),
                                 progress=bool(cfg.get("progress", True)), preamble=preamble)
    with open(files[1], "a") as f:
        f.write(f"\nLoad average at the end: {_load_average()}.\n")
    ov = dict(cfg.get("overhead") or {})
    if ov.pop("enabled", False):
        ov_rows = bench.overhead_rows(samplers=cfg.get("samplers"), only=cfg.get("only"), progress=bool(cfg.get("progress", True)), **ov)
        net = ov.get("network")
        files += bench.write_overhead(ov_rows, out, preamble=(
            f"Measured with `scoresde-bench`: {ov.get('problem', 'ring8')}, {ov.get('sde', 'vp')}, the exact mixture "
            "score" + (f" and an untrained `{net.get('name')}` network of the default architecture "
                       "(conf/model/)" if net else "") +
            f"; torch {torch.__version__}, {threads} thread(s), load average {_load_average()}; the smallest "
            f"of {ov.get('repeats', 2)} runs.\n"))
    lk = dict(cfg.get("likelihood") or {})
    if lk.pop("enabled", False):
        lk_rows = bench.likelihood_rows(progress=bool(cfg.get("progress", True)), **lk)
        files += bench.write_likelihood(lk_rows, out, prefix="bench_likelihood", preamble=(
            f"Measured with `scoresde-bench likelihood.enabled=true`: torch {torch.__version__}, {threads} thread(s), "
            f"load average {_load_average()}.  Error = |log p - exact log p_eps| in nats with the exact prior "
            "term (the solver's error alone); sd = standard deviation over samples of the Hutchinson estimate "
            "minus the exact-trace value.\n"))
    log.info("%d cells written to %s", len(rows), out)
    return rows, files


@hydra.main(version_base="1.3", config_path=config_path(), config_name="bench")
def _app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    plain = OmegaConf.to_container(cfg, resolve=True)
    exit_on_user_error(run_bench)(plain, Path(HydraConfig.get().runtime.output_dir))


def main() -> None:
    """Console script ``scoresde-bench``."""
    check_overrides("bench")
    _app()


if __name__ == "__main__":
    main()
