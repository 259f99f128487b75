"""Shared by the experiments tests: overrides for a tiny, fast training run, and subprocess helpers."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"

# a few seconds of training and evaluation on CPU
TINY = ["train.steps=6", "train.batch_size=32", "train.log_every=3", "train.progress=false", "train.device=cpu",
        "train.tensorboard=false", "model.width=16", "model.depth=1", "model.emb_dim=8", "data.n_test=32",
        "eval.n_nll=8", "eval.n_samples=24", "eval.rtol=1e-3", "eval.atol=1e-3", "sampler=dpm_solver",
        "sampler.steps=4"]


def compose_conf(name, overrides=()):
    """The composed config ``conf/NAME.yaml`` with ``overrides`` (Hydra's compose API)."""
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def env():
    """The environment for a subprocess: this checkout importable, one thread per process."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    e.pop("HYDRA_FULL_ERROR", None)
    return e


def run(args, cwd, timeout=300):
    """``python ARGS`` in ``cwd``; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable] + list(args), cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout)
