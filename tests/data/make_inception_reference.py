"""Generate tests/data/inception_reference.pt: torch-fidelity's Inception features of fixed images
under random weights, which tests/test_metrics_inception.py compares with scoresde's network.

torch-fidelity cannot be imported here (it imports torchvision, which does not import beside the
CPU torch build), so this script runs its extractor OUTSIDE the repository from an unpacked wheel,
loading its submodules without the package's ``__init__`` (which is what imports torchvision):

    pip download torch-fidelity==0.4.0 --no-deps -d /tmp/tfid
    unzip /tmp/tfid/torch_fidelity-0.4.0-py3-none-any.whl -d /tmp/tfid/src
    OMP_NUM_THREADS=1 python tests/data/make_inception_reference.py /tmp/tfid/src

Reference: torch-fidelity 0.4.0 (PyPI wheel), ``torch_fidelity/feature_extractor_inceptionv3.py``
and ``interpolate_compat_tensorflow.py``.
"""

import sys
import tempfile
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _inception import random_inception_state, reference_images  # noqa: E402


def main(src: str) -> None:
    pkg = types.ModuleType("torch_fidelity")
    pkg.__path__ = [str(Path(src) / "torch_fidelity")]
    sys.modules["torch_fidelity"] = pkg                  # skip torch_fidelity/__init__ (torchvision)
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
    from torch_fidelity.version import __version__

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "random.pth"
        torch.save(random_inception_state(0), path)
        ext = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                          feature_extractor_weights_path=str(path))
        with torch.no_grad():
            feats, logits = ext(reference_images())
    small = torch.rand(2, 3, 4, 6, generator=torch.Generator().manual_seed(2))
    resized = interpolate_bilinear_2d_like_tensorflow1x(small, size=(9, 5), align_corners=False)
    out = {"features": feats, "logits_unbiased": logits, "resize_in": small, "resize_out": resized,
           "torch_fidelity": str(__version__), "torch": str(torch.__version__)}
    torch.save(out, ROOT / "tests" / "data" / "inception_reference.pt")
    print({k: (tuple(v.shape) if isinstance(v, torch.Tensor) else v) for k, v in out.items()},
          "feature mean abs", float(feats.abs().mean()))


if __name__ == "__main__":
    main(sys.argv[1])
