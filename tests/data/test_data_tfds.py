"""TFDS datasets read offline: mocked TFDS, a real array_record folder, and missing data."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from blackout_jax.data import MissingDatasetError, load_dataset, tfds_source
from blackout_jax.run.config import DataConfig

NUM_MOCK_EXAMPLES = 12


def tfds_config(name: str, data_dir, **overrides) -> DataConfig:
    fields = {
        "name": name,
        "data_dir": str(data_dir),
        "path": "",
        "array_key": "",
        "max_count": 0,
        "num_test": 1,
        "random_flip": True,
        "prefetch": 2,
    }
    return DataConfig(**(fields | overrides))


def mock_images(tfds_name: str, split: str, indices) -> np.ndarray:
    """The images the TFDS mock serves for ``indices`` (it is deterministic)."""
    source = tfds.data_source(tfds_name, split=split, download=False)
    return np.stack([source[int(i)]["image"] for i in indices])


@pytest.fixture
def mocked_tfds(tmp_path):
    """TFDS serving random examples; ``tmp_path`` looks like a data_dir holding the datasets."""
    for spec in tfds_source.TFDS_DATASETS.values():
        (tmp_path / spec.tfds_name).mkdir()
    with tfds.testing.mock_data(num_examples=NUM_MOCK_EXAMPLES):
        yield


def test_cifar10_from_mocked_tfds(tmp_path, mocked_tfds):
    dataset = load_dataset(tfds_config("cifar10", tmp_path), seed=3)
    assert dataset.image_shape == (32, 32, 3)
    assert dataset.max_count == 255
    assert dataset.num_train == NUM_MOCK_EXAMPLES
    assert dataset.random_flip
    test = dataset.test_examples(5)
    assert test.dtype == np.int32 and test.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(test, mock_images("cifar10", "test", range(5)))

    iterator = dataset.train_iterator(global_batch_size=4, process_index=1, process_count=2)
    batch = next(iterator)
    assert batch.shape == (2, 32, 32, 3) and batch.dtype == np.int32
    # Rows 2 and 3 of global batch 0, flipped where the stream says so.
    spec = iterator.spec
    positions = spec.local_positions(0)
    from blackout_jax.data import flip_decisions, stream_indices

    indices = stream_indices(positions, seed=3, num_examples=NUM_MOCK_EXAMPLES)
    expected = mock_images("cifar10", "train", indices).astype(np.int32)
    flips = flip_decisions(positions, seed=3)
    expected[flips] = expected[flips, :, ::-1]
    np.testing.assert_array_equal(batch, expected)


def test_tfds_stream_resumes_exactly(tmp_path, mocked_tfds):
    dataset = load_dataset(tfds_config("cifar10", tmp_path), seed=1)
    uninterrupted = dataset.train_iterator(global_batch_size=5, process_index=0, process_count=1)
    expected = [next(uninterrupted) for _ in range(6)]
    interrupted = dataset.train_iterator(global_batch_size=5, process_index=0, process_count=1)
    for _ in range(2):
        next(interrupted)
    resumed = dataset.train_iterator(global_batch_size=5, process_index=0, process_count=1)
    resumed.set_state(interrupted.get_state())
    for want in expected[2:]:
        np.testing.assert_array_equal(next(resumed), want)


def test_binarized_mnist_from_mocked_tfds(tmp_path, mocked_tfds):
    dataset = load_dataset(tfds_config("binarized_mnist", tmp_path), seed=0)
    assert dataset.image_shape == (32, 32, 1)
    assert dataset.max_count == 1
    assert not dataset.random_flip  # the reference did not flip MNIST
    test = dataset.test_examples(3)
    pixels = mock_images("mnist", "test", range(3))
    assert pixels.shape[1:] == (28, 28, 1)
    expected = [(interpolated_32(image) > 0.5).astype(np.int32) for image in pixels]
    np.testing.assert_array_equal(test, np.stack(expected))
    assert set(np.unique(test).tolist()) == {0, 1}
    batch = next(dataset.train_iterator(global_batch_size=6, process_index=0, process_count=1))
    assert batch.shape == (6, 32, 32, 1) and batch.max() <= 1


def interpolated_32(image: np.ndarray) -> np.ndarray:
    """``pixel / 255`` of a (28, 28, 1) image on a 32x32 grid by ``np.interp`` along each axis.

    Output pixel ``x`` reads the input at ``(x + 0.5) 28 / 32 - 0.5`` (centres aligned);
    ``np.interp`` repeats the edge values beyond the first and last centre.
    """
    plane = np.asarray(image[..., 0], np.float64) / 255.0
    points = (np.arange(32) + 0.5) * 28 / 32 - 0.5
    grid = np.arange(28)
    rows = np.stack([np.interp(points, grid, plane[:, j]) for j in range(28)], axis=1)
    return np.stack([np.interp(points, grid, rows[i]) for i in range(32)])[..., None]


def test_mnist_resize_and_threshold_match_direct_interpolation_and_pil():
    image = np.random.default_rng(5).integers(0, 256, (28, 28, 1)).astype(np.uint8)
    resized = tfds_source.resize_mnist(image)
    assert resized.shape == (32, 32, 1)
    np.testing.assert_allclose(resized, interpolated_32(image), rtol=0, atol=1e-12)
    pil = Image.fromarray(image[..., 0].astype(np.float32) / 255.0, mode="F")
    pil_resized = np.asarray(pil.resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(resized[..., 0], pil_resized, rtol=0, atol=1e-5)
    counts = tfds_source.binarize_mnist(image)
    assert counts.dtype == np.int32
    np.testing.assert_array_equal(counts, (interpolated_32(image) > 0.5).astype(np.int32))
    # 128 / 255 is just above one half, 127 / 255 just below: the threshold is strict.
    np.testing.assert_array_equal(tfds_source.binarize_mnist(np.full((28, 28, 1), 128)), 1)
    np.testing.assert_array_equal(tfds_source.binarize_mnist(np.full((28, 28, 1), 127)), 0)


def test_celeba64_from_mocked_tfds(tmp_path, mocked_tfds):
    dataset = load_dataset(tfds_config("celeba64", tmp_path), seed=0)
    assert dataset.image_shape == (64, 64, 3)
    assert dataset.max_count == 255
    test = dataset.test_examples(2)
    pixels = mock_images("celeb_a", "test", range(2))
    assert pixels.shape[1:] == (218, 178, 3)
    for counts, image in zip(test, pixels, strict=True):
        np.testing.assert_array_equal(counts, tfds_source.celeba_crop_resize(image))
    assert test.min() >= 0 and test.max() <= 255


def test_declared_max_count_must_match_the_dataset(tmp_path):
    with pytest.raises(ValueError, match=r"data.max_count = 16.*cifar10.*0\.\.255"):
        load_dataset(tfds_config("cifar10", tmp_path, max_count=16), seed=0)


@pytest.mark.parametrize(
    ("name", "tfds_name"),
    [("cifar10", "cifar10"), ("binarized_mnist", "mnist"), ("celeba64", "celeb_a")],
)
def test_missing_dataset_names_the_dir_and_the_command(tmp_path, name, tfds_name):
    data_dir = tmp_path / "tensorflow_datasets"
    data_dir.mkdir()
    with pytest.raises(MissingDatasetError) as raised:
        load_dataset(tfds_config(name, data_dir), seed=0)
    message = str(raised.value)
    assert f"no folder '{data_dir / tfds_name}'" in message
    assert f"tfds build {tfds_name} --data_dir={data_dir} --file_format=array_record" in message
    assert isinstance(raised.value, FileNotFoundError)
    assert list(data_dir.iterdir()) == []  # nothing was downloaded or created


def test_unprepared_dataset_folder_reports_what_tfds_found(tmp_path):
    (tmp_path / "cifar10").mkdir()
    with pytest.raises(MissingDatasetError, match=r"(?s)TFDS said: .*tfds build cifar10"):
        load_dataset(tfds_config("cifar10", tmp_path), seed=0)


def test_missing_data_dir_names_the_dir(tmp_path):
    data_dir = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(f"'{data_dir}'") + ".*does not exist"):
        load_dataset(tfds_config("cifar10", data_dir), seed=0)
    assert not data_dir.exists()


def test_empty_data_dir_means_the_tfds_default(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "default_dir"))
    assert tfds_source.resolve_data_dir("") == str(tmp_path / "default_dir")
    with pytest.raises(MissingDatasetError, match=re.escape(str(tmp_path / "default_dir"))):
        load_dataset(tfds_config("cifar10", ""), seed=0)


# --- a real array_record folder, written without TensorFlow -----------------------------------


class TinyCounts(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Six 6x4x3 uint8 images in 'train' and three in 'test' (a Tensor feature needs no TF)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {"image": tfds.features.Tensor(shape=(6, 4, 3), dtype=np.uint8)}
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(6, 0), "test": self._generate_examples(3, 100)}

    def _generate_examples(self, num, offset):
        for i in range(num):
            yield i, {"image": np.full((6, 4, 3), offset + i, np.uint8)}


def test_real_array_record_split_is_read_by_index(tmp_path):
    TinyCounts(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    source = tfds_source.TfdsSource(
        tfds_source.open_split("tiny_counts", "train", tmp_path),
        tfds_source.identity_counts,
        (6, 4, 3),
        "tiny_counts",
    )
    assert len(source) == 6
    batch = source.read(np.array([5, 0, 3]))
    assert batch.dtype == np.int32 and batch.shape == (3, 6, 4, 3)
    for row, index in zip(batch, (5, 0, 3), strict=True):
        np.testing.assert_array_equal(row, source.read_one(index))
        assert (row == row[0, 0, 0]).all()
    assert set(np.unique(source.read(np.arange(6))).tolist()) == set(range(6))
    with pytest.raises(MissingDatasetError, match="'validation'"):
        tfds_source.open_split("tiny_counts", "validation", tmp_path)


# --- conversions --------------------------------------------------------------------------------


def test_celeba_crop_is_centred():
    image = np.zeros((218, 178, 3), np.uint8)
    image[39:179, 19:159] = 200  # exactly the 140x140 centre crop
    counts = tfds_source.celeba_crop_resize(image)
    assert counts.shape == (64, 64, 3) and counts.dtype == np.int32
    assert (counts == 200).all()
    image[38, :] = 255  # a row just outside the crop changes nothing
    image[:, 159] = 255
    np.testing.assert_array_equal(tfds_source.celeba_crop_resize(image), counts)


def test_antialiased_resize_weights():
    weights = tfds_source.antialiased_bilinear_weights(140, 64)
    assert weights.shape == (64, 140)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    assert (weights >= 0).all()
    # Upscaling by an integer factor is plain bilinear at pixel centres.
    np.testing.assert_allclose(
        tfds_source.antialiased_bilinear_weights(2, 4),
        [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]],
    )
    np.testing.assert_allclose(tfds_source.antialiased_bilinear_weights(5, 5), np.eye(5))


def test_celeba_resize_agrees_with_pillow_antialiased_bilinear():
    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 256, (12, 10, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(smooth).resize((178, 218), Image.BILINEAR))
    ours = tfds_source.celeba_crop_resize(image)
    crop = Image.fromarray(image[39:179, 19:159])
    pillow = np.asarray(crop.resize((64, 64), Image.BILINEAR), np.int32)
    assert np.abs(ours - pillow).max() <= 2
