"""Shared by the CIFAR-10 tests: a tiny set in CIFAR-10's python-pickle layout, written by the test."""

import pickle
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_tiny_cifar10(root, per_batch: int = 4, n_test: int = 6, seed: int = 0):
    """``root/cifar-10-batches-py/`` with 5 training batches of ``per_batch`` images, a test batch
    of ``n_test`` and the meta file, as the real archive lays them out (byte-string keys, rows of
    3072 = R, G, B planes of 32 x 32).  Returns ``(root, train levels [N, 3, 32, 32], train labels,
    test levels, test labels)``."""
    base = Path(root) / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(n, name):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(base / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}, f, protocol=2)
        return data.reshape(n, 3, 32, 32), np.array(labels)

    train = [batch(per_batch, f"data_batch_{i}") for i in range(1, 6)]
    test = batch(n_test, "test_batch")
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072,
                     b"num_cases_per_batch": per_batch}, f, protocol=2)
    return (Path(root), np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]),
            test[0], test[1])
