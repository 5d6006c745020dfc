"""Dataset loaders: bundled digits, IDX files (plain and gzip) and CIFAR-10 binary batches."""

import gzip
import struct

import numpy as np
import pytest

from planner.experiments.data import CIFAR_RECORD, DatasetError, load_dataset, parse_idx
from planner.errors import PlannerError


def test_digits_shapes_ranges_and_split():
    X_tr, y_tr, X_te, y_te = load_dataset("digits")
    assert X_tr.shape == (1347, 64) and X_te.shape == (450, 64)
    assert X_tr.dtype == np.float32 and X_te.dtype == np.float32
    assert y_tr.dtype == np.int64 and y_te.dtype == np.int64
    assert y_tr.shape == (1347,) and y_te.shape == (450,)
    for X in (X_tr, X_te):
        assert X.min() == 0.0 and X.max() == 1.0
    assert set(np.unique(y_tr)) == set(range(10)) == set(np.unique(y_te))
    # stratified: every class's test share is its share of the whole, to within one image
    total = np.bincount(np.concatenate([y_tr, y_te]), minlength=10)
    assert np.all(np.abs(np.bincount(y_te, minlength=10) - total * 450 / 1797) < 1)
    # fixed split: the same arrays every time, and data_dir is ignored
    again = load_dataset("digits", data_dir="/nonexistent")
    for a, b in zip((X_tr, y_tr, X_te, y_te), again):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------ IDX


def _idx(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    return head + array.tobytes()


def _write(path, data: bytes, gz: bool):
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _mnist_dir(tmp_path, gz_train=True, gz_test=False):
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    train_x[0, 0, 0], train_x[0, 0, 1] = 255, 0
    train_y = np.array([0, 9, 3, 3, 7], dtype=np.uint8)
    test_x = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    test_y = np.array([1, 2, 5], dtype=np.uint8)
    _write(tmp_path / "train-images-idx3-ubyte", _idx(train_x), gz_train)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx(train_y), gz_train)
    _write(tmp_path / "t10k-images-idx3-ubyte", _idx(test_x), gz_test)
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx(test_y), gz_test)
    return train_x, train_y, test_x, test_y


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz_train,gz_test", [(True, False), (False, True), (False, False)])
def test_idx_files_parse(tmp_path, name, gz_train, gz_test):
    train_x, train_y, test_x, test_y = _mnist_dir(tmp_path, gz_train, gz_test)
    X_tr, y_tr, X_te, y_te = load_dataset(name, tmp_path)
    assert X_tr.shape == (5, 784) and X_te.shape == (3, 784)
    assert X_tr.dtype == np.float32 and y_tr.dtype == np.int64
    np.testing.assert_allclose(X_tr, train_x.reshape(5, -1) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(X_te, test_x.reshape(3, -1) / 255.0, rtol=1e-6)
    assert X_tr[0, 0] == 1.0 and X_tr[0, 1] == 0.0
    assert y_tr.tolist() == [0, 9, 3, 3, 7] and y_te.tolist() == [1, 2, 5]


def test_parse_idx_reads_the_header():
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(_idx(arr), ndim=3), arr)


def test_missing_idx_file_names_the_file_and_directory(tmp_path):
    _mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", tmp_path)
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte(.gz)" in msg and str(tmp_path) in msg and "\n" not in msg
    with pytest.raises(DatasetError, match="Fashion-MNIST"):
        load_dataset("fashion-mnist", tmp_path)


def test_bad_magic_number_is_refused(tmp_path):
    _mnist_dir(tmp_path, gz_train=False)
    data = bytearray((tmp_path / "train-images-idx3-ubyte").read_bytes())
    data[2] = 0x0D  # float data
    (tmp_path / "train-images-idx3-ubyte").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte: bad magic number 0x00000d03"):
        load_dataset("mnist", tmp_path)
    # a label file where an image file belongs: wrong number of dimensions
    (tmp_path / "train-images-idx3-ubyte").write_bytes((tmp_path / "train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(DatasetError, match="bad magic number 0x00000801"):
        load_dataset("mnist", tmp_path)


def test_truncated_or_mismatched_idx_files_are_refused(tmp_path):
    _mnist_dir(tmp_path, gz_train=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DatasetError, match="header says 5x28x28"):
        load_dataset("mnist", tmp_path)
    _mnist_dir(tmp_path, gz_train=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(np.array([1, 2], dtype=np.uint8)))
    with pytest.raises(DatasetError, match="5 images but .* 2 labels"):
        load_dataset("mnist", tmp_path)
    _mnist_dir(tmp_path, gz_train=False)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DatasetError, match=r"cannot read .*t10k-images-idx3-ubyte\.gz"):
        load_dataset("mnist", tmp_path)


def test_dataset_directory_errors(tmp_path):
    with pytest.raises(DatasetError, match="--data-dir"):
        load_dataset("mnist")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nope")
    with pytest.raises(DatasetError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")
    assert issubclass(DatasetError, PlannerError)


# ------------------------------------------------------------------------------ CIFAR-10


def _cifar_batch(rng, n):
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    records = np.concatenate([labels[:, None], pixels], axis=1)
    return labels, pixels, records.tobytes()


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_binary_batches_parse(tmp_path, nested):
    rng = np.random.default_rng(1)
    base = tmp_path / "cifar-10-batches-bin" if nested else tmp_path
    base.mkdir(exist_ok=True)
    train_labels, train_pixels = [], []
    for i in range(1, 6):
        labels, pixels, data = _cifar_batch(rng, 2)
        (base / f"data_batch_{i}.bin").write_bytes(data)
        train_labels.append(labels)
        train_pixels.append(pixels)
    test_labels, test_pixels, data = _cifar_batch(rng, 3)
    (base / "test_batch.bin").write_bytes(data)
    X_tr, y_tr, X_te, y_te = load_dataset("cifar10", tmp_path)
    assert X_tr.shape == (10, 3072) and X_te.shape == (3, 3072)
    assert X_tr.dtype == np.float32 and y_te.dtype == np.int64
    np.testing.assert_array_equal(y_tr, np.concatenate(train_labels))
    np.testing.assert_array_equal(y_te, test_labels)
    np.testing.assert_allclose(X_tr, np.concatenate(train_pixels) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(X_te, test_pixels / 255.0, rtol=1e-6)
    assert 0.0 <= X_tr.min() and X_tr.max() <= 1.0


def test_cifar10_missing_and_corrupt_files(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(1, 6):
        (tmp_path / f"data_batch_{i}.bin").write_bytes(_cifar_batch(rng, 1)[2])
    with pytest.raises(DatasetError, match=r"missing test_batch\.bin in .*binary version"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(b"\x00" * (CIFAR_RECORD + 5))
    with pytest.raises(DatasetError, match="test_batch.bin: .* not a whole number"):
        load_dataset("cifar10", tmp_path)
    record = bytearray(_cifar_batch(rng, 1)[2])
    record[0] = 42  # a label byte outside 0..9
    (tmp_path / "test_batch.bin").write_bytes(bytes(record))
    with pytest.raises(DatasetError, match="label byte 42"):
        load_dataset("cifar10", tmp_path)
