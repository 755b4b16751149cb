"""Datasets, splits, few-shot sampling and preprocessing (protocols.md).

Typical use::

    splits = prepare_splits("dtd", "DATA", shots=16, seed=1, subsample="base")
    ds = ImageDataset(splits.train, build_transform(True, 224), seed=1)
"""
from .core import DEFAULT_TEMPLATE, DatasetSplits, DataError, Datum, MissingDataError, default_cache_dir
from .loader import (BadImageError, ImageDataset, build_loader, default_num_workers, find_bad_images, load_image,
                      sample_seed, worker_options)
from .datasets import (
    ALL_DATASETS,
    BENCHMARK_11,
    BENCHMARKS,
    IMAGENET_VARIANTS,
    canonical_name,
    dataset_template,
    load_dataset,
    locate,
    prepare_splits,
)
from .splits import fewshot, read_split_file, set_random_seed, subsample_classes, write_split_file
from .transforms import CLIP_MEAN, CLIP_STD, build_transform, preprocessing_spec, transform_from_spec
from .verify import VerifyReport, verify, verify_dataset

__all__ = [
    "ALL_DATASETS", "BENCHMARK_11", "BENCHMARKS", "BadImageError", "CLIP_MEAN", "CLIP_STD", "DEFAULT_TEMPLATE",
    "DataError", "DatasetSplits", "Datum", "IMAGENET_VARIANTS", "ImageDataset", "MissingDataError",
    "VerifyReport", "build_loader", "build_transform", "canonical_name", "dataset_template", "default_cache_dir",
    "default_num_workers", "worker_options",
    "fewshot", "find_bad_images", "load_dataset", "load_image", "locate", "prepare_splits", "preprocessing_spec",
    "read_split_file", "sample_seed", "set_random_seed", "subsample_classes", "transform_from_spec", "verify",
    "verify_dataset", "write_split_file",
]
