"""Structured-config schemas: a typo or a wrong type fails when Hydra composes, naming the key.

The schema of each option of the ``sde``, ``model``, ``data`` and ``sampler`` groups is derived
from the keyword arguments of the constructor its ``name`` selects in the library's registries
(:data:`scoresde.sde.SDES`, :data:`scoresde.nn.MODELS`, :data:`scoresde.data.DATASETS`,
:data:`scoresde.samplers.SAMPLERS`), so the config and the code cannot drift apart.  The schemas
are stored in Hydra's ConfigStore as ``schema/<group>/<name>``; a config file opts in with

    defaults:
      - /schema/sde/vp@_here_
      - _self_

Types come from the annotations (``int``, ``float``, ``bool``, ``str`` and ``Optional`` of those;
anything else is ``Any``), or from the default where a parameter has no annotation.  Register a
network, data set or sampler of your own, then call :func:`register_schemas` again.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import MISSING, field, make_dataclass
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from hydra.core.config_store import ConfigStore

__all__ = ["schema_from_signature", "register_schemas", "SCHEMA_GROUPS"]

_PRIMITIVES = (bool, int, float, str)

# group -> (registry, parameters the library fills in itself, extra fields of that group)
SCHEMA_GROUPS = ("sde", "model", "data", "sampler")


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


def schema_from_signature(cls_name: str, fn: Callable, name: str, skip: Iterable[str] = (),
                          extra: Iterable[Tuple[str, Any, Any]] = ()) -> type:
    """A dataclass with a ``name`` field (default ``name``) and one field per keyword parameter
    of ``fn`` (minus ``skip`` and private ``_x`` ones), typed and defaulted as in ``fn``;
    ``extra`` adds ``(field, type, default)`` triples."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: fall back to the defaults' types
        hints = {}
    fields = [("name", str, field(default=name))]
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


def _registries() -> Dict[str, Tuple[Dict[str, Callable], Tuple[str, ...], Tuple]]:
    from ..sde import SDES
    from ..nn import MODELS
    from ..data import DATASETS
    from ..samplers import SAMPLERS

    score_fields = (("parameterization", str, "noise"), ("time_input", str, "t"))
    return {
        "sde": (SDES, (), ()),
        "model": (MODELS, ("data_shape",), score_fields),   # data_shape comes from the data set
        "data": (DATASETS, (), ()),
        "sampler": (SAMPLERS, ("score_fn", "sde", "x", "ctx"), ()),
    }


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
