"""What the apps share: the config location, the run directory, errors as exit codes (unknown keys
and missing values included) and the help text's groups (scores are loaded by
:func:`scoresde.checkpoints.load_score`, the one loader of every format)."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from ..checkpoints import CheckpointError, LoadedScore, load_score
from ..training import TrainingDiverged
from . import schema  # noqa: F401  (registers every group's schema: conf/ cannot compose without it)

log = logging.getLogger("scoresde")

# Errors a user can cause (a wrong value, a missing or foreign checkpoint): one line and exit 1,
# not a traceback.  Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, CheckpointError, TrainingDiverged)


def config_path() -> str:
    """Where every Hydra app finds conf/: the source checkout this package sits in, else the
    installed package (``pkg://scoresde.conf``, conf/ mapped into it by setuptools).

    The checkout comes first: where another checkout is installed in editable mode, its
    ``scoresde.conf`` is importable from everywhere, and a checkout running its own code (pytest's
    ``pythonpath``, ``python -m scoresde`` in its root) would otherwise read that tree's configs.
    """
    local = Path(__file__).resolve().parents[2] / "conf"
    if (local / "train.yaml").is_file():
        return str(local)
    try:
        if importlib.util.find_spec("scoresde.conf") is not None:
            return "pkg://scoresde.conf"
    except ModuleNotFoundError:
        pass
    return str(local)


def report_user_error(e: BaseException) -> int:
    """Log a user error, print it as one ``error: ...`` line on stderr; the exit code (1)."""
    log.error("%s: %s", type(e).__name__, e)
    print(f"error: {e}", file=sys.stderr)
    return 1


# what to say about a mandatory value (``???`` in conf/) left unset, by its key
REQUIRED_HINTS = {
    "checkpoint": "give the path of a checkpoint written by scoresde-train (e.g. "
                  "checkpoint=outputs/train/<date>/<time>/checkpoints/last.pt), checkpoint=diffusers:FOLDER or "
                  "checkpoint=score_sde:FILE score_sde.config=NAME",
    "data.root": "give the folder the data set lies in (data.root=/path/to/data)",
}


def missing_value_error(keys: Sequence[str]) -> ValueError:
    """The one-line error for mandatory values left unset: ``KEY=... is required: what to give``."""
    return ValueError("; ".join(f"{k}=... is required: {REQUIRED_HINTS.get(k, 'set it on the command line')}"
                                for k in keys))


def exit_on_user_error(fn: Callable) -> Callable:
    """Decorate an app body: a user error (:data:`USER_ERRORS`, or a mandatory value of a config
    argument left unset) is reported as one line and the process exits 1; any other exception
    keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            missing = sorted({k for a in args if isinstance(a, DictConfig) for k in OmegaConf.missing_keys(a)})
            if missing:
                raise missing_value_error(missing)
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            sys.exit(report_user_error(e))
        except MissingMandatoryValue as e:   # one read below a node that missing_keys does not see
            sys.exit(report_user_error(missing_value_error([str(e.full_key)])))

    return wrapper


# ---------------------------------------------------------------------------------------------
# unknown keys: refused before Hydra runs, with the closest valid key
# ---------------------------------------------------------------------------------------------
def _compose_context(config_dir: str):
    """Hydra's compose API on the apps' config location (:func:`config_path`)."""
    from hydra import initialize_config_dir, initialize_config_module

    if config_dir.startswith("pkg://"):
        return initialize_config_module(config_dir[len("pkg://"):], version_base="1.3")
    return initialize_config_dir(config_dir=config_dir, version_base="1.3")


def _closest(word: str, candidates: Sequence[str]) -> Optional[str]:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return match[0] if match else None


def _is_schema(node: Any) -> bool:
    """A structured node: its keys are a dataclass's fields (no new key belongs there)."""
    import dataclasses

    t = OmegaConf.get_type(node)
    return t is not None and dataclasses.is_dataclass(t)


def unknown_key_error(config_name: str, argv: Sequence[str]) -> Optional[str]:
    """The error for the first override in ``argv`` that names a key the composed config
    ``config_name`` lacks, with or without ``+`` (``train.step=100``: "did you mean
    'train.steps'?"), else None.

    Our configs are closed: every node is a schema derived from a signature (:mod:`.schema`) or a
    fixed file, so a new key is always a typo; Hydra would take ``+key=value`` silently and run
    without it.  Checked against the config composed with the command's group choices (the first
    value of a sweep), so ``sde=ve sde.sigma_max=10`` is judged on VE's keys.  Keys below the top
    level and its nodes are refused only in a schema node (a free-form dict option takes new keys).
    ``hydra.*`` and ``hydra/...`` overrides (launcher, sweeper, run dir) are left to Hydra, as is
    anything it cannot parse or compose (it reports those itself).
    """
    from hydra import compose
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        args, _ = get_args_parser().parse_known_args(list(argv))
        if args.shell_completion or args.config_dir or args.config_path or args.experimental_rerun:
            return None
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except (Exception, SystemExit):   # Hydra's parser reports a malformed command itself
        return None
    ours = [o for o in parsed if not o.is_hydra_override()]
    if not ours:
        return None
    try:
        with _compose_context(config_path()):
            repo = GlobalHydra.instance().config_loader().repository
            groups, keys = [], []
            for o in ours:
                (groups if "." not in o.key_or_group and repo.group_exists(o.key_or_group) else keys).append(o)
            if not keys:
                return None
            choices = []
            for o in groups:
                if o.is_sweep_override():
                    value = next(iter(o.sweep_string_iterator()))
                    choices.append(f"{o.get_key_element()}={value}")
                else:
                    choices.append(o.input_line)
            cfg = compose(config_name=args.config_name or config_name, overrides=choices, return_hydra_config=True)
    except Exception:   # a group choice Hydra cannot compose: its own error says which
        return None
    # the groups a user chooses at the top level (GROUP=OPTION): a misspelt one reads as a key
    group_names = sorted({c.split("/")[0] for c in cfg.hydra.runtime.choices
                          if not c.startswith("hydra") and "@" not in c})
    for o in keys:
        path = o.key_or_group.split(".")
        node: Any = cfg
        for i, part in enumerate(path):
            if not isinstance(node, DictConfig) or node._is_none() or node._is_missing():
                break                            # a list, a value, an unset node: Hydra judges
            names = [str(k) for k in node.keys() if not (i == 0 and k == "hydra")]
            if part in names:
                node = node._get_node(part)
                continue
            if i >= 2 and not _is_schema(node):
                break                            # a free-form dict below an option takes new keys
            prefix = ".".join(path[:i])
            valid = names + (group_names if i == 0 else [])
            where = ".".join(path[:i + 1])
            best = _closest(part, valid)
            if best is not None:
                full = f"{prefix}.{best}" if prefix else best
                return f"unknown key '{where}' in {o.input_line}; did you mean '{full}'?"
            of = f" of '{prefix}'" if prefix else ""
            return f"unknown key '{where}' in {o.input_line}; valid keys{of}: {', '.join(sorted(set(valid)))}"
    return None


# ---------------------------------------------------------------------------------------------
# values of the wrong type: refused before Hydra runs, one line
# ---------------------------------------------------------------------------------------------
def composition_error_line(err: BaseException) -> str:
    """One line for an error Hydra or OmegaConf raised composing a config: the override it was
    merging, the first line of OmegaConf's reason and the key (``train.steps=abc: Value 'abc'
    of type 'str' could not be converted to Integer (key 'train.steps')``).  Hydra prints the
    reason over five lines and a hint about HYDRA_FULL_ERROR."""
    from omegaconf.errors import OmegaConfBaseException

    prefix = "Error merging override "
    head = str(err).splitlines()[0] if str(err) else type(err).__name__
    override = head[len(prefix):] if head.startswith(prefix) else None
    cause = err if isinstance(err, OmegaConfBaseException) else err.__cause__
    if isinstance(cause, OmegaConfBaseException):
        reason = (getattr(cause, "msg", None) or str(cause)).splitlines()[0]
        key = getattr(cause, "full_key", None)
        where = f"{override}: " if override else ""
        return f"{where}{reason}" + (f" (key '{key}')" if key and f"'{key}'" not in reason else "")
    if cause is not None and str(cause):
        return f"{head}: {str(cause).splitlines()[0]}"
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def _merge_override(cfg: DictConfig, override: Any) -> None:
    """Merge one parsed key override into a copy of ``cfg`` as Hydra's config loader merges it
    (raising its ConfigCompositionException); ``cfg`` is left as it is."""
    import copy

    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    ConfigLoaderImpl._apply_overrides_to_config([override], copy.deepcopy(cfg))


def override_value_error(config_name: str, argv: Sequence[str]) -> Optional[str]:
    """The one-line error (:func:`composition_error_line`) for an override of ``argv`` whose
    value the app's schema refuses (a string for an int, a list for a float, null for a
    mandatory field), else None.  Composed in-process with the command's overrides (a sweep's
    first value), as Hydra will compose them; what Hydra cannot parse, and an unknown group
    option, are left to Hydra (its own message names them)."""
    from hydra import compose
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import OmegaConfBaseException

    try:
        args, _ = get_args_parser().parse_known_args(list(argv))
        if args.shell_completion or args.config_dir or args.config_path or args.experimental_rerun:
            return None
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except (Exception, SystemExit):
        return None
    ours, later = [], []    # the first value of each sweep; the other values of key sweeps
    for o in parsed:
        if o.is_hydra_override():
            continue
        if o.is_sweep_override():
            values = list(o.sweep_string_iterator())
            ours.append(f"{o.get_key_element()}={values[0]}")
            later += [f"{o.get_key_element()}={v}" for v in values[1:]]
        else:
            ours.append(o.input_line)
    if not ours:
        return None
    try:
        with _compose_context(config_path()):
            from hydra.core.global_hydra import GlobalHydra

            cfg = compose(config_name=args.config_name or config_name, overrides=ours)
            repo = GlobalHydra.instance().config_loader().repository
            # a sweep's other values: each merged into the composed config as Hydra merges a
            # value (a group sweep's other options are composed by Hydra's own run)
            for line in later:
                o = OverridesParser.create().parse_overrides([line])[0]
                if "." in o.key_or_group or not repo.group_exists(o.key_or_group):
                    _merge_override(cfg, o)
    except (ConfigCompositionException, OmegaConfBaseException) as e:
        return composition_error_line(e)
    except Exception:   # a missing group option and the like: Hydra says which, listing the valid ones
        return None
    return None


def check_overrides(config_name: str, argv: Optional[Sequence[str]] = None) -> None:
    """Exit 1 with one ``error: ...`` line if an override of ``argv`` (default ``sys.argv[1:]``)
    names a key the app's config lacks (:func:`unknown_key_error`) or gives a value its schema
    refuses (:func:`override_value_error`)."""
    argv = sys.argv[1:] if argv is None else argv
    msg = unknown_key_error(config_name, argv)
    if msg is None:
        msg = override_value_error(config_name, argv)
    if msg is not None:
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(1)


def help_groups(*, _root_: DictConfig) -> str:
    """The ``${scoresde_groups:}`` resolver of ``--help`` (``conf/hydra/help/scoresde.yaml``): one
    line per group this app's defaults choose from, ``group: a, *b, c`` (``*``: the current
    choice; "(none chosen)" after a group left unset).  Hydra's own ``hydra/*`` groups and the internal ``schema/*``
    ones (the options' schemas, :mod:`.schema`) are left out: Hydra's ``$APP_CONFIG_GROUPS``
    lists every group in conf/, those of the other apps too."""
    from hydra.core.global_hydra import GlobalHydra

    choices = _root_.hydra.runtime.choices
    # the loader's repository, not loader.get_group_options: that copies the whole ConfigStore per call
    repo = GlobalHydra.instance().config_loader().repository if GlobalHydra.instance().is_initialized() else None
    lines = []
    for group in sorted(choices):
        if group.startswith("hydra/") or group.startswith("schema/") or "/schema/" in group:
            continue
        chosen = choices[group]
        options = sorted(repo.get_group_options(group.split("@")[0])) if repo is not None else []
        if chosen is not None and chosen not in options:
            options.append(chosen)
        items = ", ".join(("*" if o == chosen else "") + o for o in options)
        lines.append(f"{group}: {items}" + ("" if chosen is not None else "  (none chosen)"))
    return "\n".join(lines)


OmegaConf.register_new_resolver("scoresde_groups", help_groups, replace=True)


def run_dir() -> Path:
    """The run directory Hydra made for this job."""
    return Path(HydraConfig.get().runtime.output_dir)


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU generator: the samplers draw on it and move the noise, so results match across devices."""
    return torch.Generator().manual_seed(int(seed))


@dataclass
class ScoreSdeOptions:
    """The ``score_sde`` node of the apps that load a score: ``score_sde.config`` is the
    score_sde_pytorch config of a ``checkpoint=score_sde:PATH`` (a reference config name such as
    ``vp/cifar10_ddpmpp_continuous``, or a JSON / YAML file of the config dict); ignored otherwise."""

    config: Optional[str] = None


def load_app_score(cfg: DictConfig, device: Optional[str] = None) -> LoadedScore:
    """:func:`scoresde.checkpoints.load_score` of an app's ``checkpoint`` (``device``, ``ema`` and
    ``score_sde.config`` from ``cfg``; ``device`` overrides the config's)."""
    node = cfg.get("score_sde")
    config = node.get("config") if node is not None else None
    return load_score(cfg.checkpoint, cfg.device if device is None else device, cfg.get("ema", True),
                      score_sde_config=config)


def run_app(app: Callable[[], None], config_name: str) -> None:
    """A console script's body: refuse unknown keys and bad values (:func:`check_overrides`), then
    run the Hydra ``app``; under torchrun as one rank (ranks above 0 write no run directory of
    their own), the process group closed at the end."""
    from ..training import distributed

    check_overrides(config_name)
    if not distributed.under_torchrun():
        app()
        return
    sys.argv = exit_on_user_error(distributed.torchrun_argv)(sys.argv)
    try:
        app()
    finally:
        distributed.finish()
