"""The NYUD-v2 reader's former home; everything now lives in data/datasets/nyud.py.

`data.nyud` IS that module (the same object in sys.modules), so `from data.nyud import NYUD` keeps
working; new code imports data.datasets.nyud.
"""
import sys

from .datasets import nyud as _module

sys.modules[__name__] = _module
