"""Structured-config schemas: a typo or a wrong type fails when Hydra composes, naming the key.

Every schema is derived from a signature, so the config and the code cannot drift apart and each
default is stated once, in the code (a file in conf/ states only what differs from it):

* each option of the ``sde``, ``model``, ``data``, ``sampler`` and ``loss`` groups: the keyword
  arguments of the constructor its ``name`` selects in the library's registries
  (:data:`scoresde.sde.SDES`, :data:`scoresde.nn.MODELS`, :data:`scoresde.data.DATASETS`,
  :data:`scoresde.samplers.SAMPLERS`, :data:`scoresde.losses.LOSSES`; a model node also takes
  the :class:`~scoresde.ScoreModel` options; the ``classifier`` group, used by ``task=classifier``:
  :class:`~scoresde.classifier.NoisyClassifier` and the ``eps`` of its loss).  They are stored in Hydra's ConfigStore as
  ``schema/<group>/<name>``; a config file opts in with

      defaults:
        - /schema/sde/vp@_here_
        - _self_

* the ``optim``, ``train`` and ``eval`` nodes: the fields of :class:`scoresde.training.OptimConfig`,
  :class:`~scoresde.training.TrainConfig` and :class:`~scoresde.training.EvalConfig`
  (:data:`CONFIG_SCHEMAS`), typed into the train app's top-level schema.

Types come from the annotations (``int``, ``float``, ``bool``, ``str`` and ``Optional`` of those;
anything else is ``Any``), or from the default where a parameter has no annotation.  Register a
network, data set or sampler of your own, then call :func:`register_schemas` again.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import MISSING, field, make_dataclass
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from hydra.core.config_store import ConfigStore

__all__ = ["schema_from_signature", "register_schemas", "SCHEMA_GROUPS", "CONFIG_GROUPS", "SCHEMAS",
           "CONFIG_SCHEMAS"]

_PRIMITIVES = (bool, int, float, str)

# groups whose options are constructors chosen by ``name``, and groups that are one dataclass
SCHEMA_GROUPS = ("sde", "model", "data", "sampler", "loss", "classifier")
CONFIG_GROUPS = ("optim", "train", "eval")


def _field_type(annotation: Any, default: Any) -> Any:
    """The OmegaConf-checkable type of a parameter (Any where OmegaConf cannot check it)."""
    if annotation is None or annotation is inspect.Parameter.empty:
        for t in _PRIMITIVES:   # bool before int: True is an int too
            if type(default) is t:
                return t
        return Any
    if annotation in _PRIMITIVES:
        return Optional[annotation] if default is None else annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and len(args) == 2 and type(None) in args:
        inner = args[0] if args[1] is type(None) else args[1]
        if inner in _PRIMITIVES:
            return Optional[inner]
    return Any


def _hints(fn: Callable) -> Dict[str, Any]:
    """Resolved annotations of ``fn``'s parameters ({} where a forward reference cannot resolve)."""
    out: Dict[str, Any] = {}
    # a dataclass's generated __init__ carries its annotations as strings of the class's module
    targets = ([fn] if dataclasses.is_dataclass(fn) else []) + [fn.__init__ if inspect.isclass(fn) else fn]
    for target in targets:
        try:
            out = {**typing.get_type_hints(target), **out}
        except Exception:  # unresolvable forward references: fall back to the defaults' types
            pass
    return out


def schema_from_signature(cls_name: str, fn: Callable, name: Optional[str], skip: Iterable[str] = (),
                          extra: Iterable[Tuple[str, Any, Any]] = ()) -> type:
    """A dataclass with a ``name`` field (default ``name``; none when ``name`` is None) and one
    field per keyword parameter of ``fn`` (minus ``skip`` and private ``_x`` ones), typed and
    defaulted as in ``fn``; ``extra`` adds ``(field, type, default)`` triples."""
    hints = _hints(fn)
    fields = [] if name is None else [("name", str, field(default=name))]
    skip = set(skip) | {"self", "name"}
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.name.startswith("_") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = MISSING if p.default is p.empty else p.default
        typ = _field_type(hints.get(p.name, p.annotation), p.default)
        if isinstance(default, (list, tuple, dict)):
            fields.append((p.name, Any, field(default_factory=lambda d=default: type(d)(d))))
        else:
            fields.append((p.name, typ, field(default=default)))
    for fname, typ, default in extra:
        fields.append((fname, typ, field(default=default)))
    return make_dataclass(cls_name, fields)


def _extra_fields(fn: Callable, skip: Iterable[str]) -> Tuple[Tuple[str, Any, Any], ...]:
    """``(field, type, default)`` of ``fn``'s keyword parameters outside ``skip``."""
    return tuple((f.name, f.type, f.default) for f in dataclasses.fields(schema_from_signature("_", fn, None, skip)))


def _registries() -> Dict[str, Tuple[Dict[str, Callable], Tuple[str, ...], Tuple]]:
    """group -> (registry, parameters the library fills in itself, extra fields of that group)."""
    from ..sde import SDES
    from ..nn import MODELS
    from ..data import DATASETS
    from ..samplers import SAMPLERS
    from ..losses import LOSSES
    from ..score import ScoreModel
    from ..classifier import NoisyClassifier, noisy_classifier_loss

    # a model node also says how the ScoreModel reads the network (parameterization, time_input)
    score_fields = _extra_fields(ScoreModel, ("net", "sde"))
    return {
        "sde": (SDES, (), ()),
        "model": (MODELS, ("data_shape",), score_fields),   # data_shape comes from the data set
        "data": (DATASETS, (), ()),
        # a sampler node may also say where the run starts (scoresde.sample's ``prior``) and what
        # a NaN does (``nonfinite``)
        "sampler": (SAMPLERS, ("score_fn", "sde", "x", "ctx", "t_start"),
                    (("prior", str, "sde"), ("nonfinite", str, "raise"))),
        "loss": (LOSSES, (), ()),
        # task=classifier: the noisy classifier's options and the training-time floor eps of its loss
        "classifier": ({"mlp": NoisyClassifier}, ("data_shape", "num_classes"),
                       _extra_fields(noisy_classifier_loss, ("clf", "sde", "x0", "y", "generator"))),
    }


def _config_classes() -> Dict[str, type]:
    from ..training import EvalConfig, OptimConfig, TrainConfig

    return {"optim": OptimConfig, "train": TrainConfig, "eval": EvalConfig}


def register_schemas() -> Dict[str, type]:
    """Store ``schema/<group>/<name>`` in Hydra's ConfigStore for every registered constructor.
    Returns them by ``"group/name"``."""
    cs = ConfigStore.instance()
    out = {}
    for group, (registry, skip, extra) in _registries().items():
        for name, fn in sorted(registry.items()):
            cls_name = f"{group.capitalize()}_{name}"
            schema = schema_from_signature(cls_name, fn, name, skip, extra)
            cs.store(group=f"schema/{group}", name=name, node=schema)
            out[f"{group}/{name}"] = schema
    return out


SCHEMAS = register_schemas()

CONFIG_SCHEMAS: Dict[str, type] = {g: schema_from_signature(f"{g.capitalize()}Schema", cls, None)
                                   for g, cls in _config_classes().items()}
"""The schema of the ``optim``, ``train`` and ``eval`` nodes, by group."""
