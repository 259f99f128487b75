"""Sample-quality metrics.

* Low-dimensional samples (:mod:`.mixture`): the mode-by-mode W2 to a Gaussian mixture, its
  exact-sample floor, the sliced W2 between sets.
* Distances over features (any extractor): the Frechet distance (:func:`frechet_distance`; FID on
  the FID Inception's features), KID (:func:`kernel_inception_distance`), the Inception Score of
  class logits (:func:`inception_score`), improved precision and recall (:func:`precision_recall`),
  and the classifier summary :func:`classifier_stats`.
* The FID Inception (:mod:`.inception`): TF's 2015-12-05 InceptionV3 in pure torch with TF1's
  resize, loading torch-fidelity's (or pytorch-fid's) weights file, SHA-256 checked.
* FD-digits / KID-digits (:mod:`.digits`): a shipped classifier of the 8x8 digits as the feature
  space, each figure beside its real-vs-real floor at the same n (:func:`digits_scores`).
* Saved statistics with their protocol (:mod:`.stats`): :class:`FeatureStats`,
  :func:`save_stats` / :func:`load_stats` (pytorch-fid's ``.npz`` in and out), computed by an
  extractor with :func:`compute_stats` and cached by :func:`reference_stats` (:mod:`.features`).

See docs/metrics.md for what each figure means and the record every reported figure carries.
"""

from .mixture import ModeStats, mode_w2, gaussian_w2, sliced_w2, exact_floor, sqrtm_psd
from .scores import ISResult, inception_score, ClassifierStats, classifier_stats
from .stats import FeatureStats, feature_stats, as_stats, save_stats, load_stats
from .frechet import frechet_distance, frechet_distance_gaussian, trace_sqrt_product
from .kid import KIDResult, kernel_inception_distance, polynomial_mmd2, polynomial_kernel
from .precision_recall import PRResult, precision_recall, knn_radii
from .features import FeatureExtractor, extract, compute_stats, reference_stats, sha256_file
from .inception import InceptionV3, tf1_resize_bilinear, inception_weights_path
from .evaluate import evaluate, markdown
from .digits import DigitsFeatures, DigitsScores, digits_scores, digits_floor, digits_reference

kid = kernel_inception_distance

__all__ = [
    "ModeStats", "mode_w2", "gaussian_w2", "sliced_w2", "exact_floor", "sqrtm_psd",
    "ISResult", "inception_score", "ClassifierStats", "classifier_stats",
    "FeatureStats", "feature_stats", "as_stats", "save_stats", "load_stats",
    "frechet_distance", "frechet_distance_gaussian", "trace_sqrt_product",
    "KIDResult", "kernel_inception_distance", "kid", "polynomial_mmd2", "polynomial_kernel",
    "PRResult", "precision_recall", "knn_radii",
    "FeatureExtractor", "extract", "compute_stats", "reference_stats", "sha256_file",
    "InceptionV3", "tf1_resize_bilinear", "inception_weights_path",
    "evaluate", "markdown",
    "DigitsFeatures", "DigitsScores", "digits_scores", "digits_floor", "digits_reference",
]
