"""CIFAR-10 from its python pickles (scoresde.data.images.CifarPickles, data=cifar10): exact pixels
and labels in both splits, the in-memory and the streaming path alike, flips when configured, and a
missing or damaged set is an error that says where the files go."""

import pickle

import numpy as np
import pytest
import torch

from scoresde.apps import train as _train_app  # noqa: F401  (stores the config schemas, for compose)
from scoresde.data import build_dataset
from scoresde.data.images import CifarPickles, from_model_range, load_torchvision

from _cifar import CLASSES, write_tiny_cifar10
from _tiny import compose_conf


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_tiny_cifar10(tmp_path_factory.mktemp("cifar"))


def test_pickles_give_the_stored_pixels_labels_and_class_names(cifar):
    root, k_train, y_train, k_test, y_test = cifar
    tr, te = CifarPickles("CIFAR10", root, train=True), CifarPickles("CIFAR10", root, train=False)
    assert torch.equal(tr.levels, torch.from_numpy(k_train)) and torch.equal(tr.targets, torch.from_numpy(y_train))
    assert torch.equal(te.levels, torch.from_numpy(k_test)) and torch.equal(te.targets, torch.from_numpy(y_test))
    assert tr.classes == CLASSES and len(tr) == 20
    img, label = te[3]                               # torchvision's item: an RGB PIL image, H x W x C
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), k_test[3].transpose(1, 2, 0))
    assert label == y_test[3]


def test_load_torchvision_reads_cifar10_without_torchvision(cifar, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "torchvision", None)   # `import torchvision` now fails
    root, k_train, _, k_test, y_test = cifar
    x, y = load_torchvision("CIFAR10", root, train=False)
    assert torch.equal(from_model_range(x, 256), torch.from_numpy(k_test)) and torch.equal(y, torch.from_numpy(y_test))
    x16, _ = load_torchvision("CIFAR10", root, train=True, size=16)      # resized through PIL
    assert x16.shape == (20, 3, 16, 16)


def test_missing_cifar10_names_the_layout_and_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*data_batch_1.*never downloads"):
        build_dataset("torchvision", dataset="CIFAR10", root=str(tmp_path))


def test_a_damaged_pickle_is_an_error_naming_the_file(cifar, tmp_path):
    root = write_tiny_cifar10(tmp_path)[0]
    path = root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="test_batch"):
        CifarPickles("CIFAR10", root, train=False)


def test_a_pickle_asking_for_other_globals_is_refused(tmp_path):
    root = write_tiny_cifar10(tmp_path)[0]
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": print}, f, protocol=2)
    with pytest.raises(ValueError, match="not allowed"):
        CifarPickles("CIFAR10", root, train=False)


def test_data_cifar10_preset_streams_the_train_split_with_flips_and_holds_out_the_test_split(cifar):
    root, k_train, _, k_test, y_test = cifar
    cfg = compose_conf("train", ["data=cifar10", f"data.root={root}", "data.workers=0"])
    assert cfg.data.dataset == "CIFAR10" and cfg.data.stream and cfg.data.flip
    kw = {k: v for k, v in cfg.data.items() if k != "name"}
    data = build_dataset(cfg.data.name, **kw)
    assert data.event_shape == (3, 32, 32) and data.num_classes == 10 and data.info["flip"]
    assert torch.equal(from_model_range(data.test, 256), torch.from_numpy(k_test))   # all 6 (n_test 10000)
    stream = data.stream.open(4, 0, 0, 1, "cpu")
    seen = torch.cat([from_model_range(stream.next()[0], 256) for _ in range(5)])    # one epoch of 20
    train = torch.from_numpy(k_train)
    flipped = 0
    for img in seen:
        plain = (train == img).flatten(1).all(1).any()
        mirrored = (train.flip(-1) == img).flatten(1).all(1).any()
        assert plain or mirrored
        flipped += int(mirrored and not plain)
    assert 0 < flipped < 20              # some images flipped, not all (p = 1/2 each)
