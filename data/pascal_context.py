"""The PASCAL-Context reader's former home; everything now lives in data/datasets/pascal_context.py.

`data.pascal_context` IS that module (the same object in sys.modules), so older imports
(`from data.pascal_context import PASCALContext`) and monkeypatching through this name keep working;
new code imports data.datasets.pascal_context.
"""
import sys

from .datasets import pascal_context as _module

sys.modules[__name__] = _module
