"""The registered datasets: the registry (data/registry.py, re-exported here) and one module per built-in dataset.

A dataset is one module here: its DatasetSpec (registered when the module is imported), its reader and
label loaders, its download facts (Archive records), its `python -m data.verify` checks and its
`python -m data.synthetic` writer. The generic programs (data/download.py, data/verify.py,
data/synthetic.py) loop over the registered specs and know no dataset by name. Importing this package
registers the built-in datasets:

  pascal_context.py   PASCALContext (ATRC tarball)          --dataset pascal
  nyud.py             NYUD (ATRC tarball)                    --dataset nyud
  cityscapes.py       Cityscapes (official zips, login)      --dataset cityscapes

A plug-in dataset does the same from its own module: `register_dataset(DatasetSpec(...))` (see
docs/extending.md). Modules below the dataset modules (data/tasks.py, data/common.py, data/base.py)
import `data.registry` directly, so that importing them never imports a reader.
"""
from __future__ import annotations

from ..registry import (DATASET_NAMES, Archive, DatasetSpec, cli_names, dataset_names, dataset_spec,  # noqa: F401
                       register_dataset, spec_by_cli_name, spec_view, unregister_dataset)
from . import pascal_context, nyud, cityscapes  # noqa: E402,F401  (each registers its spec)

__all__ = ["DatasetSpec", "Archive", "register_dataset", "unregister_dataset", "dataset_spec", "dataset_names",
           "DATASET_NAMES", "spec_view", "spec_by_cli_name", "cli_names"]
