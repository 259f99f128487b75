"""Write the score_sde_pytorch fixtures under tests/data/score_sde/ by running the reference's own code.

Reference: https://github.com/yang-song/score_sde_pytorch at commit
cb1f359f4aadf0ff9a5e122fe8fffc9451fd6e44 (the repository itself, not a fork).  Its code is run
from a checkout outside this repository and never copied into it.

How to run (CPU, about a minute)::

    git clone https://github.com/yang-song/score_sde_pytorch /tmp/score_sde_ref
    git -C /tmp/score_sde_ref checkout cb1f359f4aadf0ff9a5e122fe8fffc9451fd6e44
    OMP_NUM_THREADS=1 python tests/data/score_sde/make_fixtures.py --ref /tmp/score_sde_ref \
        --configs-out scoresde/interop/score_sde_configs

What is stubbed, in this script only: ``tensorflow`` (the reference's ``utils.py`` imports it for
``tf.io.gfile``; replaced by ``os.path``), ``ml_collections`` (its configs are ``ConfigDict``s; a
dict with attribute access stands in when the package is missing) and
``torch.utils.cpp_extension.load`` (``op/`` compiles CUDA at import; on CPU tensors ``upfirdn2d``
takes its pure-PyTorch branch ``upfirdn2d_native``, and ``fused_act`` is not used by these models).

Written:

* ``<family>.pth``: a checkpoint in the reference's format (``utils.save_checkpoint``: optimizer,
  ``DataParallel`` model state_dict, EMA state_dict, step), tiny sizes (nf 16 or 32, one or two
  residual blocks, 16x16 images, 64x64 for the seven-level 256-px shape), seeded random weights
  with a nonzero ``init_scale`` and every parameter perturbed (so biases and GroupNorm affine
  terms are not at their trivial values), and raw weights that differ from the EMA ones.  Only
  ``ddpmpp_vp`` carries real Adam state: one training step of the reference's own ``step_fn``
  (its warm-up makes the learning rate a ``numpy.float64``, which ``torch.load(weights_only=True)``
  refuses unless numpy's scalar globals are allowed).
* ``<family>_outputs.pth``: inputs ``x [B, C, H, W]``, ``t`` in {1e-5, 1/3, 2/3, 1}, and for the EMA
  and the raw weights the score ``[len(t), B, C, H, W]``: the reference network at
  ``get_score_fn``'s labels (999 t for VP / sub-VP, sigma(t) for VE, from float32 t), divided by
  ``-std(t)`` for VP / sub-VP with the reference's std formula evaluated in float64.  The
  reference's all-float32 ``get_score_fn(sde, model, continuous=True)`` is that too, except that
  its float32 ``1 - exp(.)`` loses 0.6% (VP) and 1.2% (sub-VP) at t = 1e-5; that deviation is
  stored per t as ``f32_relative_deviation`` (zero for VE).
  For ``ddpmpp_vp``, ``ddpmpp_deep_subvp`` and ``ncsnpp_fourier_ve`` (EMA weights) also ``flow``:
  the reference likelihood's probability-flow drift and its Hutchinson divergence of that drift
  with one Rademacher ``probe``, at t = 0.25 and 0.75.
* ``<family>.json``: the tiny config (``config.to_dict()``).
* ``reference_parameter_counts.json``: the parameter counts of the full-size reference networks.
* with ``--check-export TMPDIR``: nothing; it checks that the reference's ``restore_checkpoint``
  reads ``scoresde.interop.to_score_sde``'s files and then scores as scoresde does (< 1e-5).
* with ``--configs-out DIR``: every continuous reference config whose network scoresde builds
  (NCSN++ / DDPM++ and DDPM), as JSON (``scoresde/interop/score_sde_configs/``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import types

import numpy as np
import torch

COMMIT = "cb1f359f4aadf0ff9a5e122fe8fffc9451fd6e44"
TIMES = (1e-5, 1.0 / 3.0, 2.0 / 3.0, 1.0)
BATCH = 2


def install_stubs() -> None:
    """tensorflow (tf.io.gfile), ml_collections (ConfigDict) and the CUDA op build: stubs for this script."""
    import importlib.machinery
    import torch._dynamo  # noqa: F401  (imported before the stubs: it probes installed modules' specs)
    tf = types.ModuleType("tensorflow")
    tf.__spec__ = importlib.machinery.ModuleSpec("tensorflow", None)
    tf.io = types.SimpleNamespace(gfile=types.SimpleNamespace(
        exists=os.path.exists, makedirs=lambda p: os.makedirs(p, exist_ok=True),
        GFile=open, glob=lambda p: __import__("glob").glob(p)))
    sys.modules["tensorflow"] = tf
    try:
        import ml_collections  # noqa: F401
    except ImportError:
        class ConfigDict(dict):
            def __getattr__(self, name):
                try:
                    return self[name]
                except KeyError as e:
                    raise AttributeError(name) from e

            def __setattr__(self, name, value):
                self[name] = value

            def to_dict(self):
                return {k: v.to_dict() if isinstance(v, ConfigDict) else v for k, v in self.items()}

        mc = types.ModuleType("ml_collections")
        mc.ConfigDict = ConfigDict
        mc.__spec__ = importlib.machinery.ModuleSpec("ml_collections", None)
        sys.modules["ml_collections"] = mc
    import torch.utils.cpp_extension as ext
    ext.load = lambda *args, **kwargs: None        # op/ compiles CUDA at import; CPU never calls it


def plain(config) -> dict:
    """The config as a JSON-ready nested dict (tuples as lists, the device dropped)."""
    def conv(v):
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items() if k != "device"}
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        if isinstance(v, (np.floating, np.integer)):
            return v.item()
        if isinstance(v, torch.device):
            return None
        return v
    return conv(config.to_dict())


SMALL = dict(nf=16, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(8,))
FAMILIES = {
    # name: (reference config, overrides of config.model, overrides of config.data)
    "ddpmpp_vp": ("configs.vp.cifar10_ddpmpp_continuous", SMALL, {}),
    "ddpmpp_deep_subvp": ("configs.subvp.cifar10_ddpmpp_deep_continuous", dict(SMALL, num_res_blocks=2), {}),
    "ncsnpp_fir_residual_vp": ("configs.vp.cifar10_ncsnpp_continuous", SMALL, {}),
    "ncsnpp_fourier_ve": ("configs.ve.cifar10_ncsnpp_continuous", SMALL, {}),
    # seven levels, 64 -> 1 px; nf 8 keeps the file small
    "ncsnpp_256_shape_ve": ("configs.ve.celebahq_256_ncsnpp_continuous",
                            dict(nf=8, num_res_blocks=1, attn_resolutions=(16,)), dict(image_size=64)),
    "ddpm_vp": ("configs.vp.ddpm.cifar10_continuous",
                dict(nf=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(8,)), {}),
    # The other switches, as far as the reference runs them: its non-FIR ``layerspp.Upsample``
    # passes 'nearest' as interpolate's scale_factor and its FIR Upsample with a conv slices with
    # a negative step, so DDPM-type blocks run only with FIR and no resampling conv, and the
    # residual output pyramid not at all.  Here: DDPM-type blocks, FIR, the output_skip pyramid,
    # input_skip with 'cat', no skip rescale; then an unconditional network with ELU, BigGAN blocks
    # without FIR and the residual input pyramid through the DDPM-type strided conv.
    "ncsnpp_options_vp": ("configs.vp.cifar10_ncsnpp_continuous",
                          dict(SMALL, resblock_type="ddpm", resamp_with_conv=False, progressive="output_skip",
                               progressive_input="input_skip", progressive_combine="cat", skip_rescale=False), {}),
    "ncsnpp_unconditional_ve": ("configs.ve.cifar10_ncsnpp_continuous",
                                dict(SMALL, conditional=False, fir=False, nonlinearity="elu",
                                     progressive_input="residual"), {}),
}
FULL_SIZE = ("vp.cifar10_ddpmpp_continuous", "vp.cifar10_ddpmpp_deep_continuous", "vp.cifar10_ncsnpp_continuous",
             "vp.cifar10_ncsnpp_deep_continuous", "ve.cifar10_ncsnpp_continuous", "ve.cifar10_ncsnpp_deep_continuous",
             "ve.celebahq_256_ncsnpp_continuous", "ve.celebahq_ncsnpp_continuous", "vp.ddpm.cifar10_continuous")


def build_sde(sde_lib, config):
    name = config.training.sde.lower()
    if name == "vpsde":
        return sde_lib.VPSDE(beta_min=config.model.beta_min, beta_max=config.model.beta_max,
                             N=config.model.num_scales)
    if name == "subvpsde":
        return sde_lib.subVPSDE(beta_min=config.model.beta_min, beta_max=config.model.beta_max,
                                N=config.model.num_scales)
    return sde_lib.VESDE(sigma_min=config.model.sigma_min, sigma_max=config.model.sigma_max,
                         N=config.model.num_scales)


def perturb_(model, gen, scale):
    """Move every trainable parameter off its initial value: p (1 + scale z1) + scale z2 / 5."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                z1 = torch.randn(p.shape, generator=gen)
                z2 = torch.randn(p.shape, generator=gen)
                p.mul_(1 + scale * z1).add_(scale / 5 * z2)


