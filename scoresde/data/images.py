"""Image data: scikit-learn's 8x8 digits, image folders, torchvision data sets; scaling to [-1, 1].

Every loader returns a float tensor ``[N, C, H, W]`` in the model's range [-1, 1] (Song et al.'s
``data.centered = True``), plus labels where the source has them.  Nothing is downloaded: the
digits ship with scikit-learn, image folders are read from disk, torchvision data sets are opened
with ``download=False`` and a missing one is a clear error.  CIFAR-10 and CIFAR-100 are read from
their python pickles (the layout torchvision reads, ``ROOT/cifar-10-batches-py/data_batch_1..5``
and ``test_batch``; :class:`CifarPickles`) without torchvision, whose PyPI wheels do not import
beside a CPU-only torch build.

Scaling.  Images are stored as integer levels k in {0, ..., L-1} (L = 256 for 8-bit images,
L = 17 for the digits, whose pixels count 0..16).  Two maps take them to [-1, 1]:

* plain (the default, as Song et al. and DDPM):  x = 2 k / (L - 1) - 1, so the levels sit on an
  even grid from -1 to 1 and ``from_model_range`` inverts it by rounding to the nearest level;
* dequantized:  x = 2 (k + u) / L - 1 with u ~ U[0, 1) (uniform dequantization, Theis et al. 2016;
  Ho et al. 2019), a continuous density on [-1, 1) whose level-k bin is [2k/L - 1, 2(k+1)/L - 1);
  ``from_model_range(..., dequantized=True)`` inverts it by taking the bin, floor((x + 1) L / 2).
  A density on these values gives a discrete log-likelihood bound log P(k) >= log p(x) +
  D log(2 / L) (the bin has volume (2/L)^D), which is how bits/dim are reported on 8-bit data.

Both inverses clamp to {0, ..., L-1}, so a model's samples slightly outside [-1, 1] map to the
extreme levels.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

Tensor = torch.Tensor

__all__ = [
    "to_model_range", "from_model_range", "load_digits", "digits_split", "load_image_folder",
    "load_torchvision", "IMAGE_EXTENSIONS", "DIGITS_LEVELS", "CifarPickles", "CIFAR_LAYOUTS",
]

DIGITS_LEVELS = 17                      # sklearn's digits count 0..16 per pixel
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _check_levels(levels: int) -> None:
    if int(levels) != levels or levels < 2:
        raise ValueError(f"levels must be an integer >= 2, got {levels}")


def to_model_range(k: Tensor, levels: int = 256, dequantize: bool = False,
                   generator: Optional[torch.Generator] = None) -> Tensor:
    """Integer levels ``k`` in {0..levels-1} -> floats in [-1, 1] (see the module docstring).

    ``dequantize=False``: 2 k / (L - 1) - 1.  ``dequantize=True``: 2 (k + u) / L - 1 with
    u ~ U[0, 1) drawn from ``generator``.  Returns float32 (or ``k``'s dtype if it is floating).
    """
    _check_levels(levels)
    dtype = k.dtype if k.is_floating_point() else torch.float32
    kf = k.to(dtype)
    if kf.numel() and (kf.min() < 0 or kf.max() > levels - 1):
        raise ValueError(f"levels out of range: values span [{float(kf.min())}, {float(kf.max())}], "
                         f"expected integers in [0, {levels - 1}]")
    if not dequantize:
        return kf * (2.0 / (levels - 1)) - 1.0
    # drawn on the generator's device (a CUDA generator draws on CUDA), then moved to k's
    u = torch.rand(kf.shape, generator=generator, dtype=dtype,
                   device=generator.device if generator is not None else kf.device).to(kf.device)
    return (kf + u) * (2.0 / levels) - 1.0


def from_model_range(x: Tensor, levels: int = 256, dequantized: bool = False) -> Tensor:
    """Floats in [-1, 1] -> integer levels in {0..levels-1}, the inverse of :func:`to_model_range`.

    Rounds to the nearest level (``dequantized=False``) or takes the dequantization bin
    floor((x + 1) L / 2) (``dequantized=True``); clamps out-of-range values.  Returns uint8 when
    ``levels <= 256``, else int64.  Non-finite values raise ValueError.
    """
    _check_levels(levels)
    if not torch.isfinite(x).all():
        raise ValueError("cannot quantize non-finite values (NaN or inf) to image levels")
    if dequantized:
        k = torch.floor((x + 1.0) * (levels / 2.0))
    else:
        k = torch.round((x + 1.0) * ((levels - 1) / 2.0))
    k = k.clamp(0, levels - 1)
    return k.to(torch.uint8 if levels <= 256 else torch.int64)


def load_digits(dequantize: bool = False, generator: Optional[torch.Generator] = None,
                ) -> Tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images; UCI optdigits test set).

    Pixels count 0..16 (17 levels); they are scaled to [-1, 1] by :func:`to_model_range` with
    ``levels=17``: 0 -> -1 (background), 16 -> 1 (ink).  Returns ``(x [1797, 1, 8, 8] float32,
    y [1797] int64)`` in scikit-learn's order (shuffle or split it yourself).
    """
    k, y = _digits_levels()
    return to_model_range(k, levels=DIGITS_LEVELS, dequantize=dequantize, generator=generator), y


def _digits_levels() -> Tuple[Tensor, Tensor]:
    """The digits as uint8 levels 0..16 ``[1797, 1, 8, 8]`` and their labels."""
    from sklearn.datasets import load_digits as _sk_load_digits

    d = _sk_load_digits()
    k = torch.from_numpy(d.images.astype(np.uint8)).unsqueeze(1)
    return k, torch.from_numpy(d.target.astype(np.int64))


def digits_split(n_test: int = 300, seed: int = 0, dequantize: bool = False,
                 generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The digits shuffled by ``seed`` and split: ``(x_train, y_train, x_test, y_test)``.

    The same ``(n_test, seed)`` always gives the same split, so a model trained on ``x_train`` and
    a classifier judging its samples can share one held-out set (``benchmarks/digits.py``).
    """
    x, y = load_digits(dequantize=dequantize, generator=generator)
    if not 0 < n_test < x.shape[0]:
        raise ValueError(f"n_test must lie in [1, {x.shape[0] - 1}], got {n_test}")
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:-n_test], perm[-n_test:]
    return x[tr], y[tr], x[te], y[te]


def _channels_mode(channels: int) -> str:
    if channels == 1:
        return "L"
    if channels == 3:
        return "RGB"
    raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")


def _pil_to_levels(img, size: Union[int, Tuple[int, int], None], channels: int, resample=None) -> Tensor:
    """A PIL image -> uint8 tensor ``[C, H, W]``: converted, then resized to ``size`` (an int for
    size x size, or ``(H, W)``) with ``resample`` (default bicubic, antialiased)."""
    from PIL import Image

    img = img.convert(_channels_mode(channels))
    hw = (size, size) if isinstance(size, int) else size
    if hw is not None and img.size != (hw[1], hw[0]):
        img = img.resize((hw[1], hw[0]), Image.Resampling.BICUBIC if resample is None else resample, reducing_gap=None)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def load_image_folder(root: Union[str, os.PathLike], size: int, channels: int = 3,
                      extensions: Sequence[str] = IMAGE_EXTENSIONS, recursive: bool = True,
                      dequantize: bool = False, generator: Optional[torch.Generator] = None,
                      ) -> Tuple[Tensor, Tensor, List[str]]:
    """Load every image under ``root`` into memory, resized to ``size x size``, scaled to [-1, 1].

    Files are read with PIL (PNG, JPEG and the other ``extensions``), converted to grayscale
    (``channels=1``) or RGB (``channels=3``), resized with bicubic interpolation (non-square
    images are stretched: crop them first if that matters) and scaled from 8-bit levels by
    :func:`to_model_range`.  Files are taken in sorted path order.  Labels follow the
    torchvision ``ImageFolder`` convention: the name of the first directory under ``root`` is the
    class (images directly in ``root`` get class 0 and the class list is empty if there are no
    sub-directories).  Returns ``(x [N, C, size, size], y [N] int64, class_names)``.
    """
    k, y, class_names = _read_image_folder(root, size, channels, extensions, recursive)
    return to_model_range(k, levels=256, dequantize=dequantize, generator=generator), y, class_names


def _read_image_folder(root, size: int, channels: int, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                       recursive: bool = True) -> Tuple[Tensor, Tensor, List[str]]:
    """:func:`load_image_folder` before scaling: uint8 levels ``[N, C, size, size]``, labels, classes."""
    files, labels, class_names = _list_image_folder(root, size, channels, extensions, recursive)
    return _decode_files(files, size, channels), torch.tensor(labels, dtype=torch.int64), class_names


def _list_image_folder(root, size: int, channels: int, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                       recursive: bool = True) -> Tuple[List[Path], List[int], List[str]]:
    """The image files under ``root`` in sorted order, their labels and the class names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a directory")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    _channels_mode(channels)
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in exts)
    if not files:
        raise FileNotFoundError(f"no images with extensions {list(exts)} under {str(root)!r}")
    class_names = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    index = {c: i for i, c in enumerate(class_names)}
    labels = [index[p.relative_to(root).parts[0]] if len(p.relative_to(root).parts) > 1 else 0 for p in files]
    return files, labels, class_names


def _decode_files(files: Sequence[Path], size: int, channels: int) -> Tensor:
    """uint8 levels ``[N, C, size, size]`` of ``files``."""
    from PIL import Image, UnidentifiedImageError

    levels = []
    for p in files:
        try:
            with Image.open(p) as img:
                levels.append(_pil_to_levels(img, size, channels))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read image {str(p)!r}: {e}") from e
    return torch.stack(levels)


def load_torchvision(name: str, root: Union[str, os.PathLike], train: bool = True,
                     size: Optional[int] = None, channels: Optional[int] = None,
                     dequantize: bool = False, generator: Optional[torch.Generator] = None,
                     dataset_kwargs: Optional[dict] = None) -> Tuple[Tensor, Tensor]:
    """A torchvision data set already on disk (e.g. ``"MNIST"``, ``"CIFAR10"``), scaled to [-1, 1].

    The class ``torchvision.datasets.<name>`` is built with ``root``, ``train`` and
    ``download=False`` where its constructor takes them (plus ``dataset_kwargs``); nothing is downloaded,
    and a data set missing from ``root`` raises FileNotFoundError saying so.  Each item's PIL
    image is converted to ``channels`` (default: as stored; 1 or 3) and resized to ``size``
    (default: as stored).  Returns ``(x [N, C, H, W], y [N] int64)``.  Needs torchvision
    (``pip install torchvision``; without it this raises ImportError), except ``"CIFAR10"`` and
    ``"CIFAR100"``, read from their python pickles under ``root`` (:class:`CifarPickles`).
    """
    k, y = _read_torchvision(name, root, train, size, channels, dataset_kwargs)
    return to_model_range(k, levels=256, dequantize=dequantize, generator=generator), y


def _read_torchvision(name: str, root, train: bool = True, size: Optional[int] = None,
                      channels: Optional[int] = None, dataset_kwargs: Optional[dict] = None,
                      limit: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """:func:`load_torchvision` before scaling: uint8 levels ``[N, C, H, W]`` and labels (the
    first ``limit`` items only, when given)."""
    ds = _open_torchvision(name, root, train, dataset_kwargs)
    if isinstance(ds, CifarPickles) and size in (None, 32, (32, 32)) and channels in (None, 3):
        stop = len(ds) if limit is None else min(limit, len(ds))   # as stored: no PIL round trip
        return ds.levels[:stop].clone(), ds.targets[:stop].clone()
    levels, labels = [], []
    for i in range(len(ds) if limit is None else min(limit, len(ds))):
        img, target = ds[i]
        if channels is None:
            channels = 1 if img.mode in ("1", "L", "I", "I;16", "F") else 3
        levels.append(_pil_to_levels(img, size, channels))
        labels.append(int(target) if not isinstance(target, torch.Tensor) else int(target.item()))
    shapes = {tuple(v.shape) for v in levels}
    if len(shapes) > 1:
        raise ValueError(f"torchvision data set {name} has images of several sizes {sorted(shapes)}; pass size=")
    return torch.stack(levels), torch.tensor(labels, dtype=torch.int64)


# name -> (folder under root, train files, test files, label key, meta file, class-names key)
CIFAR_LAYOUTS = {
    "CIFAR10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                "labels", "batches.meta", "label_names"),
    "CIFAR100": ("cifar-100-python", ("train",), ("test",), "fine_labels", "meta", "fine_label_names"),
}


class _ArrayUnpickler:
    """``pickle.Unpickler`` that builds only NumPy arrays (and the built-in containers): a CIFAR
    pickle needs no other global, so a foreign or tampered file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"),
               ("_codecs", "encode")}   # bytes in a protocol-2 pickle written by Python 3

    @classmethod
    def load(cls, path: Path):
        import pickle

        allowed = cls.ALLOWED

        class _Restricted(pickle.Unpickler):
            def find_class(self, module, name):
                if (module, name) in allowed:
                    return super().find_class(module, name)
                raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR pickle")

        with open(path, "rb") as f:
            return _Restricted(f, encoding="bytes").load()


class CifarPickles:
    """One split of CIFAR-10 / CIFAR-100 read from its python pickles (the files torchvision's
    ``CIFAR10`` reads; no torchvision needed): ``ds[i] = (PIL image, label)`` as torchvision's,
    with the whole split in ``levels`` (uint8 ``[N, 3, 32, 32]``), ``targets`` and ``classes``.

    ``root`` holds the extracted archive (``cifar-10-python.tar.gz`` from
    https://www.cs.toronto.edu/~kriz/cifar.html): ``root/cifar-10-batches-py/data_batch_1`` ..
    ``data_batch_5``, ``test_batch`` and ``batches.meta`` (CIFAR-100: ``root/cifar-100-python/
    train``, ``test``, ``meta``).  A missing file is a FileNotFoundError saying where to put it;
    nothing is downloaded.  The pickles are read with an unpickler that builds NumPy arrays only.
    """

    def __init__(self, name: str, root: Union[str, os.PathLike], train: bool = True):
        if name not in CIFAR_LAYOUTS:
            raise ValueError(f"unknown CIFAR data set {name!r}; valid: {sorted(CIFAR_LAYOUTS)}")
        folder, train_files, test_files, label_key, meta_file, names_key = CIFAR_LAYOUTS[name]
        base = Path(root).expanduser() / folder
        files = train_files if train else test_files
        missing = [f for f in files if not (base / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{name} is not under {str(root)!r}: {', '.join(str(base / f) for f in missing)} missing. "
                f"scoresde never downloads: extract the python version of the data set "
                f"(https://www.cs.toronto.edu/~kriz/cifar.html) so that {base}/ holds "
                f"{', '.join(train_files + test_files)}, and pass its parent folder as root")
        arrays, labels = [], []
        for fname in files:
            try:
                batch = _ArrayUnpickler.load(base / fname)
                data = np.asarray(batch[b"data"], dtype=np.uint8)
                lab = np.asarray(batch[label_key.encode()], dtype=np.int64)
            except Exception as e:   # a truncated or foreign file
                raise ValueError(f"cannot read {base / fname} as a {name} python pickle ({type(e).__name__}: {e})"
                                 ) from e
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or lab.shape != (data.shape[0],):
                raise ValueError(f"{base / fname}: expected data [N, 3072] and N labels, got {data.shape} "
                                 f"and {lab.shape}")
            arrays.append(data.reshape(-1, 3, 32, 32))
            labels.append(lab)
        self.name, self.root, self.train = name, str(root), train
        self.levels = torch.from_numpy(np.concatenate(arrays))
        self.targets = torch.from_numpy(np.concatenate(labels))
        self.classes: List[str] = []
        if (base / meta_file).is_file():
            try:
                meta = _ArrayUnpickler.load(base / meta_file)
                self.classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[names_key.encode()]]
            except Exception:   # the class names are a nicety: the images and labels are what count
                self.classes = []

    def __len__(self) -> int:
        return int(self.levels.shape[0])

    def __getitem__(self, i: int):
        from PIL import Image

        return Image.fromarray(self.levels[i].permute(1, 2, 0).numpy(), mode="RGB"), int(self.targets[i])


def _open_torchvision(name: str, root, train: bool = True, dataset_kwargs: Optional[dict] = None):
    """``torchvision.datasets.<name>`` opened from disk (never downloaded), a clear error if absent;
    CIFAR-10 / CIFAR-100 from their python pickles (:class:`CifarPickles`), without torchvision."""
    if name in CIFAR_LAYOUTS:
        if dataset_kwargs:
            raise ValueError(f"dataset_kwargs are torchvision's; {name} is read from its pickles and takes none, "
                             f"got {sorted(dataset_kwargs)}")
        return CifarPickles(name, root, train)
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        raise ImportError("load_torchvision needs torchvision: pip install torchvision "
                          "(the digits and image-folder loaders work without it)") from e
    cls = getattr(tvd, name, None)
    if not (isinstance(cls, type)):
        valid = sorted(n for n in dir(tvd) if isinstance(getattr(tvd, n), type) and n[0].isupper())
        raise ValueError(f"unknown torchvision data set {name!r}; valid: {valid}")
    params = inspect.signature(cls).parameters
    kw = dict(dataset_kwargs or {})
    if "root" in params:
        kw.setdefault("root", str(root))
    if "train" in params:
        kw.setdefault("train", train)
    if "download" in params:
        kw["download"] = False
    try:
        ds = cls(**kw)
    except RuntimeError as e:       # torchvision's "Dataset not found or corrupted. ..."
        raise FileNotFoundError(f"torchvision data set {name} is not under {str(root)!r} and "
                                f"scoresde never downloads: fetch it first ({e})") from e
    if len(ds) == 0:
        raise ValueError(f"torchvision data set {name} under {str(root)!r} is empty")
    return ds


# ---------------------------------------------------------------------------------------------
# registry (scoresde.data.build_dataset): image sets in model space, [-1, 1]
# ---------------------------------------------------------------------------------------------
from . import DataSet, Scaler, register_dataset  # noqa: E402  (data/__init__ imports this module last)


def _image_dataset(name: str, k_train: Tensor, k_test: Tensor, levels: int, dequantize: bool,
                   seed: int, info: dict, y_train: Optional[Tensor] = None, y_test: Optional[Tensor] = None,
                   num_classes: int = 0, classes: Optional[list] = None) -> DataSet:
    """A :class:`DataSet` from integer levels.  Data space is pixel intensity in [0, 1]
    (``Scaler.unit(0, 1)``: x_model = 2 x - 1, so level k is intensity k / (L - 1)).  With
    ``dequantize`` every training batch gets fresh uniform noise and the held-out set fixed noise
    (seeded), both as :func:`to_model_range`.  ``y_train``/``y_test`` (with ``num_classes`` > 0)
    label the images; a labelled batch draws the same indices and noise as an unlabelled one."""
    test = to_model_range(k_test, levels, dequantize=dequantize,
                          generator=torch.Generator().manual_seed(seed + 1))
    info = {"levels": levels, "dequantize": dequantize, **info}
    lab = dict(num_classes=num_classes, test_labels=y_test, classes=classes) if num_classes else {}
    if not dequantize:
        return DataSet(name, tuple(k_train.shape[1:]), test=test, train=to_model_range(k_train, levels),
                       scaler=Scaler.unit(0.0, 1.0), info=info,
                       **({**lab, "train_labels": y_train} if num_classes else {}))

    def labelled_sampler(n: int, generator: Optional[torch.Generator] = None):
        dev = generator.device if generator is not None else None
        idx = torch.randint(k_train.shape[0], (n,), generator=generator, device=dev).cpu()
        x = to_model_range(k_train[idx].to(dev or "cpu"), levels, dequantize=True, generator=generator)
        return x, (y_train[idx].to(dev or "cpu") if y_train is not None else None)

    def sampler(n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        return labelled_sampler(n, generator)[0]

    return DataSet(name, tuple(k_train.shape[1:]), test=test, sampler=sampler,
                   scaler=Scaler.unit(0.0, 1.0), info=info,
                   **({**lab, "labelled_sampler": labelled_sampler} if num_classes else {}))


def _split_levels(k: Tensor, n_test: int, seed: int, y: Optional[Tensor] = None):
    """``(k_train, k_test)`` shuffled by ``seed`` (and ``(y_train, y_test)`` after them if ``y``)."""
    if not 0 < n_test < k.shape[0]:
        raise ValueError(f"n_test must lie in [1, {k.shape[0] - 1}] for {k.shape[0]} images, got {n_test}")
    perm = torch.randperm(k.shape[0], generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:-n_test], perm[-n_test:]
    return (k[tr], k[te]) if y is None else (k[tr], k[te], y[tr], y[te])


@register_dataset("digits")
def digits_dataset(n_test: int = 300, seed: int = 0, dequantize: bool = False) -> DataSet:
    """scikit-learn's 8x8 digits split as :func:`digits_split` (same ``n_test``, ``seed``),
    labelled 0..9 by scikit-learn's targets."""
    k, y = _digits_levels()
    k_train, k_test, y_train, y_test = _split_levels(k, n_test, seed, y)
    return _image_dataset("digits", k_train, k_test, DIGITS_LEVELS, dequantize, seed,
                          {"n_test": n_test, "seed": seed}, y_train, y_test, 10, [str(i) for i in range(10)])


def _check_stream(stream: bool, flip: bool, workers: int) -> None:
    if flip and not stream:
        raise ValueError("flip=true needs stream=true (flips are drawn by the streaming pipeline, "
                         "scoresde.data.stream)")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")


def _streamed(name: str, source, size, channels, labels, k_test: Tensor, y_test: Optional[Tensor], levels: int,
              dequantize: bool, seed: int, info: dict, num_classes: int, classes, flip: bool, workers: int) -> DataSet:
    """A :class:`DataSet` whose training images stream from disk (:mod:`scoresde.data.stream`)."""
    from .stream import LevelsDataset, StreamSpec

    test = to_model_range(k_test, levels, dequantize=dequantize, generator=torch.Generator().manual_seed(seed + 1))
    spec = StreamSpec(LevelsDataset(source, size, channels, _pil_to_levels, labels), to_model_range, levels,
                      dequantize, flip, workers)
    info = {"levels": levels, "dequantize": dequantize, "stream": True, "flip": flip, **info}
    lab = dict(num_classes=num_classes, test_labels=y_test, classes=classes) if num_classes else {}
    return DataSet(name, tuple(k_test.shape[1:]), test=test, stream=spec, scaler=Scaler.unit(0.0, 1.0),
                   info=info, **lab)


@register_dataset("image_folder")
def image_folder_dataset(root: Optional[str] = None, size: int = 32, channels: int = 3, n_test: int = 256,
                         seed: int = 0, dequantize: bool = False, stream: bool = False, flip: bool = False,
                         workers: int = 2) -> DataSet:
    """The images under ``root`` (:func:`load_image_folder`), ``n_test`` of them held out;
    labelled by sub-directory when there are at least two (``classes``: their sorted names).

    ``stream=True``: the training images are decoded by ``workers`` DataLoader processes as
    training reads them (:mod:`scoresde.data.stream`; ``flip`` adds random horizontal flips);
    the split is the same as in memory."""
    if root is None:
        raise ValueError("the image_folder data set needs root= (the folder to read)")
    _check_stream(stream, flip, workers)
    if stream:
        files, labels, classes = _list_image_folder(root, size, channels)
        if not 0 < n_test < len(files):
            raise ValueError(f"n_test must lie in [1, {len(files) - 1}] for {len(files)} images, got {n_test}")
        perm = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
        tr, te = perm[:-n_test], perm[-n_test:]
        K = len(classes) if len(classes) >= 2 else 0
        y = torch.tensor(labels, dtype=torch.int64)
        return _streamed("image_folder", [files[i] for i in tr], size, channels, [labels[i] for i in tr],
                         _decode_files([files[i] for i in te], size, channels), y[te] if K else None, 256,
                         dequantize, seed, {"root": str(root), "classes": classes}, K, list(classes) or None,
                         flip, workers)
    k, y, classes = _read_image_folder(root, size, channels)
    k_train, k_test, y_train, y_test = _split_levels(k, n_test, seed, y)
    K = len(classes) if len(classes) >= 2 else 0
    return _image_dataset("image_folder", k_train, k_test, 256, dequantize, seed,
                          {"root": str(root), "classes": classes}, y_train, y_test, K, list(classes) or None)


@register_dataset("torchvision")
def torchvision_dataset(dataset: str = "MNIST", root: str = ".", size: Optional[int] = None,
                        channels: Optional[int] = None, n_test: int = 2000, seed: int = 0,
                        dequantize: bool = False, stream: bool = False, flip: bool = False,
                        workers: int = 2) -> DataSet:
    """``torchvision.datasets.<dataset>`` from disk (:func:`load_torchvision`): its train split for
    training, the first ``n_test`` images of its test split held out.  ``stream=True``: the train
    split is read item by item by DataLoader workers (:mod:`scoresde.data.stream`, ``flip`` for
    random horizontal flips); labels are then taken as ``num_classes`` from the held-out split."""
    _check_stream(stream, flip, workers)
    if stream:
        k_test, y_test = _read_torchvision(dataset, root, False, size, channels, limit=n_test)
        source = _open_torchvision(dataset, root, True)
        K = int(y_test.max()) + 1 if y_test.numel() else 0
        K = len(getattr(source, "classes", [])) or K
        return _streamed(dataset, source, size, channels if channels is not None else int(k_test.shape[1]), None,
                         k_test, y_test if K >= 2 else None, 256, dequantize, seed, {"root": str(root)},
                         K if K >= 2 else 0, None, flip, workers)
    k_train, y_train = _read_torchvision(dataset, root, True, size, channels)
    k_test, y_test = _read_torchvision(dataset, root, False, size, channels)
    K = int(max(y_train.max(), y_test.max())) + 1 if y_train.numel() else 0
    return _image_dataset(dataset, k_train, k_test[:n_test], 256, dequantize, seed, {"root": str(root)},
                          y_train, y_test[:n_test], K if K >= 2 else 0)
