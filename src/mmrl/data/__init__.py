"""Datasets, splits, few-shot sampling and preprocessing (docs/protocols.md).

Typical use::

    splits = prepare_splits("dtd", "DATA", shots=16, seed=1, subsample="base")
    ds = ImageDataset(splits.train, build_transform(True, 224), seed=1)
"""
import importlib
from typing import Any

from .core import DEFAULT_TEMPLATE, DatasetSplits, DataError, Datum, MissingDataError, default_cache_dir
from .images import BadImageError, find_bad_images, load_image
from .datasets import (
    ALL_DATASETS,
    BENCHMARK_11,
    BENCHMARKS,
    IMAGENET_VARIANTS,
    canonical_name,
    corruption_options,
    corruption_record,
    dataset_template,
    load_dataset,
    locate,
    prepare_splits,
)
from .splits import fewshot, read_split_file, set_random_seed, subsample_classes, write_split_file

from .verify import VerifyReport, verify, verify_dataset

# torch / torchvision live in the loader and the transforms: imported on first use, so that reading
# datasets and splits (`mmrl data split`, the report, sweep planning) does not import torch
_LAZY = {**{n: ".loader" for n in ("ImageDataset", "build_loader", "default_num_workers", "sample_seed",
                                   "worker_options")},
         **{n: ".transforms" for n in ("CLIP_MEAN", "CLIP_STD", "build_transform", "preprocessing_spec",
                                       "transform_from_spec")}}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALL_DATASETS", "BENCHMARK_11", "BENCHMARKS", "BadImageError", "CLIP_MEAN", "CLIP_STD", "DEFAULT_TEMPLATE",
    "DataError", "DatasetSplits", "Datum", "IMAGENET_VARIANTS", "ImageDataset", "MissingDataError",
    "VerifyReport", "build_loader", "build_transform", "canonical_name", "corruption_options", "corruption_record",
    "dataset_template", "default_cache_dir",
    "default_num_workers", "worker_options",
    "fewshot", "find_bad_images", "load_dataset", "load_image", "locate", "prepare_splits", "preprocessing_spec",
    "read_split_file", "sample_seed", "set_random_seed", "subsample_classes", "transform_from_spec", "verify",
    "verify_dataset", "write_split_file",
]