def outputs(mutils, sde_lib, sde, model, config, x):
    """The score at every t in TIMES (network in float32 at the reference's labels, std in float64),
    and the relative deviation of the reference's all-float32 ``get_score_fn`` from it."""
    model.eval()
    score_fn = mutils.get_score_fn(sde, model, train=False, continuous=True)
    score32, score = [], []
    with torch.no_grad():
        for t in TIMES:
            t32 = torch.full((x.shape[0],), t, dtype=torch.float32)
            t64 = torch.full((x.shape[0],), t, dtype=torch.float64)
            score32.append(score_fn(x, t32))
            if isinstance(sde, sde_lib.VESDE):
                labels = sde.marginal_prob(torch.zeros_like(x), t32)[1]
                o = model(x, labels)
                s = o.double()
            else:
                labels = t32 * 999
                o = model(x, labels)
                std = sde.marginal_prob(torch.zeros_like(x), t64)[1]
                s = -o.double() / std[:, None, None, None]
            score.append(s)
    score, score32 = torch.stack(score), torch.stack(score32)
    # how far the reference's all-float32 score is from the float64-std one, per t (for the record)
    dev = ((score32.double() - score).flatten(1).abs().max(1).values / score.flatten(1).abs().max(1).values)
    return {"score": score.float(), "f32_relative_deviation": dev}


