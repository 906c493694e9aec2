"""Own count data (.npy, .npz, PNG folders) and every validation failure, through load_dataset."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from blackout_jax.data import arrays, count_checks, load_dataset
from blackout_jax.run.config import DataConfig
from tests.hostile_arrays import HOSTILE_SHAPE, hostile_npy_bytes, write_hostile_npz


def counts_config(path, **overrides) -> DataConfig:
    fields = {
        "name": "counts",
        "data_dir": "",
        "path": str(path),
        "array_key": "",
        "max_count": 0,
        "num_test": 4,
        "random_flip": False,
        "prefetch": 0,
    }
    return DataConfig(**(fields | overrides))


def random_counts(shape=(20, 4, 4, 2), high=9, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high + 1, size=shape)


# --- formats ------------------------------------------------------------------------------------


def test_npy_with_channel_axis_and_inferred_max_count(tmp_path):
    counts = random_counts()
    counts[3, 1, 2, 0] = 37
    np.save(tmp_path / "c.npy", counts)
    dataset = load_dataset(counts_config(tmp_path / "c.npy"), seed=0)
    assert dataset.image_shape == (4, 4, 2)
    assert dataset.max_count == 37
    assert dataset.max_count_inferred
    assert dataset.describe()["max_count"] == 37
    assert dataset.describe()["max_count_inferred"] is True
    assert dataset.num_train == 16 and dataset.num_test == 4
    everything = np.concatenate([dataset.train_source.read(np.arange(16)), dataset.test_examples()])
    assert everything.dtype == np.int32
    # The split is a permutation of the file's examples.
    assert sorted(map(bytes, everything)) == sorted(map(bytes, counts.astype(np.int32)))


def test_npy_without_channel_axis_gets_one(tmp_path):
    np.save(tmp_path / "c.npy", random_counts((10, 8, 4)).astype(np.uint16))
    dataset = load_dataset(counts_config(tmp_path / "c.npy", num_test=2), seed=0)
    assert dataset.image_shape == (8, 4, 1)
    assert next(dataset.train_iterator(global_batch_size=3)).shape == (3, 8, 4, 1)


def test_npz_first_array_and_named_key(tmp_path):
    first, second = random_counts(seed=1), random_counts(high=3, seed=2)
    np.savez(tmp_path / "c.npz", first=first, second=second)
    by_default = load_dataset(counts_config(tmp_path / "c.npz"), seed=0)
    assert by_default.max_count == first.max()
    named = load_dataset(counts_config(tmp_path / "c.npz", array_key="second"), seed=0)
    assert named.max_count == 3
    with pytest.raises(ValueError, match=r"'third' is not an array in .*c\.npz.*first"):
        load_dataset(counts_config(tmp_path / "c.npz", array_key="third"), seed=0)


def test_declared_max_count_is_used(tmp_path):
    np.save(tmp_path / "c.npy", random_counts(high=5))
    dataset = load_dataset(counts_config(tmp_path / "c.npy", max_count=255), seed=0)
    assert dataset.max_count == 255 and not dataset.max_count_inferred


def test_all_zero_data_infers_max_count_one(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((6, 2, 2), np.int8))
    assert load_dataset(counts_config(tmp_path / "z.npy", num_test=1), seed=0).max_count == 1


def test_whole_floats_and_bools_are_counts(tmp_path):
    np.save(tmp_path / "f.npy", random_counts().astype(np.float32))
    assert load_dataset(counts_config(tmp_path / "f.npy"), seed=0).max_count == 9
    np.save(tmp_path / "b.npy", random_counts(high=1).astype(bool))
    assert load_dataset(counts_config(tmp_path / "b.npy"), seed=0).max_count == 1


def test_split_is_fixed_and_independent_of_the_seed(tmp_path):
    np.save(tmp_path / "c.npy", random_counts())
    one = load_dataset(counts_config(tmp_path / "c.npy"), seed=0).test_examples()
    two = load_dataset(counts_config(tmp_path / "c.npy"), seed=123).test_examples()
    np.testing.assert_array_equal(one, two)


def test_pickled_objects_are_never_loaded(tmp_path):
    objects = np.empty((2, 2, 2), dtype=object)
    objects[...] = 1
    np.save(tmp_path / "o.npy", objects, allow_pickle=True)
    with pytest.raises(ValueError, match=r"o\.npy.*pickled objects are never loaded"):
        load_dataset(counts_config(tmp_path / "o.npy"), seed=0)
    np.savez(tmp_path / "o.npz", x=objects)
    with pytest.raises(ValueError, match=r"o\.npz\['x'\].*without unpickling"):
        load_dataset(counts_config(tmp_path / "o.npz"), seed=0)


def save_png(path, pixels: np.ndarray, mode: str | None = None) -> None:
    Image.fromarray(pixels, mode=mode).save(path) if mode else Image.fromarray(pixels).save(path)


def test_png_folder_grayscale_sorted_by_name(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 4, 8), dtype=np.uint8)
    for i, image in enumerate(images):
        save_png(tmp_path / f"img_{i:02d}.png", image)
    (tmp_path / "notes.txt").write_text("not an image")
    pixels, files = arrays.read_png_folder(tmp_path)
    assert [f.name for f in files] == [f"img_{i:02d}.png" for i in range(6)]
    np.testing.assert_array_equal(pixels[..., 0], images)
    dataset = load_dataset(counts_config(tmp_path, num_test=2), seed=0)
    assert dataset.image_shape == (4, 8, 1)
    assert dataset.max_count == 255 and not dataset.max_count_inferred


def test_png_folder_rgb(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        save_png(tmp_path / f"{i}.png", image)
    dataset = load_dataset(counts_config(tmp_path, num_test=1), seed=0)
    assert dataset.image_shape == (4, 4, 3)
    got = np.concatenate([dataset.train_source.read(np.arange(2)), dataset.test_examples()])
    assert sorted(map(bytes, got)) == sorted(map(bytes, images.astype(np.int32)))


def test_png_folder_errors_name_the_file(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    save_png(tmp_path / "b.png", np.zeros((4, 4, 4), np.uint8))  # RGBA
    with pytest.raises(ValueError, match=r"b\.png.*mode 'RGBA'"):
        load_dataset(counts_config(tmp_path, num_test=1), seed=0)
    (tmp_path / "b.png").unlink()
    save_png(tmp_path / "c.png", np.zeros((4, 8), np.uint8))
    with pytest.raises(ValueError, match=r"c\.png.*\(4, 8, 1\).*a\.png"):
        load_dataset(counts_config(tmp_path, num_test=1), seed=0)
    (tmp_path / "c.png").unlink()
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(tmp_path / "d.png")
    with pytest.raises(ValueError, match=r"d\.png.*8-bit"):
        load_dataset(counts_config(tmp_path, num_test=1), seed=0)


def test_png_values_above_a_declared_max_count_name_the_file(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    image = np.zeros((4, 4), np.uint8)
    image[2, 3] = 7
    save_png(tmp_path / "b.png", image)
    with pytest.raises(ValueError, match=re.escape("b.png[2, 3, 0] = ") + r".*7.*max count 1"):
        load_dataset(counts_config(tmp_path, num_test=1, max_count=1), seed=0)


def test_empty_png_folder_and_missing_path(tmp_path):
    with pytest.raises(ValueError, match="no \\*.png files"):
        load_dataset(counts_config(tmp_path), seed=0)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_dataset(counts_config(tmp_path / "missing.npy"), seed=0)
    (tmp_path / "c.txt").write_text("1,2")
    with pytest.raises(ValueError, match="suffix '.txt'"):
        load_dataset(counts_config(tmp_path / "c.txt"), seed=0)
    with pytest.raises(ValueError, match="data.path"):
        load_dataset(counts_config(""), seed=0)


# --- headers claiming more data than the file holds ---------------------------------------------


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_an_npy_header_claiming_more_than_the_file_holds_is_refused_before_reading(
    tmp_path, version
):
    path = tmp_path / "big.npy"
    path.write_bytes(hostile_npy_bytes(version))
    expected = (
        f"{path}: the header claims shape {HOSTILE_SHAPE} of float64 ({2**40} bytes), but only "
        "64 bytes of data follow it"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        arrays.check_stored_size(path)
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_dataset(counts_config(path), seed=0)


def test_an_npz_member_claiming_more_than_the_archive_holds_is_refused(tmp_path):
    path = tmp_path / "big.npz"
    write_hostile_npz(path, labels=np.zeros(3, np.int32))
    expected = f"{path}['counts']: the header claims shape {HOSTILE_SHAPE} of float64"
    with pytest.raises(ValueError, match=re.escape(expected) + ".* only 64 bytes"):
        load_dataset(counts_config(path), seed=0)
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_dataset(counts_config(path, array_key="counts"), seed=0)
    arrays.check_stored_size(path, "labels")  # the valid member passes


def test_stored_sizes_that_match_pass_and_unreadable_headers_are_left_to_numpy(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((3, 4, 4), np.int16))
    arrays.check_stored_size(tmp_path / "c.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    arrays.check_stored_size(tmp_path / "junk.npy")
    with pytest.raises(ValueError, match="junk.npy: not a readable .npy"):
        load_dataset(counts_config(tmp_path / "junk.npy"), seed=0)
    short = hostile_npy_bytes(data=b"")[:-1]  # a header cut short
    (tmp_path / "short.npy").write_bytes(short)
    arrays.check_stored_size(tmp_path / "short.npy")


# --- every validation failure names the file, the index and the value ---------------------------


def bad_array(kind: str) -> tuple[np.ndarray, str]:
    """An array with one kind of defect and the message that must name it."""
    counts = random_counts((20, 4, 4, 1)).astype(np.float64)
    if kind == "negative":
        counts[12, 3, 2, 0] = -2
        return counts.astype(np.int64), r"\[12, 3, 2, 0\] = .*-2.*non-negative"
    if kind == "non_integer":
        counts[5, 1, 0, 0] = 2.5
        return counts, r"\[5, 1, 0, 0\] = .*2\.5.*whole numbers"
    if kind == "nan":
        counts[7, 0, 1, 0] = np.nan
        return counts, r"\[7, 0, 1, 0\] = .*nan.*finite"
    if kind == "inf":
        counts[2, 2, 2, 0] = np.inf
        return counts, r"\[2, 2, 2, 0\] = .*inf.*finite"
    if kind == "above_max":
        counts[9, 3, 3, 0] = 300
        return counts.astype(np.int32), r"\[9, 3, 3, 0\] = .*300.*max count 255"
    if kind == "wrong_rank":
        return counts[:, :, :, 0, None, None], r"shape \(20, 4, 4, 1, 1\) \(rank 5\)"
    if kind == "rank_one":
        return counts[:, 0, 0, 0], r"shape \(20,\) \(rank 1\)"
    if kind == "empty":
        return counts[:0], r"empty.*\(0, 4, 4, 1\)"
    if kind == "not_numbers":
        return counts.astype(str), r"must hold numbers"
    raise AssertionError(kind)


BAD_KINDS = [
    "negative",
    "non_integer",
    "nan",
    "inf",
    "above_max",
    "wrong_rank",
    "rank_one",
    "empty",
    "not_numbers",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_npz_values_name_file_key_index_and_value(tmp_path, kind):
    values, message = bad_array(kind)
    np.savez(tmp_path / "counts.npz", x=values)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'counts.npz'}['x']") + r".*"):
        load_dataset(counts_config(tmp_path / "counts.npz", max_count=255), seed=0)
    with pytest.raises(ValueError, match=message):
        load_dataset(counts_config(tmp_path / "counts.npz", max_count=255), seed=0)


@pytest.mark.parametrize("kind", ["negative", "nan", "non_integer"])
def test_bad_npy_values_name_the_file(tmp_path, kind):
    values, message = bad_array(kind)
    np.save(tmp_path / "counts.npy", values)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "counts.npy")) + message):
        load_dataset(counts_config(tmp_path / "counts.npy"), seed=0)


def test_index_is_reported_in_the_stored_shape(tmp_path):
    counts = np.zeros((5, 6, 6), np.int64)
    counts[4, 5, 1] = -1
    np.save(tmp_path / "c.npy", counts)
    with pytest.raises(ValueError, match=re.escape("c.npy[4, 5, 1] = ")):
        load_dataset(counts_config(tmp_path / "c.npy", num_test=1), seed=0)


def test_test_split_larger_than_the_data(tmp_path):
    np.save(tmp_path / "c.npy", random_counts((10, 4, 4, 1)))
    assert load_dataset(counts_config(tmp_path / "c.npy", num_test=9), seed=0).num_train == 1
    for num_test in (10, 11):
        with pytest.raises(ValueError, match=rf"num_test = {num_test}.*c\.npy.*has 10 examples"):
            load_dataset(counts_config(tmp_path / "c.npy", num_test=num_test), seed=0)


def test_only_the_first_bad_value_is_named_with_a_count_of_the_rest():
    values = np.zeros((3, 2, 2, 1))
    values[1, 0, 1, 0] = -1
    values[2, 1, 1, 0] = -5
    with pytest.raises(ValueError, match=r"x\[1, 0, 1, 0\] = .*-1.*\(1 more such values\)"):
        count_checks.check_count_values(values, source="x")


def test_check_count_values_returns_int32_with_channel_axis():
    counts = count_checks.check_count_values(np.ones((2, 3, 4)), source="x", max_count=1)
    assert counts.dtype == np.int32 and counts.shape == (2, 3, 4, 1)


def test_huge_counts_without_a_declared_max_are_refused():
    values = np.zeros((1, 2, 2, 1), np.int64)
    values[0, 1, 0, 0] = 2**40
    with pytest.raises(ValueError, match=r"x\[0, 1, 0, 0\].*int32"):
        count_checks.check_count_values(values, source="x")
