"""Datasets for the accuracy experiment, as flat float32 features in [0, 1] and int64 labels.

``digits``         scikit-learn's bundled 8x8 digits (1797 images, no download): a fixed
                   stratified split of 1347 training and 450 test images (``random_state=0``),
                   pixels divided by 16.
``mnist``          the standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``fashion-mnist``  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, plain or ``.gz``) in
                   ``data_dir``, parsed with numpy from their headers; pixels divided by 255.
``cifar10``        the *binary* version (``cifar-10-batches-bin``: ``data_batch_1.bin`` ..
                   ``data_batch_5.bin``, ``test_batch.bin``; one label byte and 3072 pixel bytes per
                   record, channel-major), divided by 255. The pickled Python version is never read.

Nothing is ever downloaded: a missing file raises :class:`DatasetError` naming the file and
where it was expected.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from planner.errors import PlannerError

from planner.experiments import DATASETS
#: flattened input size of each dataset (the first size of ``--arch``)
FEATURES = {"digits": 64, "mnist": 784, "fashion-mnist": 784, "cifar10": 3072}
CLASSES = {"digits": 10, "mnist": 10, "fashion-mnist": 10, "cifar10": 10}
DIGITS_TEST_SIZE = 450
DIGITS_SPLIT_SEED = 0

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_UBYTE = 0x08
CIFAR_DIR = "cifar-10-batches-bin"
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
CIFAR_RECORD = 1 + 3 * 32 * 32
_SOURCE = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


class DatasetError(PlannerError, ValueError):
    """A dataset is unknown, missing from --data-dir, or its files are corrupt."""


def load_dataset(name: str = "digits", data_dir: str | os.PathLike | None = None):
    """``(X_train, y_train, X_test, y_test)``: float32 arrays of shape (N, features) in [0, 1]
    and int64 label vectors. ``data_dir`` holds the files of ``mnist``, ``fashion-mnist`` and
    ``cifar10``; ``digits`` is bundled with scikit-learn and ignores it."""
    key = str(name).strip().lower()
    if key == "digits":
        return _digits()
    if key in ("mnist", "fashion-mnist"):
        return _idx_dataset(key, _need_dir(key, data_dir))
    if key == "cifar10":
        return _cifar10(_need_dir(key, data_dir))
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _need_dir(name: str, data_dir) -> Path:
    if data_dir is None:
        raise DatasetError(f"{name}: give --data-dir, the directory holding its files (nothing is downloaded)")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{name}: data directory {path} does not exist")
    return path


# ------------------------------------------------------------------------------ digits


def _digits():
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:  # pragma: no cover - scikit-learn is in the test extra
        raise DatasetError("digits needs scikit-learn: pip install 'sparsity-planner[data]'") from None
    bunch = load_digits()
    X = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).reshape(len(bunch.data), -1)
    y = np.asarray(bunch.target, dtype=np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=DIGITS_TEST_SIZE, stratify=y,
                                              random_state=DIGITS_SPLIT_SEED)
    return (np.ascontiguousarray(X_tr), np.ascontiguousarray(y_tr),
            np.ascontiguousarray(X_te), np.ascontiguousarray(y_te))


# ------------------------------------------------------------------------------ IDX (MNIST)


def _find(name: str, directory: Path, filename: str, hint: str) -> Path:
    for candidate in (directory / filename, directory / (filename + ".gz")):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{name}: missing {filename}(.gz) in {directory} ({hint})")


def _read_bytes(name: str, path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{name}: cannot read {path}: {exc}") from None


def parse_idx(data: bytes, *, ndim: int, what: str = "IDX file") -> np.ndarray:
    """An unsigned-byte IDX array (magic ``00 00 08 ndim``, then ndim big-endian uint32 sizes)."""
    if len(data) < 4:
        raise DatasetError(f"{what}: too short for an IDX header ({len(data)} bytes)")
    zero, dtype_code, dims = int.from_bytes(data[:2], "big"), data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    if zero != 0 or dtype_code != IDX_UBYTE or dims != ndim:
        raise DatasetError(f"{what}: bad magic number 0x{magic:08x} (expected 0x{IDX_UBYTE << 8 | ndim:08x}: "
                           f"unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{what}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != count:
        raise DatasetError(f"{what}: header says {'x'.join(map(str, shape))} = {count} bytes of data, "
                           f"the file holds {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=header).reshape(shape)


def _idx_dataset(name: str, directory: Path):
    hint = f"download {_SOURCE[name]}'s IDX files there"
    paths = {k: _find(name, directory, f, hint) for k, f in IDX_FILES.items()}
    arrays = {}
    for key, path in paths.items():
        ndim = 3 if key.endswith("images") else 1
        arrays[key] = parse_idx(_read_bytes(name, path), ndim=ndim, what=f"{name}: {path}")
    out = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise DatasetError(f"{name}: {paths[split + '_images'].name} has {len(images)} images but "
                               f"{paths[split + '_labels'].name} has {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise DatasetError(f"{name}: {paths[split + '_labels']} holds label {int(labels.max())}, expected 0..9")
        X = images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)
        out += [X, labels.astype(np.int64)]
    return tuple(out)


# ------------------------------------------------------------------------------ CIFAR-10


def parse_cifar_batch(data: bytes, what: str = "CIFAR-10 batch"):
    """(images uint8 (N, 3072), labels uint8 (N,)) from a binary CIFAR-10 batch."""
    if len(data) == 0 or len(data) % CIFAR_RECORD:
        raise DatasetError(f"{what}: {len(data)} bytes is not a whole number of {CIFAR_RECORD}-byte records "
                           "(1 label byte + 3072 pixel bytes)")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        raise DatasetError(f"{what}: label byte {int(labels.max())} outside 0..9 (not the binary version?)")
    return records[:, 1:], labels


def _cifar10(directory: Path):
    base = directory / CIFAR_DIR if (directory / CIFAR_DIR).is_dir() else directory
    hint = "unpack CIFAR-10's binary version, cifar-10-binary.tar.gz, there"
    out = []
    for files in (CIFAR_TRAIN, (CIFAR_TEST,)):
        xs, ys = [], []
        for f in files:
            path = base / f
            if not path.is_file():
                raise DatasetError(f"cifar10: missing {f} in {base} ({hint})")
            x, y = parse_cifar_batch(_read_bytes("cifar10", path), what=f"cifar10: {path}")
            xs.append(x)
            ys.append(y)
        out += [np.concatenate(xs).astype(np.float32) / np.float32(255.0), np.concatenate(ys).astype(np.int64)]
    return tuple(out)