FLOW_FAMILIES = ("ddpmpp_vp", "ddpmpp_deep_subvp", "ncsnpp_fourier_ve")
FLOW_TIMES = (0.25, 0.75)


def flow_terms(sde, model, x, gen):
    """The reference likelihood's probability-flow drift and Hutchinson divergence (its
    ``likelihood.get_likelihood_fn``'s inner ``drift_fn`` and ``div_fn``, composed the same way
    from its public pieces) at FLOW_TIMES, with one Rademacher probe."""
    import likelihood
    model.eval()
    score_fn = likelihood.mutils.get_score_fn(sde, model, train=False, continuous=True)
    rsde = sde.reverse(score_fn, probability_flow=True)

    def drift_fn(xx, tt):
        return rsde.sde(xx, tt)[0]

    probe = torch.randint(0, 2, x.shape, generator=gen).float() * 2 - 1
    drift, div = [], []
    for t in FLOW_TIMES:
        tt = torch.full((x.shape[0],), t)
        with torch.no_grad():
            drift.append(drift_fn(x, tt))
        div.append(likelihood.get_div_fn(drift_fn)(x.clone(), tt, probe).detach())
    return {"t": torch.tensor(FLOW_TIMES), "probe": probe, "drift": torch.stack(drift), "div": torch.stack(div)}


