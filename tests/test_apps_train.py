"""The Hydra train app (scoresde/apps/train.py): every config composes and builds, typos fail
naming the key, and the app runs end to end into its run directory; a run killed with SIGKILL
between two checkpoints resumes to the very checkpoint of an uninterrupted run."""

import json
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import scoresde as sd
from scoresde.apps import _common, train as train_app
from scoresde.training import build_from_config

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ["sde", "model", "data", "loss", "optim", "train", "eval", "sampler"]
# The U-Net needs image data; image folders and torchvision sets need files on disk
# (tests/test_image_app.py builds them from images it writes).
_TINY_NET = ["data=digits", "model.ch_mult=[1,2]", "model.num_res_blocks=1", "model.attn_resolutions=[4]"]
PAIRED = {("model", "unet"): ["data=digits"], ("model", "ddpmpp"): _TINY_NET + ["model.nf=8"],
          ("model", "ncsnpp"): _TINY_NET + ["model.nf=8", "sde=ve"], ("model", "ddpm"): _TINY_NET + ["model.nf=32"]}
NEEDS_FILES = {("data", "image_folder"), ("data", "torchvision")}


def _compose(overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_config_path_falls_back_to_the_checkout():
    path = _common.config_path()
    assert path == "pkg://scoresde.conf" or Path(path) == CONF


def test_every_option_of_every_group_composes_and_builds(tmp_path):
    from _cifar import write_tiny_cifar10
    paired = {**PAIRED, ("data", "cifar10"): [f"data.root={write_tiny_cifar10(tmp_path)[0]}"]}   # no download
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for group in GROUPS:
            options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
            assert options, group
            for opt in options:
                if (group, opt) in NEEDS_FILES:
                    continue
                overrides = [f"{group}={opt}", *paired.get((group, opt), [])]
                cfg = OmegaConf.to_container(compose(config_name="train", overrides=overrides), resolve=True)
                if group in ("sde", "model", "data", "loss"):
                    cfg["data"]["n_test"] = 8
                    model, data, loss = build_from_config(cfg)
                    assert model(data.test[:2], torch.full((2,), 0.5)).shape == data.test[:2].shape


def test_experiment_presets_compose_and_change_what_they_state():
    presets = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    assert "ring8_likelihood" in presets
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in presets:
            compose(config_name="train", overrides=[f"experiment={name}"])
        cfg = compose(config_name="train", overrides=["experiment=ring8_likelihood"])
    assert cfg.loss.weighting == "likelihood" and cfg.loss.importance_sampling


def test_defaults_are_ring8_vp_mlp():
    cfg = _compose()
    assert (cfg.data.name, cfg.sde.name, cfg.model.name, cfg.seed) == ("ring8", "vp", "mlp", 0)


@pytest.mark.parametrize("override, key", [("train.setps=3", "setps"), ("optim.learning_rate=1", "learning_rate"),
                                           ("train.steps=many", "steps")])
def test_typo_fails_at_composition_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException, match=key):
        _compose([override])


def test_app_runs_end_to_end_into_the_run_dir(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    argv = ["scoresde-train", f"hydra.run.dir={run_dir}", "train.steps=6", "train.batch_size=32",
            "train.log_every=3", "train.progress=false", "model.width=16", "model.depth=1", "model.emb_dim=8",
            "data.n_test=32", "eval.n_nll=8", "eval.n_samples=24", "eval.rtol=1e-3", "eval.atol=1e-3", "seed=5"]
    monkeypatch.setattr(sys, "argv", argv)
    train_app.train_main()
    for f in ("checkpoints/last.pt", "metrics.json", "samples.png", "train_log.csv", ".hydra/config.yaml"):
        assert (run_dir / f).is_file(), f
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 6 and {"nll", "kl", "mode_w2", "heldout_loss"} <= set(metrics)
    model = sd.load_model(run_dir / "checkpoints" / "last.pt")
    assert model.checkpoint["config"]["seed"] == 5 and model.checkpoint["config"]["train"]["steps"] == 6


def test_sampler_configs_name_real_samplers_and_their_options():
    import inspect
    from scoresde.samplers import SAMPLERS
    for path in sorted((CONF / "sampler").glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path))
        node.pop("defaults", None)
        name = node.pop("name")
        assert name in SAMPLERS, path.name
        params = inspect.signature(SAMPLERS[name]).parameters
        assert set(node) <= set(params), (path.name, sorted(set(node) - set(params)))


