"""Train the digits feature network once and write ``scoresde/metrics/weights/digits_features.pt``.

    OMP_NUM_THREADS=1 python benchmarks/train_digits_features.py [--out PATH]

The network (:class:`scoresde.metrics.digits.DigitsNet`) is trained on the training split of
``digits_split(n_test=300, seed=0)`` (1,497 images; the 300 held out are never seen) with Adam and
one-pixel random shifts, from ``torch.manual_seed(0)``.  It prints the held-out accuracy and the
file's SHA-256, which goes into ``DIGITS_WEIGHTS_SHA256`` in ``scoresde/metrics/digits.py``.  The
shipped file is the reference: re-running this script on another machine or torch version gives a
network of the same quality, not the same bytes, so FD-digits figures are computed with the
shipped weights only (their hash is in every record).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scoresde.data.images import digits_split  # noqa: E402
from scoresde.metrics.digits import DIGITS_SPLIT, DIGITS_WEIGHTS, DigitsNet  # noqa: E402
from scoresde.metrics.features import sha256_file  # noqa: E402
from scoresde.metrics.stats import atomic_write_bytes  # noqa: E402


def shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image shifted by up to one pixel in each direction (zero = background fill)."""
    pad = F.pad(x, (1, 1, 1, 1))
    out = torch.empty_like(x)
    d = torch.randint(0, 3, (x.shape[0], 2), generator=g)
    for i in range(x.shape[0]):
        out[i] = pad[i, :, d[i, 0]:d[i, 0] + 8, d[i, 1]:d[i, 1] + 8]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DIGITS_WEIGHTS))
    p.add_argument("--epochs", type=int, default=60)
    args = p.parse_args()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_tr, y_tr, x_te, y_te = digits_split(**DIGITS_SPLIT)
    x_tr, x_te = (x_tr + 1) / 2, (x_te + 1) / 2              # data space [0, 1], as the extractor takes
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(x_tr.shape[0], generator=g)
        for s in range(0, x_tr.shape[0], 64):
            idx = perm[s:s + 64]
            loss = F.cross_entropy(net(shift(x_tr[idx], g)), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        acc_te = float((net(x_te).argmax(1) == y_te).float().mean())
        acc_tr = float((net(x_tr).argmax(1) == y_tr).float().mean())
    buf = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, buf)
    atomic_write_bytes(args.out, buf.getvalue())
    print(json.dumps({"out": args.out, "sha256": sha256_file(args.out), "train_accuracy": acc_tr,
                      "heldout_accuracy": acc_te, "epochs": args.epochs, "torch": torch.__version__}, indent=2))


if __name__ == "__main__":
    main()