def make_family(name, spec, args, refmods):
    mutils, sde_lib, losses, ema_mod, utils = refmods
    module, model_over, data_over = spec
    config = importlib.import_module(module).get_config()
    config.device = torch.device("cpu")
    for k, v in model_over.items():
        setattr(config.model, k, v)
    for k, v in data_over.items():
        setattr(config.data, k, v)
    config.data.image_size = data_over.get("image_size", 16)
    config.model.init_scale = 0.1
    config.model.dropout = 0.0
    seed = list(FAMILIES).index(name) + 1
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(1000 + seed)
    model = mutils.create_model(config)                     # DataParallel, as the reference trains it
    perturb_(model, gen, 0.2)
    optimizer = losses.get_optimizer(config, model.parameters())
    ema = ema_mod.ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
    state = dict(optimizer=optimizer, model=model, ema=ema, step=0)
    sde = build_sde(sde_lib, config)
    batch = 1 if config.data.image_size > 32 else BATCH
    shape = (batch, config.data.num_channels, config.data.image_size, config.data.image_size)
    if name == "ddpmpp_vp":
        # one real training step: Adam state and the warm-up's numpy.float64 learning rate
        step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(config),
                                     reduce_mean=config.training.reduce_mean, continuous=True,
                                     likelihood_weighting=config.training.likelihood_weighting)
        step_fn(state, torch.randn(shape, generator=gen))
        assert isinstance(optimizer.param_groups[0]["lr"], np.floating)
    else:
        state["step"] = 1000 + seed
    # EMA = current weights; the raw weights then move away from it
    ema.shadow_params = [p.clone().detach() for p in model.parameters() if p.requires_grad]
    perturb_(model, gen, 0.05)
    ckpt = os.path.join(args.out, f"{name}.pth")
    if name != "ddpmpp_vp":
        state["optimizer"] = losses.get_optimizer(config, model.parameters())   # fresh: no state
    utils.save_checkpoint(ckpt, state)

    x = torch.randn(shape, generator=gen)
    if not config.data.centered:
        x = torch.rand(shape, generator=gen)                 # data in [0, 1]
    raw = outputs(mutils, sde_lib, sde, model.module, config, x)
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    ema_out = outputs(mutils, sde_lib, sde, model.module, config, x)
    if name in FLOW_FAMILIES:
        ema_out["flow"] = flow_terms(sde, model.module, x, gen)
    ema.restore(model.parameters())
    n_params = sum(p.numel() for p in model.module.parameters())
    torch.save({"x": x, "t": torch.tensor(TIMES, dtype=torch.float64), "raw": raw, "ema": ema_out,
                "num_parameters": n_params, "reference_commit": COMMIT},
               os.path.join(args.out, f"{name}_outputs.pth"))
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(plain(config), f, indent=1, sort_keys=True)
    print(f"{name}: {n_params} parameters, |score| max {ema_out['score'].abs().max():.3g}, "
          f"ema-raw {float((ema_out['score'] - raw['score']).abs().max()):.3g}, "
          f"float32 score deviation {ema_out['f32_relative_deviation'].tolist()}")


def continuous_configs(ref):
    """Every continuous reference config built on 'ncsnpp' or 'ddpm': {'vp/cifar10_ddpmpp_continuous': config}."""
    found = {}
    for root, _, files in os.walk(os.path.join(ref, "configs")):
        for f in sorted(files):
            if not f.endswith(".py") or f.startswith("default_"):
                continue
            rel = os.path.relpath(os.path.join(root, f), os.path.join(ref, "configs"))[:-3]
            config = importlib.import_module("configs." + rel.replace(os.sep, ".")).get_config()
            if config.training.continuous and config.model.name in ("ncsnpp", "ddpm"):
                found[rel.replace(os.sep, "/")] = config
    return found


