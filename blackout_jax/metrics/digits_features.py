"""Sample quality for sklearn's 8x8 digits, where the Inception network does not apply.

A small scikit-learn multilayer perceptron is fit on the digits training split (counts / 16 as
input, hidden layers (128, 64), ReLU). Its last hidden layer is the feature space:

- ``frechet_distance``: Fréchet distance between the Gaussian statistics of the samples' features
  and of the training split's features;
- ``frechet_floor``: the same distance for real held-out digits (the test split) against the
  training split, with as many test examples as samples where the split allows it. It is the
  value a perfect generator would reach with that many samples (the estimate is biased upwards
  for small sets), so read ``frechet_distance`` against it;
- ``class_distribution``: the fraction of samples the classifier assigns to each digit 0..9;
- ``classifier_test_accuracy``: the classifier's accuracy on the test split (how far to trust it).

The fitted classifier and the reference statistics are cached in memory, so repeated calls only
cost a forward pass; fitting takes about a second on one CPU core.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

from blackout_jax.data.digits import DEFAULT_NUM_TEST, split_indices
from blackout_jax.metrics.frechet import frechet_distance, gaussian_statistics

__all__ = [
    "DIGITS_MAX_COUNT",
    "DIGITS_NUM_TEST",
    "DigitsFeatureExtractor",
    "digits_sample_metrics",
    "digits_train_test_split",
    "fitted_digits_extractor",
]

DIGITS_MAX_COUNT = 16
DIGITS_NUM_CLASSES = 10
DIGITS_NUM_EXAMPLES = 1797
DIGITS_NUM_TEST = DEFAULT_NUM_TEST
HIDDEN_LAYER_SIZES = (128, 64)


def digits_train_test_split(
    num_test: int = DIGITS_NUM_TEST,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training data's fixed train/test split of sklearn's digits, with the labels.

    The split is the data layer's (``blackout_jax.data.digits.split_indices``): the last
    ``num_test`` entries of a fixed-seed permutation of the 1797 examples are the test split,
    the rest (in permutation order) the training split.

    Returns:
      ``(train_images, train_labels, test_images, test_labels)``; images int64 (n, 8, 8, 1) with
      counts in 0..16, labels int64 (n,).
    """
    if not 0 < num_test < DIGITS_NUM_EXAMPLES:
        raise ValueError(f"num_test must be in [1, {DIGITS_NUM_EXAMPLES - 1}]; got {num_test}")
    digits = load_digits()
    images = digits.images.astype(np.int64)[..., None]
    labels = digits.target.astype(np.int64)
    train_rows, test_rows = split_indices(images.shape[0], num_test)
    return images[train_rows], labels[train_rows], images[test_rows], labels[test_rows]


def _as_flat_inputs(images: np.ndarray, argument_name: str) -> np.ndarray:
    """Validate digits counts (n, 8, 8, 1), (n, 8, 8) or (n, 64) and return float64 (n, 64) / 16."""
    images = np.asarray(images)
    if images.ndim == 0 or images.shape[0] == 0 or int(np.prod(images.shape[1:])) != 64:
        raise ValueError(
            f"{argument_name} must hold n >= 1 digits of 64 counts each, e.g. shape (n, 8, 8, 1); "
            f"got shape {images.shape}"
        )
    flat = images.reshape(images.shape[0], 64).astype(np.float64)
    if not np.all(np.isfinite(flat)):
        raise ValueError(f"{argument_name} contains non-finite values")
    low, high = flat.min(), flat.max()
    if low < 0 or high > DIGITS_MAX_COUNT:
        raise ValueError(
            f"{argument_name} must hold counts in [0, {DIGITS_MAX_COUNT}]; "
            f"got values in [{low}, {high}]"
        )
    return flat / DIGITS_MAX_COUNT


