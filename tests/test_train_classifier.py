"""Training with labels (issue 12): class-conditional score models (``model.num_classes``, label
dropout) and the noisy-classifier mode (``task=classifier``, scoresde/training/classifier.py)."""

import json
import math

import pytest
import torch

import scoresde as sd
from scoresde.checkpoints import load_classifier, load_model
from scoresde.training import Trainer, build_from_config, train
from scoresde.training.classifier import ClassifierTrainer, EVAL_BUCKETS, build_classifier_from_config

from _tiny import CONF, ROOT, run


def cond_config(steps=12, **train_kw):
    return {
        "seed": 3, "sde": {"name": "vp"},
        "model": {"name": "mlp", "width": 16, "depth": 1, "emb_dim": 8, "num_classes": 8},
        "data": {"name": "ring8", "n_test": 64},
        "loss": {"name": "dsm", "p_uncond": 0.2},
        "optim": {"lr": 1e-3, "warmup": 3},
        "train": {"steps": steps, "batch_size": 32, "log_every": 4, "ckpt_every": 0, "progress": False,
                  "ema_decay": 0.9, "tensorboard": False, **train_kw},
        "eval": {"n_nll": 0, "n_samples": 40},
        "sampler": {"name": "dpm_solver", "steps": 4},
    }


def clf_config(steps=12, data="ring8", **train_kw):
    return {
        "seed": 1, "task": "classifier", "sde": {"name": "vp"},
        "classifier": {"name": "mlp", "width": 32, "depth": 1, "emb_dim": 16},
        "data": {"name": data, "n_test": 200},
        "optim": {"lr": 3e-3, "warmup": 5},
        "train": {"steps": steps, "batch_size": 256, "log_every": 10, "ckpt_every": 0, "progress": False,
                  "ema_decay": 0.9, "tensorboard": False, **train_kw},
        "eval": {"n_samples": 400},
    }


def _cond_trainer(cfg, out):
    model, data, loss = build_from_config(cfg)
    return Trainer(model, data, loss, optim=cfg["optim"], train=cfg["train"], eval=cfg["eval"],
                   sampler=cfg["sampler"], out_dir=out, config=cfg, seed=cfg["seed"])


def _clf_trainer(cfg, out):
    clf, data = build_classifier_from_config(cfg)
    return ClassifierTrainer(clf, data, None, optim=cfg["optim"], train=cfg["train"], eval=cfg["eval"],
                             out_dir=out, config=cfg, seed=cfg["seed"])


def _same_weights(a, b):
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


# ---------------------------------------------------------------------------------------------
# class-conditional score models
# ---------------------------------------------------------------------------------------------
def test_conditional_training_feeds_the_batch_labels_with_label_dropout(tmp_path, monkeypatch):
    tr = _cond_trainer(cond_config(), tmp_path)
    seen = []
    real = tr.loss_fn.__class__.__call__

    def spy(self, model, x0, generator=None, labels=None):
        seen.append((x0.clone(), None if labels is None else labels.clone()))
        return real(self, model, x0, generator, labels=labels)

    monkeypatch.setattr(tr.loss_fn.__class__, "__call__", spy)
    tr.train_step()
    x0, y = seen[0]
    mix = tr.data.mixture
    # the labels are the classes of the drawn points (ring8: the nearest mode)
    assert y is not None and torch.equal(y, mix.labels[torch.cdist(x0.double(), mix.means).argmin(1)])
    assert tr.loss_fn.p_uncond == 0.2


