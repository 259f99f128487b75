"""The streaming pipeline (scoresde/data/stream.py): the same batches for the same seed and rank
whatever the number of workers, disjoint shards per rank, flips when configured (and only then),
the held-out split of the in-memory path, and a resumed training run equal to a straight one."""

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde.data import build_dataset
from scoresde.data.images import from_model_range
from scoresde.data.stream import StreamSpec

N_IMAGES = 40


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """40 distinct, left-right asymmetric 8x8 RGB images in two class folders."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        cls = root / ("cat" if i % 2 else "dog")
        cls.mkdir(exist_ok=True)
        a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(a, "RGB").save(cls / f"{i:02d}.png")
    return root


def _stream(folder, rank=0, world=1, workers=0, flip=False, seed=0, batch=4, **kw):
    data = build_dataset("image_folder", root=str(folder), size=8, n_test=8, stream=True, flip=flip,
                         workers=workers, **kw)
    return data, data.stream.open(batch, seed, rank, world, "cpu")


def _levels(x):
    return from_model_range(x, 256)


def _train_levels(data):
    ds = data.stream.dataset
    return torch.stack([ds[(i, False)][0] for i in range(len(ds))])


def test_same_seed_and_rank_give_the_same_batches_with_or_without_workers(folder):
    _, a = _stream(folder, workers=0)
    _, b = _stream(folder, workers=2)
    _, c = _stream(folder, workers=0, seed=1)
    xa = [a.next()[0] for _ in range(10)]                    # beyond one epoch (32 images / 4 = 8 batches)
    xb = [b.next()[0] for _ in range(10)]
    xc = [c.next()[0] for _ in range(10)]
    assert all(torch.equal(p, q) for p, q in zip(xa, xb))
    assert not all(torch.equal(p, q) for p, q in zip(xa, xc))


def test_ranks_take_disjoint_shards_that_cover_the_epoch(folder):
    data, r0 = _stream(folder, rank=0, world=2)
    _, r1 = _stream(folder, rank=1, world=2)
    train = _train_levels(data).reshape(32, -1)
    seen = []
    for s in (r0, r1):
        for _ in range(4):                                    # 16 images per rank, 4 batches of 4
            seen.append(_levels(s.next()[0]).reshape(4, -1))
    seen = torch.cat(seen)
    match = (seen[:, None, :] == train[None, :, :]).all(-1)   # [32 seen, 32 train]
    assert match.sum(1).eq(1).all() and match.sum(0).eq(1).all()   # each training image exactly once
    assert r0.state_dict() == {"epoch": 1, "batch": 0, "world": 2}


def test_flips_appear_only_when_configured(folder):
    data, plain = _stream(folder, flip=False)
    _, flipped = _stream(folder, flip=True)
    train = _train_levels(data).reshape(32, -1).float()
    mirrored = _train_levels(data).flip(-1).reshape(32, -1).float()
    n_flipped = 0
    for s, allow in ((plain, False), (flipped, True)):
        for _ in range(8):
            k = _levels(s.next()[0]).reshape(4, -1).float()
            as_is = (k[:, None] == train[None]).all(-1).any(1)
            as_mirror = (k[:, None] == mirrored[None]).all(-1).any(1)
            assert (as_is | as_mirror).all()
            if not allow:
                assert as_is.all()
            else:
                n_flipped += int((as_mirror & ~as_is).sum())
    assert 6 <= n_flipped <= 26, n_flipped                    # about half of 32: binomial(32, 1/2)


def test_streamed_set_holds_out_the_in_memory_split_and_flip_needs_stream(folder):
    mem = build_dataset("image_folder", root=str(folder), size=8, n_test=8)
    data, _ = _stream(folder)
    assert torch.equal(mem.test, data.test) and torch.equal(mem.test_labels, data.test_labels)
    assert data.train is None and isinstance(data.stream, StreamSpec) and data.num_classes == 2
    assert sorted(_train_levels(data).reshape(32, -1).tolist()) == sorted(
        _levels(mem.train).reshape(32, -1).tolist())
    with pytest.raises(ValueError, match="flip=true needs stream=true"):
        build_dataset("image_folder", root=str(folder), size=8, n_test=8, flip=True)
    with pytest.raises(ValueError, match="workers"):
        build_dataset("image_folder", root=str(folder), size=8, n_test=8, stream=True, workers=-1)


def _unet_config(folder, steps, **train):
    return {
        "seed": 2, "sde": {"name": "vp"},
        "model": {"name": "unet", "nf": 8, "ch_mult": [1], "num_res_blocks": 1, "attn_resolutions": [],
                  "dropout": 0.0},
        "data": {"name": "image_folder", "root": str(folder), "size": 8, "n_test": 8, "stream": True,
                 "flip": True, "workers": 0, "dequantize": True},
        "loss": {"name": "dsm"}, "optim": {"lr": 1e-3, "warmup": 2},
        "train": {"steps": steps, "batch_size": 4, "log_every": 5, "ckpt_every": 0, "progress": False,
                  "tensorboard": False, "device": "cpu", **train},
        "eval": {"n_nll": 0, "n_samples": 0, "bound": False}, "sampler": {"name": "ode"},
    }


def test_training_on_a_stream_resumes_bit_exactly_across_an_epoch_boundary(folder, tmp_path):
    from scoresde.training import Trainer, build_from_config

    def trainer(cfg, out):
        model, data, loss = build_from_config(cfg)
        return Trainer(model, data, loss, optim=cfg["optim"], train=cfg["train"], eval=cfg["eval"],
                       sampler=cfg["sampler"], out_dir=out, config=cfg, seed=cfg["seed"])

    n = 12                                                     # 8 batches an epoch: resume inside epoch 1
    straight = trainer(_unet_config(folder, n), tmp_path / "a")
    for _ in range(n):
        straight.train_step()
    first = trainer(_unet_config(folder, n), tmp_path / "b")
    for _ in range(7):
        first.train_step()
    ckpt = first.save()
    assert first.state_dict()["data_stream"] == {"epoch": 0, "batch": 7, "world": 1}
    second = trainer(_unet_config(folder, n, resume=str(ckpt)), tmp_path / "c")
    for _ in range(n - 7):
        second.train_step()
    for (name, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert second.state_dict()["data_stream"] == {"epoch": 1, "batch": 4, "world": 1}


def test_a_streamed_torchvision_set_reads_its_train_split_item_by_item(tmp_path, monkeypatch):
    from test_images import _FakeMNIST
    import sys
    import types
    tv, tvd = types.ModuleType("torchvision"), types.ModuleType("torchvision.datasets")
    tvd.MNIST, tv.datasets = _FakeMNIST, tvd
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", tvd)
    mem = build_dataset("torchvision", dataset="MNIST", root=str(tmp_path), size=8, n_test=2)
    data = build_dataset("torchvision", dataset="MNIST", root=str(tmp_path), size=8, n_test=2, stream=True,
                         workers=0)
    assert torch.equal(mem.test, data.test) and data.train is None
    x, _ = data.stream.open(3, 0).next()
    assert sorted(_levels(x).reshape(3, -1).tolist()) == sorted(_levels(mem.train).reshape(3, -1).tolist())