@dataclasses.dataclass(frozen=True)
class DigitsFeatureExtractor:
    """An MLP classifier fit on the digits training split, used as a feature extractor.

    Attributes:
      classifier: the fitted ``sklearn.neural_network.MLPClassifier`` (ReLU hidden layers).
      train_mean, train_covariance: Gaussian statistics of the training split's features, float64
        (d,) and (d, d), d = the last hidden layer's width.
      test_features: features of the test split, float64 (num_test, d).
      test_accuracy: accuracy of the classifier on the test split.
      num_test: size of the test split (see ``digits_train_test_split``).
    """

    classifier: MLPClassifier
    train_mean: np.ndarray
    train_covariance: np.ndarray
    test_features: np.ndarray
    test_accuracy: float
    num_test: int

    @staticmethod
    def fit(*, num_test: int = DIGITS_NUM_TEST, seed: int = 0) -> DigitsFeatureExtractor:
        """Fit the classifier on the training split (``random_state=seed``) and compute the
        reference statistics. Use ``fitted_digits_extractor`` for a cached instance."""
        train_images, train_labels, test_images, test_labels = digits_train_test_split(num_test)
        classifier = MLPClassifier(
            hidden_layer_sizes=HIDDEN_LAYER_SIZES,
            activation="relu",
            max_iter=500,
            random_state=seed,
        )
        # The matrices are small: one BLAS thread is fastest and keeps the fit deterministic
        # (several threads spin-wait badly when the CPU is shared).
        with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
            warnings.simplefilter("ignore", ConvergenceWarning)
            classifier.fit(_as_flat_inputs(train_images, "train_images"), train_labels)
        train_features = _hidden_features(classifier, _as_flat_inputs(train_images, "train_images"))
        train_mean, train_covariance = gaussian_statistics(train_features)
        test_inputs = _as_flat_inputs(test_images, "test_images")
        test_accuracy = float(np.mean(classifier.predict(test_inputs) == test_labels))
        return DigitsFeatureExtractor(
            classifier=classifier,
            train_mean=train_mean,
            train_covariance=train_covariance,
            test_features=_hidden_features(classifier, test_inputs),
            test_accuracy=test_accuracy,
            num_test=num_test,
        )

    def features(self, images: np.ndarray) -> np.ndarray:
        """Last hidden layer activations, float64 (n, 64), of counts (n, 8, 8, 1) in 0..16."""
        inputs = _as_flat_inputs(images, "images")
        with threadpool_limits(limits=1, user_api="blas"):
            return _hidden_features(self.classifier, inputs)

    def class_probabilities(self, images: np.ndarray) -> np.ndarray:
        """Classifier probabilities ``predict_proba``, float64 (n, 10), of counts in 0..16."""
        inputs = _as_flat_inputs(images, "images")
        with threadpool_limits(limits=1, user_api="blas"):
            return self.classifier.predict_proba(inputs)


def _hidden_features(classifier: MLPClassifier, inputs: np.ndarray) -> np.ndarray:
    """ReLU activations of the last hidden layer: h_{l+1} = max(0, h_l W_l + b_l), l < L - 1."""
    activations = inputs
    for weights, biases in zip(classifier.coefs_[:-1], classifier.intercepts_[:-1], strict=True):
        activations = np.maximum(activations @ weights + biases, 0.0)
    return activations


@functools.lru_cache(maxsize=4)
def fitted_digits_extractor(
    num_test: int = DIGITS_NUM_TEST, seed: int = 0
) -> DigitsFeatureExtractor:
    """A ``DigitsFeatureExtractor`` fit once per (num_test, seed) and kept in memory."""
    return DigitsFeatureExtractor.fit(num_test=num_test, seed=seed)


def _frechet_floor(
    extractor: DigitsFeatureExtractor, num_examples: int, seed: int
) -> tuple[float, int]:
    """Fréchet distance of min(num_examples, num_test) test digits to the training split."""
    test_features = extractor.test_features
    size = max(2, min(num_examples, test_features.shape[0]))
    rows = np.random.default_rng(seed).choice(test_features.shape[0], size=size, replace=False)
    mean, covariance = gaussian_statistics(test_features[rows])
    floor = frechet_distance(mean, covariance, extractor.train_mean, extractor.train_covariance)
    return floor, size


