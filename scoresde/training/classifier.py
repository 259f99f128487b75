"""Training noisy classifiers p_t(y | x_t) for classifier guidance (Song et al. 2021, Sec. 5 and
App. I; Dhariwal & Nichol 2021): the train app's ``task=classifier`` mode.

The classifier (:class:`~scoresde.classifier.NoisyClassifier`) minimises the cross-entropy on
noised data,

    L(phi) = E_{t ~ U(eps, T)} E_{(x_0, y) ~ data} E_{x_t ~ p_t(x_t | x_0)} [-log q_phi(y | x_t, t)],

(:func:`~scoresde.classifier.noisy_classifier_loss`) whose minimiser is the exact time-dependent
classifier p_t(y | x_t).  :class:`ClassifierTrainer` reuses the :class:`~scoresde.training.Trainer`
loop unchanged: AdamW with warm-up and clipping, EMA, atomic checkpoints that resume bit-exactly,
the CSV and TensorBoard logs.  Its checkpoint has ``spec = {"kind": "classifier", "sde": ...,
"classifier": ...}``; :func:`scoresde.checkpoints.load_classifier` rebuilds the (EMA) classifier with ``.sde`` set.

Evaluation (EMA weights, fixed seeds), per t bucket [t_lo, t_hi) of ``EVAL_BUCKETS``: the held-out
cross-entropy and accuracy on the noised held-out set, and, on a mixture data set, the error
against the exact classifier (:func:`~scoresde.classifier.classifier_error`: cross-entropy gap
(KL) and gradient error), all into metrics.json.
"""

from __future__ import annotations

from typing import Any, Dict, Union
import os

import torch

from ..classifier import CLASSIFIER_KIND, NoisyClassifier, build_classifier, classifier_error, noisy_classifier_loss
from ..data import DataSet, build_dataset
from .trainer import Trainer, _CSVLog

Tensor = torch.Tensor
PathLike = Union[str, os.PathLike]

__all__ = ["ClassifierTrainer", "train_classifier", "build_classifier_from_config", "EVAL_BUCKETS"]

EVAL_BUCKETS = (1e-3, 0.05, 0.2, 0.5, 1.0)


