"""The project's vocabulary, torch-free: methods, protocols, benchmark datasets, the run-folder
layout and its file names, and the harmonic mean.

Everything that only needs these names (``mmrl report``, sweep planning) imports this module
instead of the model or the config, so it starts without importing torch.
"""
from __future__ import annotations

import re
from pathlib import Path

METHODS: tuple[str, ...] = ("mmrl", "mmrl++")
PROTOCOLS: tuple[str, ...] = ("base2novel", "fewshot", "crossdataset")

# The 11 datasets of the base-to-novel, few-shot and cross-dataset tables, in the papers' order.
DATASETS: tuple[str, ...] = (
    "ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101",
    "FGVCAircraft", "SUN397", "DescribableTextures", "EuroSAT", "UCF101",
)
# Domain-generalisation targets (test-only ImageNet variants).
VARIANTS: tuple[str, ...] = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")
ALL_DATASETS: tuple[str, ...] = DATASETS + VARIANTS
CROSS_SOURCE = "ImageNet"
# Cross-dataset targets (the 10 other datasets) followed by the domain-generalisation ones.
CROSS_TARGETS: tuple[str, ...] = tuple(d for d in DATASETS if d != CROSS_SOURCE) + VARIANTS

# The protocols' grids: the papers average seeds 1, 2, 3.
DEFAULT_SEEDS: tuple[int, ...] = (1, 2, 3)
DEFAULT_SHOTS: dict[str, tuple[int, ...]] = {
    "base2novel": (16,), "fewshot": (1, 2, 4, 8, 16), "crossdataset": (16,),
}

# ---------------------------------------------------------------------------- run folder
# What `mmrl train` writes into a run folder (see mmrl.engine.rundir for the contents).
CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
SPLIT_FILE = "split.json"
ADAPTER_FILE = "adapter.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
RESULTS_FILE = "results.json"
EVAL_DIR = "eval"  # eval/<dataset slug>-<subsample>.json

# What `mmrl reproduce` adds: OUTPUT/<protocol>/<method>/<dataset>/shots_<k>/seed_<s>/ run folders,
# OUTPUT/<protocol>/<method>/grid-<hash>.json (the requested grid), <run folder>.claim beside a run
# folder while a process works on it, and <run folder>/stdout.log (the child's output).
GRID_FILE_GLOB = "grid-*.json"
CLAIM_SUFFIX = ".claim"
STDOUT_LOG = "stdout.log"
SHOTS_PREFIX = "shots_"
SEED_PREFIX = "seed_"


def sweep_run_dir(output: Path | str, protocol: str, method: str, dataset: str, shots: int, seed: int) -> Path:
    """``OUTPUT/<protocol>/<method>/<dataset>/shots_<k>/seed_<s>`` (the sweep layout)."""
    return Path(output) / protocol / method / dataset / f"{SHOTS_PREFIX}{shots}" / f"{SEED_PREFIX}{seed}"


def dataset_slug(name: str) -> str:
    """A file-name-safe form of a dataset name (``folder:/a/b`` -> ``folder_b``-like)."""
    if ":" in name:
        prefix, _, rest = name.partition(":")
        name = f"{prefix}_{Path(rest.rstrip('/')).name or rest}"
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_") or "dataset"


def eval_file_name(dataset: str, subsample: str) -> str:
    """``<dataset slug>-<subsample>.json``: one evaluation under ``RUN_DIR/eval/``."""
    return f"{dataset_slug(dataset)}-{subsample}.json"


# ---------------------------------------------------------------------------- numbers
def harmonic_mean(a: float, b: float) -> float:
    """HM = 2ab / (a + b) (0 when both are 0): the base-to-novel summary of Base and Novel accuracy."""
    return 2 * a * b / (a + b) if a + b > 0 else 0.0