def digits_sample_metrics(
    samples: np.ndarray,
    *,
    extractor: DigitsFeatureExtractor | None = None,
    seed: int = 0,
) -> dict[str, float | int | list[float]]:
    """Sample-quality metrics of generated digits.

    Args:
      samples: integer counts in 0..16, shape (n, 8, 8, 1) (also accepted: (n, 8, 8), (n, 64)),
        n >= 2.
      extractor: the feature extractor; by default ``fitted_digits_extractor()`` (cached).
      seed: seed of the test-split subset used for the floor when n < num_test.

    Returns:
      A JSON-ready dict:
        ``frechet_distance`` (float): samples vs the training split, in classifier features;
        ``frechet_floor`` (float): real test digits vs the training split, same features;
        ``frechet_floor_num_examples`` (int): number of test digits behind the floor;
        ``class_distribution`` (list of 10 floats summing to 1): predicted digit fractions;
        ``classifier_test_accuracy`` (float): accuracy on the test split;
        ``num_samples`` (int).
    """
    if extractor is None:
        extractor = fitted_digits_extractor()
    sample_features = extractor.features(samples)
    num_samples = sample_features.shape[0]
    if num_samples < 2:
        raise ValueError(f"samples needs at least 2 digits for a covariance; got {num_samples}")
    sample_mean, sample_covariance = gaussian_statistics(sample_features)
    distance = frechet_distance(
        sample_mean, sample_covariance, extractor.train_mean, extractor.train_covariance
    )
    floor, floor_num_examples = _frechet_floor(extractor, num_samples, seed)
    predicted = np.argmax(extractor.class_probabilities(samples), axis=1)
    class_counts = np.bincount(predicted, minlength=DIGITS_NUM_CLASSES)
    return {
        "frechet_distance": float(distance),
        "frechet_floor": float(floor),
        "frechet_floor_num_examples": int(floor_num_examples),
        "class_distribution": [float(count / num_samples) for count in class_counts],
        "classifier_test_accuracy": float(extractor.test_accuracy),
        "num_samples": int(num_samples),
    }


def label_accuracy(
    samples: np.ndarray,
    labels: np.ndarray,
    *,
    extractor: DigitsFeatureExtractor | None = None,
) -> float:
    """Fraction of class-conditional samples that the classifier assigns to their label.

    Args:
      samples: integer counts in 0..16, shape (n, 8, 8, 1) (or (n, 8, 8), (n, 64)).
      labels: (n,) the digit each sample was drawn for.
      extractor: the classifier; by default ``fitted_digits_extractor()`` (cached).

    Returns:
      ``mean(argmax_k p(k | sample_i) == labels_i)``.
    """
    if extractor is None:
        extractor = fitted_digits_extractor()
    labels = np.asarray(labels).reshape(-1)
    probabilities = extractor.class_probabilities(samples)
    if probabilities.shape[0] != labels.shape[0]:
        raise ValueError(
            f"labels has {labels.shape[0]} entries for {probabilities.shape[0]} samples"
        )
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def quality_row(samples: np.ndarray) -> dict[str, float]:
    """:func:`digits_sample_metrics` of ``samples`` as the studies report it: the Fréchet
    distance, its real-vs-real floor, their ratio ``fd_over_floor`` and ``class_entropy``, the
    entropy (nats) of the predicted class distribution (log 10 = 2.303 when balanced)."""
    quality = digits_sample_metrics(samples)
    classes = np.asarray(quality["class_distribution"])
    return {
        "frechet_distance": quality["frechet_distance"],
        "frechet_floor": quality["frechet_floor"],
        "fd_over_floor": quality["frechet_distance"] / quality["frechet_floor"],
        "class_entropy": float(-np.sum(classes[classes > 0] * np.log(classes[classes > 0]))),
    }