class ClassifierTrainer(Trainer):
    """Trains a noisy classifier (``model``: a :class:`NoisyClassifier` from :func:`build_classifier`)
    on a labelled data set; ``loss`` is unused (the loss is :func:`noisy_classifier_loss`).  See the
    module docstring; every other argument is :class:`~scoresde.training.Trainer`'s.
    ``eval.n_samples`` is the number of noised held-out draws per t bucket for the exact-classifier
    comparison on mixtures (0 skips it)."""

    def __init__(self, model: NoisyClassifier, data: DataSet, *args, **kwargs):
        if not data.num_classes:
            raise ValueError(f"data set {data.name!r} has no labels: a noisy classifier needs a labelled set "
                             f"(digits, image_folder with class sub-directories, torchvision, the mixtures)")
        super().__init__(model, data, *args, **kwargs)

    @property
    def conditional(self) -> bool:
        return True

    def batch_loss(self) -> Tensor:
        x0, y = self.data.labelled_batch(self.cfg.batch_size, self.gen, device=self.device)
        return noisy_classifier_loss(self.train_model, self.model.sde, x0, y, eps=self.model.eps,
                                     generator=self.gen).mean()

    @torch.no_grad()
    def heldout_loss(self) -> float:
        """Cross-entropy of the EMA classifier on the noised held-out set (fixed t and noise)."""
        g = torch.Generator(self.device).manual_seed(self.eval_cfg.seed)
        test, y = self.data.test, self.data.test_labels
        total = 0.0
        for i in range(0, test.shape[0], self.eval_cfg.batch_size):
            xb, yb = test[i:i + self.eval_cfg.batch_size], y[i:i + self.eval_cfg.batch_size]
            total += float(noisy_classifier_loss(self.ema.model, self.model.sde, xb, yb, eps=self.model.eps,
                                                 generator=g).sum())
        return total / test.shape[0]

    @torch.no_grad()
    def _bucket_stats(self, lo: float, hi: float, g: torch.Generator):
        """Held-out cross-entropy and accuracy with t ~ U[lo, hi) (one draw per held-out point)."""
        clf, sde = self.ema.model, self.model.sde
        ce, correct, n = 0.0, 0, self.data.test.shape[0]
        for i in range(0, n, self.eval_cfg.batch_size):
            xb = self.data.test[i:i + self.eval_cfg.batch_size]
            yb = self.data.test_labels[i:i + self.eval_cfg.batch_size]
            t = lo + (hi - lo) * torch.rand(xb.shape[0], generator=g, device=self.device, dtype=xb.dtype)
            z = torch.randn(xb.shape, generator=g, device=self.device, dtype=xb.dtype)
            logits = clf(sde.perturb(xb, t, z), t).float()
            ce += float(torch.nn.functional.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
        return ce / n, correct / n

    def evaluate(self, final: bool = True, tb=None) -> Dict[str, Any]:
        out: Dict[str, Any] = {"step": self.step, "heldout_loss": self.heldout_loss()}
        g = torch.Generator(self.device).manual_seed(self.eval_cfg.seed)
        edges = list(EVAL_BUCKETS)
        ce, acc = [], []
        for lo, hi in zip(edges, edges[1:]):
            c, a = self._bucket_stats(lo, hi, g)
            ce.append(c)
            acc.append(a)
        out["t_buckets"] = edges
        out["heldout_ce"] = ce
        out["heldout_accuracy"] = acc
        mix = self.data.mixture
        if mix is not None and self.eval_cfg.n_samples > 0:
            err = classifier_error(self.ema.model, mix, self.model.sde, n=self.eval_cfg.n_samples,
                                   buckets=EVAL_BUCKETS, generator=torch.Generator().manual_seed(self.eval_cfg.seed),
                                   device=self.device)
            out["exact"] = err.as_dict()
            out["kl_mean"] = sum(err.kl) / len(err.kl)
            out["grad_rmse_mean"] = sum(err.grad_rmse) / len(err.grad_rmse)
        if self.is_main:
            flat = {k: v for k, v in out.items() if isinstance(v, (int, float))}
            for j, (c, a) in enumerate(zip(ce, acc)):
                flat[f"ce_{j}"], flat[f"acc_{j}"] = c, a
            _CSVLog(self.out_dir / "eval_log.csv").write(flat)
            if tb is not None:
                for k, v in flat.items():
                    if k != "step":
                        tb.add_scalar(f"eval/{k}", v, self.step)
        self.metrics.update(out)
        self._note_best(out)      # train.best_metric (e.g. heldout_loss): best.pt
        return out


def build_classifier_from_config(config: Dict[str, Any]):
    """``(classifier, data)`` from a config tree with ``task: classifier`` (seeds the init)."""
    for key in ("sde", "data"):
        if key not in config or "name" not in (config[key] or {}):
            raise ValueError(f"config needs a {key!r} node with a 'name'")
    torch.manual_seed(int(config.get("seed", 0)))
    data_kw = {k: v for k, v in config["data"].items() if k != "name"}
    data = build_dataset(config["data"]["name"], **data_kw)
    if not data.num_classes:
        raise ValueError(f"task=classifier needs a labelled data set; {data.name!r} has no labels")
    ccfg = dict(config.get("classifier") or {})
    ccfg.setdefault("name", "mlp")
    ccfg["data_shape"] = list(data.event_shape)
    ccfg["num_classes"] = int(data.num_classes)
    spec = {"kind": CLASSIFIER_KIND, "sde": dict(config["sde"]), "classifier": ccfg}
    return build_classifier(spec), data


def train_classifier(config: Dict[str, Any], out_dir: PathLike = ".") -> Dict[str, Any]:
    """Build a noisy classifier and its data from ``config`` and train it (``task=classifier``)."""
    clf, data = build_classifier_from_config(config)
    trainer = ClassifierTrainer(clf, data, None, optim=config.get("optim"), train=config.get("train"),
                                eval=config.get("eval"), out_dir=out_dir, config=config,
                                seed=int(config.get("seed", 0)))
    return trainer.fit()
