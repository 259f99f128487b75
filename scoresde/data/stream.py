"""A streaming pipeline for image training sets: decoded by DataLoader workers, never held whole.

``image_folder`` and ``torchvision`` data sets built with ``stream=True`` keep only their file list
(or torchvision's lazy data set object) and the decoded held-out images; training batches come from
a :class:`torch.utils.data.DataLoader` (``workers`` processes, pinned memory on CUDA) over a
:class:`LevelsDataset` that decodes one image per item.  The toy sets and the digits keep their
in-memory path.

Order.  Epoch e of rank r (of W ranks) is fixed by ``(seed, e)`` alone: a permutation of the N
training images and a flip bit per position drawn from a generator seeded with NumPy's
``SeedSequence(seed, spawn_key=(e,))``; rank r takes positions r, r + W, ... (disjoint shards
that cover the set once per epoch across ranks) and cuts them into batches of its batch size
(the remainder is dropped, so every rank has the same number of batches).  An item is the pair
``(index, flip)``, so the workers draw nothing: the batches do not depend on the number of
workers, and the position ``(epoch, batch)`` is the whole state of the stream.  A resumed run
starts its sampler at the saved position (no image before it is decoded again) and continues
bit-exactly.  Horizontal flips (``flip=True``, the CIFAR-10 recipes of Song et al.) flip the
last axis of the chosen images.

The main process turns each batch of integer levels into the model's range on the training
device (:func:`scoresde.data.images.to_model_range`); dequantization noise is drawn there from
the trainer's generator, as on the in-memory path.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

Tensor = torch.Tensor

__all__ = ["LevelsDataset", "EpochBatchSampler", "StreamSpec", "BatchStream", "epoch_order"]


class LevelsDataset(Dataset):
    """Images decoded on demand: ``ds[(i, flip)] = (levels uint8 [C, H, W], label)``.

    ``source``: a list of image paths (an image folder) or a data set whose items are
    ``(PIL image, target)`` (torchvision's); ``labels``: the paths' labels (ignored for a data set);
    ``to_levels(img, size, channels)``: a PIL image to uint8 levels (the image module's, passed
    in so that this module does not import it).
    """

    def __init__(self, source: Any, size: Any, channels: Optional[int], to_levels: Callable,
                 labels: Optional[Sequence[int]] = None):
        self.source, self.size, self.channels, self.to_levels = source, size, channels, to_levels
        self.labels = list(labels) if labels is not None else None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: Tuple[int, bool]) -> Tuple[Tensor, int]:
        from PIL import Image

        i, flip = key
        item = self.source[i]
        if isinstance(item, tuple):            # torchvision: (PIL image, target)
            img, target = item
            channels = self.channels or (1 if img.mode in ("1", "L", "I", "I;16", "F") else 3)
            k = self.to_levels(img, self.size, channels)
            y = int(target)
        else:                                  # a path
            with Image.open(item) as img:
                k = self.to_levels(img, self.size, self.channels or 3)
            y = self.labels[i] if self.labels is not None else 0
        return (k.flip(-1) if flip else k), y


def epoch_order(n: int, seed: int, epoch: int) -> Tuple[np.ndarray, np.ndarray]:
    """The permutation of ``n`` items and the flip bits of epoch ``epoch`` (the module docstring)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(int(epoch),))))
    return rng.permutation(n), rng.random(n) < 0.5


class EpochBatchSampler(Sampler):
    """Endless batches of ``(index, flip)`` keys for one rank, from position ``(epoch, batch)``."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, flip: bool = False,
                 epoch: int = 0, batch: int = 0):
        self.n, self.batch_size, self.seed, self.rank, self.world, self.flip = n, batch_size, seed, rank, world, flip
        self.per_epoch = (n // world) // batch_size
        if self.per_epoch < 1:
            raise ValueError(f"batch_size={batch_size} per rank exceeds the {n // world} training images of a "
                             f"rank ({n} images, {world} ranks)")
        self.epoch, self.batch = int(epoch), int(batch)

    def __iter__(self) -> Iterator[List[Tuple[int, bool]]]:
        epoch, start = self.epoch, self.batch
        while True:
            perm, flips = epoch_order(self.n, self.seed, epoch)
            mine = perm[self.rank::self.world][: self.per_epoch * self.batch_size]
            fl = flips[self.rank::self.world] if self.flip else np.zeros(self.n, dtype=bool)
            for b in range(start, self.per_epoch):
                sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
                yield [(int(i), bool(f)) for i, f in zip(mine[sl], fl[sl])]
            epoch, start = epoch + 1, 0

    def __len__(self) -> int:        # endless; DataLoader only asks for it for warnings
        return 2 ** 62


class BatchStream:
    """One rank's iterator over training batches, with its position as state (to resume)."""

    def __init__(self, spec: "StreamSpec", batch_size: int, seed: int, rank: int, world: int, device: torch.device):
        self.spec, self.batch_size, self.seed, self.rank, self.world = spec, batch_size, seed, rank, world
        self.device = torch.device(device)
        self.epoch, self.batch = 0, 0
        self._it: Optional[Iterator] = None

    def _open(self) -> Iterator:
        sampler = EpochBatchSampler(len(self.spec.dataset), self.batch_size, self.seed, self.rank, self.world,
                                    self.spec.flip, self.epoch, self.batch)
        self._per_epoch = sampler.per_epoch
        loader = DataLoader(self.spec.dataset, batch_sampler=sampler, num_workers=self.spec.workers,
                            pin_memory=self.device.type == "cuda",
                            persistent_workers=False, prefetch_factor=2 if self.spec.workers > 0 else None)
        return iter(loader)

    def next(self, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """``(x [B, C, H, W] in the model's range, y [B])`` on the device."""
        if self._it is None:
            self._it = self._open()
        k, y = next(self._it)
        self.batch += 1
        if self.batch == self._per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        nb = self.device.type == "cuda"
        k = k.to(self.device, non_blocking=nb)
        x = self.spec.to_model(k, self.spec.levels, dequantize=self.spec.dequantize, generator=generator)
        return x, y.to(self.device, non_blocking=nb)

    def state_dict(self) -> Dict[str, int]:
        """The position; the same on every rank (every rank has the same number of batches)."""
        return {"epoch": self.epoch, "batch": self.batch, "world": self.world}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        if int(state.get("world", self.world)) != self.world:
            # other shards, another number of batches an epoch: continue with the next epoch
            warnings.warn(f"the data stream was saved with {state.get('world')} ranks, this run has {self.world}: "
                          f"continuing at the start of epoch {self.epoch + 1} (not bit-exactly)", RuntimeWarning)
            self.epoch, self.batch = self.epoch + 1, 0
        self._it = None                       # reopened at that position on the next batch


class StreamSpec:
    """What a streamed :class:`~scoresde.data.DataSet` carries: the lazy training images and how
    to stream them; :meth:`open` starts one rank's :class:`BatchStream`."""

    def __init__(self, dataset: LevelsDataset, to_model: Callable, levels: int, dequantize: bool = False,
                 flip: bool = False, workers: int = 2):
        """``to_model(k, levels, dequantize=, generator=)``: levels to the model's range
        (:func:`scoresde.data.images.to_model_range`)."""
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
        self.dataset, self.levels, self.dequantize, self.flip, self.workers = dataset, levels, dequantize, flip, workers
        self.to_model = to_model

    def open(self, batch_size: int, seed: int, rank: int = 0, world: int = 1, device="cpu") -> BatchStream:
        return BatchStream(self, batch_size, seed, rank, world, device)