def check_export(refmods, tmpdir):
    """scoresde's ``to_score_sde`` output, restored by the reference's own ``restore_checkpoint``
    (``torch.load`` with the default ``weights_only=True`` on torch >= 2.6), gives scoresde's score."""
    mutils, sde_lib, losses, ema_mod, utils = refmods
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
    from scoresde.interop import ScoreSdeModel, score_sde_network, to_score_sde
    for name, (module, model_over, data_over) in FAMILIES.items():
        cfgpath = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".json")
        torch.manual_seed(3)
        ours = ScoreSdeModel(score_sde_network(cfgpath), cfgpath)
        perturb_(ours, torch.Generator().manual_seed(3), 0.2)
        path = os.path.join(tmpdir, name + "_ours.pth")
        to_score_sde(ours, path, cfgpath, step=5)
        config = importlib.import_module(module).get_config()
        config.device = torch.device("cpu")
        for k, v in {**model_over, "dropout": 0.0}.items():
            setattr(config.model, k, v)
        for k, v in data_over.items():
            setattr(config.data, k, v)
        config.data.image_size = data_over.get("image_size", 16)
        model = mutils.create_model(config)
        ema = ema_mod.ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
        state = dict(optimizer=losses.get_optimizer(config, model.parameters()), model=model, ema=ema, step=0)
        state = utils.restore_checkpoint(path, state, device="cpu")
        ema.copy_to(model.parameters())
        score_fn = mutils.get_score_fn(build_sde(sde_lib, config), model, train=False, continuous=True)
        x = torch.rand(2, config.data.num_channels, config.data.image_size, config.data.image_size)
        t = torch.tensor([0.4, 0.8])
        with torch.no_grad():
            a, b = score_fn(x, t), ours.eval()(x, t)
        err = float((a - b).abs().max() / a.abs().max())
        print(f"export {name}: restored at step {state['step']}, relative score difference {err:.1e}")
        assert state["step"] == 5 and err < 1e-5


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", required=True, help=f"a checkout of score_sde_pytorch at {COMMIT}")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--configs-out", default=None, help="also write the continuous configs as JSON here")
    parser.add_argument("--skip-full-size", action="store_true", help="do not count full-size parameters")
    parser.add_argument("--check-export", default=None, metavar="TMPDIR",
                        help="also check that the reference restores scoresde's to_score_sde files (run from "
                             "the repository root after the fixtures exist); writes its files to TMPDIR")
    args = parser.parse_args()
    install_stubs()
    sys.path.insert(0, os.path.abspath(args.ref))
    torch.set_num_threads(1)
    from models import ddpm, ema, ncsnpp, utils as mutils  # noqa: F401  (registers the models)
    import losses
    import sde_lib
    import utils
    refmods = (mutils, sde_lib, losses, ema, utils)
    for name, spec in FAMILIES.items():
        make_family(name, spec, args, refmods)
    if args.check_export:
        os.makedirs(args.check_export, exist_ok=True)
        check_export(refmods, args.check_export)
    if args.configs_out:
        os.makedirs(args.configs_out, exist_ok=True)
        for rel, config in continuous_configs(args.ref).items():
            path = os.path.join(args.configs_out, rel + ".json")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(plain(config), f, indent=1, sort_keys=True)
            print("config", rel)
    if not args.skip_full_size:
        counts = {}
        for rel in FULL_SIZE:
            config = importlib.import_module("configs." + rel).get_config()
            net = mutils.get_model(config.model.name)(config)
            counts[rel.replace(".", "/", 1).replace(".", "/")] = sum(p.numel() for p in net.parameters())
            print(rel, counts[rel.replace(".", "/", 1).replace(".", "/")])
        with open(os.path.join(args.out, "reference_parameter_counts.json"), "w") as f:
            json.dump({"reference_commit": COMMIT, "counts": counts}, f, indent=1)


if __name__ == "__main__":
    main()