@pytest.mark.parametrize("argv, needle", [
    (["model=transformer"], "model/transformer"),
    (["train.stesp=3"], "train.stesp"),
])
def test_app_errors_name_the_problem_and_exit_nonzero(argv, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["app"] + argv + [f"hydra.run.dir={tmp_path}"])
    with pytest.raises(SystemExit) as info:
        train_app.train_main()
    assert info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert needle in err, err


# ---------------------------------------------------------------------------------------------
# kill -9 between two checkpoints, resume with the same command: the final checkpoint is that of
# an uninterrupted run, every tensor of it
# ---------------------------------------------------------------------------------------------
def _assert_same(a, b, path="checkpoint") -> int:
    """Every leaf of two checkpoint trees equal (tensors bit for bit, dtype and shape included;
    the rest by ==); returns the number of tensors compared."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
        return 1
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, sorted(set(a) ^ set(b), key=str))
        return sum(_assert_same(a[k], b[k], f"{path}[{k!r}]") for k in a)
    if isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        return sum(_assert_same(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    assert type(a) is type(b) and a == b, (path, a, b)
    return 0


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_the_same_command_resumes_to_the_uninterrupted_checkpoint(tmp_path):
    import signal
    import subprocess
    import time
    from _tiny import ROOT, env
    from scoresde.checkpoints import load_checkpoint

    steps, every = 600, 100
    overrides = [f"train.steps={steps}", f"train.ckpt_every={every}", "train.resume=auto", "train.batch_size=64",
                 "train.log_every=50", "train.progress=false", "train.device=cpu", "train.tensorboard=false",
                 "train.threads=1", "model.width=16", "model.depth=1", "model.emb_dim=8", "data.n_test=32",
                 "eval.n_nll=0", "eval.n_samples=0", "seed=7"]

    def command(run_dir):
        return [sys.executable, "-m", "scoresde", "train", *overrides, f"hydra.run.dir={run_dir}"]

    def run(run_dir):
        r = subprocess.run(command(run_dir), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]

    run(tmp_path / "straight")

    killed = tmp_path / "killed"
    ckpt = killed / "checkpoints" / "last.pt"
    proc = subprocess.Popen(command(killed), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-3000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    # killed between two checkpoints: a whole periodic checkpoint (atomic writes), no final one
    step_at_kill = load_checkpoint(ckpt)["step"]
    assert step_at_kill % every == 0 and 0 < step_at_kill < steps, step_at_kill
    assert not (killed / "metrics.json").exists()

    run(killed)                                     # the same command again
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(ckpt)
    assert a["step"] == b["step"] == steps
    # weights, EMA, optimiser moments and steps, every RNG state saved, config, spec, scaler
    n = _assert_same(a, b)
    assert {"model", "ema", "optimizer", "rng"} <= set(a) and set(a["rng"]) == {"torch", "cuda", "train"}
    assert n >= 3 * len(a["model"]) + 2, n


def test_the_quick_preset_says_in_its_file_and_in_train_log_that_it_is_a_smoke_test(tmp_path, monkeypatch):
    from _tiny import TINY
    text = (CONF / "experiment" / "quick.yaml").read_text()
    assert "SMOKE TEST" in text and "smeared" in text
    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["scoresde-train", "experiment=quick", f"hydra.run.dir={run_dir}"] + TINY
                        + ["eval.n_nll=0", "eval.n_samples=0", "eval.bound=false"])
    train_app.train_main()
    log = (run_dir / "train.log").read_text()
    assert log.count("note: experiment=quick is a smoke test") == 2, log     # at the start and by the metrics
    assert log.index("note:") < log.index("metrics:") < log.rindex("note:")
    # the note is the app's, not the model's: the checkpoint's config is the library's
    assert "note" not in sd.load_model(run_dir / "checkpoints" / "last.pt").checkpoint["config"]
