"""The dataset registry: what each dataset is, where it lives under the data root, and who reads it.

A dataset is one `DatasetSpec`, registered under the name configs use (`train_db_name`). Every dataset
fact that is not a task (folder name, reader, default crop size, edge weight, boundary tolerance, the
release's split sizes, how to get it, how to check it, how to fake it) lives in that object, so adding a
dataset is `register_dataset(DatasetSpec(...))` plus `data.tasks.register_task(task, name)` for each of
its tasks; no library file changes. The built-in datasets each live in one module of the data.datasets
package (data/datasets/pascal_context.py, nyud.py, cityscapes.py), which registers its spec on import;
the package's __init__ imports them and re-exports this module's names (`from data.datasets import
DatasetSpec` is the usual spelling).

Public API:
  DatasetSpec                    one dataset's facts (see its docstring)
  register_dataset(spec, replace=False) / unregister_dataset(name)
  dataset_spec(name)             the spec, or a DatasetError listing the known names
  dataset_names()                registered names, in registration order (a snapshot)
  DATASET_NAMES                  the same names as a live sequence (config `choices` read it at check time)
  spec_view(field)               a live read-only {name: spec.<field>} mapping, for older table-style code
  Archive                        one release file of a dataset (DatasetSpec.archives, data.download)
  spec_by_cli_name(short) / cli_names(need=None)   the commands' --dataset values

Why this module imports nothing but data/errors.py: the task table builds compatibility views from it
(data/tasks.py) and the file helpers read it (data/common.py), so it must sit below both (and below the
dataset modules, which use both). Readers, verify checks and synthetic writers may therefore be given as
"module:attr" references, resolved only by the program that uses them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import DatasetError

__all__ = ["DatasetSpec", "Archive", "register_dataset", "unregister_dataset", "dataset_spec", "dataset_names",
           "DATASET_NAMES", "spec_view", "spec_by_cli_name", "cli_names"]


@dataclass(frozen=True)
class Archive:
    """One file of a dataset's release, as `python -m data.download` fetches or unpacks it.

    file: the archive's file name (a .tar.gz/.tar/.zip); sources: ((url, who publishes the link), ...)
    tried in order, empty when the file sits behind a login (then only --archive FILE installs it);
    what: a few words on what it holds (help text).
    """

    file: str
    sources: tuple = ()
    what: str = ""


@dataclass(frozen=True, eq=False)
class DatasetSpec:
    """Everything the framework needs to know about one dataset, apart from its tasks.

    name: the name configs use (`train_db_name`); also the key of its tasks in data/tasks.py.
    folder: the dataset's folder under the data root (`<db_root>/<folder>/`).
    reader: the reader class, or a "package.module:Class" reference imported on use; it is built as
      reader(root, split, tasks, transform=..., **extra) with root the dataset folder <db_root>/<folder>
      (data.build_dataset), and is normally a data.base.MultiTaskDataset subclass whose `db_name` is
      `name` (data.common.resolve_dataset_dir accepts that folder as well as the db_root above it).
    crop_size: default network input (H, W) when the config's crop_size is null (= TRAIN/TEST.SCALE).
    edge_w: default positive weight of the balanced edge loss (config task_dictionary.edge_w wins).
    edge_max_dist: boundary matching tolerance for odsF, as a fraction of the image diagonal.
      The two edge defaults are the PASCAL-Context values; they matter only to datasets with an edge task.
    split_sizes: {split: image count} of the real release, e.g. for tools that check a full export.
    description: one line saying what the dataset is; download: how to get it; layout: a short tree of
      the expected files. All three are shown when the folder is missing (data.common.missing_root_message).
    synthetic: the `python -m data.synthetic --dataset` name that writes a look-alike set, or None.
    reader_config: (reader keyword, config key) pairs: build_dataset passes cfg[key] as that keyword
      when the config sets it (PASCALContext: the label cache folder).
    cli_name: the `--dataset` value of data.download / data.verify (default: `synthetic`, else the name
      in lower case).
    archives: the release's files (Archive records) for data.download; () = the command cannot get it.
    login_hint: for archives without public sources, where to get them (shown by data.download).
    checks: the data.checks.DatasetChecks object (or "module:attr") that tells data.verify where each
      sample's files are and how to judge one file; None = the dataset cannot be verified.
    synthesizer: the data.synthetic_base.SyntheticWriter object (or "module:attr") that renders and
      writes a look-alike set in the real layout; None = no synthetic set.
    """

    name: str
    folder: str
    reader: Any
    crop_size: tuple
    edge_w: float = 0.95
    edge_max_dist: float = 0.0075
    split_sizes: Mapping = field(default_factory=dict)
    description: str = ""
    download: str = ""
    layout: str = ""
    synthetic: str | None = None
    reader_config: tuple = ()
    cli_name: str | None = None
    archives: tuple = ()
    login_hint: str = ""
    checks: Any = None
    synthesizer: Any = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"DatasetSpec.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.folder, str) or not self.folder or "/" in self.folder or "\\" in self.folder:
            raise ValueError(f"dataset {self.name}: folder must be one folder name (no path separators), "
                             f"got {self.folder!r}")
        if self.reader is None or not (isinstance(self.reader, str) or callable(self.reader)):
            raise ValueError(f"dataset {self.name}: reader must be a class or a 'module:Class' reference")
        size = tuple(self.crop_size)
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError(f"dataset {self.name}: crop_size must be (H, W) positive integers, got {self.crop_size!r}")
        if not 0.0 < float(self.edge_w) < 1.0 or float(self.edge_max_dist) <= 0.0:
            raise ValueError(f"dataset {self.name}: need 0 < edge_w < 1 and edge_max_dist > 0, "
                             f"got {self.edge_w!r} and {self.edge_max_dist!r}")
        object.__setattr__(self, "crop_size", size)
        object.__setattr__(self, "split_sizes", MappingProxyType({str(k): int(v) for k, v in
                                                                  dict(self.split_sizes).items()}))
        object.__setattr__(self, "reader_config", tuple(tuple(p) for p in self.reader_config))
        cli = self.cli_name or self.synthetic or self.name.lower()
        if not isinstance(cli, str) or not cli or not cli.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"dataset {self.name}: cli_name must be a short word, got {cli!r}")
        object.__setattr__(self, "cli_name", cli)
        if not all(isinstance(a, Archive) for a in self.archives):
            raise ValueError(f"dataset {self.name}: archives must be data.datasets.Archive records")
        object.__setattr__(self, "archives", tuple(self.archives))


_REGISTRY: dict = {}


def register_dataset(spec: DatasetSpec, replace: bool = False) -> DatasetSpec:
    """Make `spec` known under spec.name; registering another spec under a taken name raises unless
    replace=True (two definitions of one name would silently change where data is read from)."""
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"register_dataset expects a data.datasets.DatasetSpec, got {type(spec).__name__}")
    old = _REGISTRY.get(spec.name)
    if old is not None and old is not spec and not replace:
        raise ValueError(f"dataset {spec.name!r} is already registered; pass replace=True to redefine it")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_dataset(name: str) -> None:
    """Forget a dataset (tests and plug-ins that register temporarily); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def dataset_names() -> tuple:
    return tuple(_REGISTRY)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of a registered dataset; an unknown name is a DatasetError listing the known ones."""
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(_REGISTRY)} "
                           f"(a new one must be registered first with data.datasets.register_dataset)")
    return spec


class _LiveNames(Sequence):
    """The registered names, read afresh on every use (so a config check sees plug-ins registered after
    import)."""

    def __getitem__(self, index):
        return tuple(_REGISTRY)[index]

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in _REGISTRY

    def __repr__(self) -> str:
        return f"DATASET_NAMES{tuple(_REGISTRY)!r}"


DATASET_NAMES = _LiveNames()


class _SpecFieldView(Mapping):
    """{dataset name: getattr(spec, field)}, live and read-only."""

    def __init__(self, attr: str):
        self._attr = attr

    def __getitem__(self, name):
        if name not in _REGISTRY:
            raise KeyError(name)
        return getattr(_REGISTRY[name], self._attr)

    def __iter__(self):
        return iter(tuple(_REGISTRY))

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return f"spec_view({self._attr!r}){dict(self)!r}"


def spec_view(attr: str) -> Mapping:
    """A live read-only mapping of one DatasetSpec field per registered dataset (e.g. "folder")."""
    if attr not in DatasetSpec.__dataclass_fields__:
        raise ValueError(f"DatasetSpec has no field {attr!r}; fields: {', '.join(DatasetSpec.__dataclass_fields__)}")
    return _SpecFieldView(attr)


def spec_by_cli_name(short: str) -> DatasetSpec:
    """The spec whose cli_name is `short` (the commands' --dataset value); DatasetError listing them."""
    for spec in _REGISTRY.values():
        if spec.cli_name == short:
            return spec
    raise DatasetError(f"unknown --dataset {short!r}; known: {', '.join(s.cli_name for s in _REGISTRY.values())}")


def cli_names(need: str | None = None) -> tuple:
    """The cli_name of every registered dataset (with `need`: only those whose spec field `need` is set,
    e.g. "checks" for data.verify), in registration order."""
    return tuple(s.cli_name for s in _REGISTRY.values() if need is None or getattr(s, need))