def test_conditional_run_resumes_bit_exactly_and_load_model_restores_it(tmp_path):
    n = 10
    straight = _cond_trainer(cond_config(n), tmp_path / "a")
    for _ in range(n):
        straight.train_step()
    first = _cond_trainer(cond_config(n), tmp_path / "b")
    for _ in range(n // 2):
        first.train_step()
    ckpt = first.save()
    torch.rand(10)
    second = _cond_trainer(cond_config(n, resume=str(ckpt)), tmp_path / "c")
    for _ in range(n - n // 2):
        second.train_step()
    _same_weights(straight.model, second.model)
    _same_weights(straight.ema.model, second.ema.model)
    path = straight.save(tmp_path / "s.pt")
    model = load_model(path)
    assert model.num_classes == 8 and model.null_label == 8
    x, t = torch.randn(5, 2), torch.full((5,), 0.3)
    y = torch.tensor([0, 1, 2, 3, 7])
    assert torch.equal(model(x, t, y), straight.ema.model(x, t, y))
    assert torch.equal(model(x, t), straight.ema.model(x, t, torch.full((5,), 8)))


def test_conditional_fit_writes_metrics_with_a_labelled_heldout_loss(tmp_path):
    m = train(cond_config(6), tmp_path)
    assert math.isfinite(m["heldout_loss"]) and math.isfinite(m["mode_w2"])
    assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 6


def test_model_and_data_classes_must_agree(tmp_path):
    cfg = cond_config()
    cfg["model"]["num_classes"] = 3
    with pytest.raises(ValueError, match="num_classes=3.*8 classes"):
        _cond_trainer(cfg, tmp_path)
    cfg["data"] = {"name": "moons", "n_test": 8}
    with pytest.raises(ValueError, match="no labels"):
        _cond_trainer(cfg, tmp_path)


def test_unconditional_runs_read_the_unlabelled_stream(tmp_path, monkeypatch):
    cfg = cond_config()
    cfg["model"].pop("num_classes")
    tr = _cond_trainer(cfg, tmp_path)
    called = []
    monkeypatch.setattr(type(tr.data), "labelled_batch", lambda *a, **k: called.append(1))
    tr.train_step()
    assert not called


# ---------------------------------------------------------------------------------------------
# noisy classifiers (task=classifier)
# ---------------------------------------------------------------------------------------------
def test_classifier_training_approaches_the_exact_classifier(tmp_path):
    m = train(clf_config(120), tmp_path)
    assert m["t_buckets"] == list(EVAL_BUCKETS) and len(m["heldout_accuracy"]) == len(EVAL_BUCKETS) - 1
    ex = m["exact"]
    # untrained (uniform) classifier: KL = exact entropy gap, log 8 = 2.08 nats at small t;
    # after 120 steps the separated-mode buckets are nearly exact
    assert ex["kl"][0] < 0.3 and ex["kl"][1] < 0.3, ex["kl"]
    assert m["heldout_accuracy"][0] > 0.95
    # the low-noise bucket's exact cross-entropy is ~0 (modes 16 sigma apart), the high-noise one ~log 8
    assert ex["exact_cross_entropy"][0] < 1e-6 and abs(ex["exact_cross_entropy"][-1] - math.log(8)) < 0.3
    clf = load_classifier(tmp_path / "checkpoints" / "last.pt")
    assert clf.num_classes == 8 and isinstance(clf.sde, sd.VPSDE) and not clf.training
    # the guidance input: log q(y | x, t) of the loaded classifier
    lp = sd.classifier.classifier_log_prob_fn(clf, 3)(torch.tensor([[4.0 * math.cos(3 * math.pi / 4),
                                                                       4.0 * math.sin(3 * math.pi / 4)]]),
                                                       torch.tensor([0.01]))
    assert lp.exp().item() > 0.5   # uniform: 1/8


def test_classifier_run_resumes_bit_exactly(tmp_path):
    n = 8
    straight = _clf_trainer(clf_config(n), tmp_path / "a")
    for _ in range(n):
        straight.train_step()
    first = _clf_trainer(clf_config(n), tmp_path / "b")
    for _ in range(n // 2):
        first.train_step()
    ckpt = first.save()
    torch.rand(10)
    second = _clf_trainer(clf_config(n, resume=str(ckpt)), tmp_path / "c")
    assert second.step == n // 2
    for _ in range(n - n // 2):
        second.train_step()
    _same_weights(straight.model, second.model)
    _same_weights(straight.ema.model, second.ema.model)


def test_checkpoint_kinds_are_not_confused_and_bad_tasks_fail(tmp_path):
    train(clf_config(2), tmp_path / "clf")
    with pytest.raises(ValueError, match="noisy-classifier checkpoint"):
        load_model(tmp_path / "clf" / "checkpoints" / "last.pt")
    train(cond_config(2), tmp_path / "score")
    with pytest.raises(ValueError, match="not a noisy classifier"):
        load_classifier(tmp_path / "score" / "checkpoints" / "last.pt")
    with pytest.raises(ValueError, match="unknown task 'clf'.*classifier"):
        train({**cond_config(2), "task": "clf"}, tmp_path / "x")
    with pytest.raises(ValueError, match="labelled data set"):
        train(clf_config(2, data="moons"), tmp_path / "y")


@pytest.mark.slow
def test_train_app_classifier_mode(tmp_path):
    args = ["-m", "scoresde", "train", "task=classifier", "classifier=mlp", "classifier.width=16",
            "classifier.depth=1", "train.steps=4", "train.batch_size=32", "train.progress=false",
            "train.tensorboard=false", "data.n_test=32", "eval.n_samples=50", f"hydra.run.dir={tmp_path / 'r'}"]
    p = run(args, ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["step"] == 4 and len(m["exact"]["kl"]) == len(EVAL_BUCKETS) - 1


def test_classifier_group_composes_and_typos_fail():
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    import scoresde.apps.train  # noqa: F401  (registers the schemas)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["task=classifier", "classifier=mlp", "classifier.width=16"])
        assert OmegaConf.to_container(cfg.classifier)["width"] == 16 and cfg.task == "classifier"
        # the default (score) task carries no classifier node
        assert compose(config_name="train").task == "score"
        clf = compose(config_name="train", overrides=["experiment=digits_clf"])
        assert (clf.task, clf.data.name, clf.classifier.width) == ("classifier", "digits", 256)
        with pytest.raises(ConfigCompositionException, match="widht"):
            compose(config_name="train", overrides=["classifier=mlp", "classifier.widht=16"])
        with pytest.raises(ConfigCompositionException):
            compose(config_name="train", overrides=["classifier=mlp", "classifier.width=wide"])
