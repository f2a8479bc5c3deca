"""utils/plain.py: the one conversion of configs and metadata to plain Python values."""
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from easydict import EasyDict

from utils.plain import to_plain


def test_containers_paths_and_scalars_become_plain():
    v = EasyDict({"a": (1, 2), "b": OrderedDict(c=[Path("/x"), np.float32(0.5), torch.tensor(3)])})
    out = to_plain(v)
    assert out == {"a": [1, 2], "b": {"c": ["/x", 0.5, 3]}}
    assert type(out) is dict and type(out["b"]) is dict and type(out["a"]) is list
    assert type(out["b"]["c"][1]) is float and type(out["b"]["c"][2]) is int


def test_other_values_are_kept():
    arr = np.zeros(3)
    assert to_plain(arr) is arr and to_plain({1: "x"}) == {1: "x"} and to_plain(None) is None


def test_arrays_mode_gives_json_values():
    """arrays=True (metrics JSON): arrays and tensors become lists, a one-element tensor its number."""
    v = {"a": np.arange(3), "b": torch.tensor([[1.5, 2.0]]), "c": torch.tensor([7]), "d": np.float64(0.25),
         "e": (np.array(2.0), Path("/y"))}
    out = to_plain(v, arrays=True)
    assert out == {"a": [0, 1, 2], "b": [[1.5, 2.0]], "c": 7, "d": 0.25, "e": [2.0, "/y"]}
    assert type(out["c"]) is int and type(out["a"][0]) is int
