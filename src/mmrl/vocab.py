"""The project's vocabulary, torch-free: protocols, benchmark datasets and THE alias table, the
run-folder layout and its file names, the logit kinds, the harmonic mean and :func:`doc` (how a
setting is documented). The methods are in :mod:`mmrl.methods`.

Everything that only needs these names (``mmrl report``, sweep planning) imports this module
instead of the model or the config, so it starts without importing torch.
"""
from __future__ import annotations

import re
from dataclasses import MISSING, field
from pathlib import Path
from typing import Any


PROTOCOLS: tuple[str, ...] = ("base2novel", "fewshot", "crossdataset")
# Which classes of a dataset: all of them, the base half, the new (novel) half (docs/protocols.md#base-and-novel-classes).
BASE2NOVEL_SUBSAMPLES: tuple[str, ...] = ("base", "new")  # what a base-to-novel run is evaluated on
SUBSAMPLES: tuple[str, ...] = ("all",) + BASE2NOVEL_SUBSAMPLES

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

# Each benchmark's folder under the data root (CoOp's DATASETS.md layout).
DATASET_FOLDERS: dict[str, str] = {
    "ImageNet": "imagenet", "Caltech101": "caltech-101", "OxfordPets": "oxford_pets",
    "StanfordCars": "stanford_cars", "OxfordFlowers": "oxford_flowers", "Food101": "food-101",
    "FGVCAircraft": "fgvc_aircraft", "SUN397": "sun397", "DescribableTextures": "dtd", "EuroSAT": "eurosat",
    "UCF101": "ucf101", "ImageNetV2": "imagenetv2", "ImageNetSketch": "imagenet-sketch",
    "ImageNetA": "imagenet-adversarial", "ImageNetR": "imagenet-rendition",
}
# Short names users type, besides the canonical names and the folder names. THE alias table:
# every command that takes a dataset name resolves it with :func:`canonical_benchmark`.
DATASET_ALIASES: dict[str, str] = {
    "in1k": "ImageNet", "imagenet1k": "ImageNet", "caltech": "Caltech101", "pets": "OxfordPets",
    "cars": "StanfordCars", "flowers": "OxfordFlowers", "flowers102": "OxfordFlowers", "food": "Food101",
    "aircraft": "FGVCAircraft", "fgvc": "FGVCAircraft", "sun": "SUN397", "textures": "DescribableTextures",
    "ucf": "UCF101", "sketch": "ImageNetSketch",
}


def _fold(name: str) -> str:
    """Case, '-', '_' and spaces do not matter in dataset names."""
    return re.sub(r"[\s_\-]", "", name).lower()


_BENCHMARK_NAMES: dict[str, str] = {**{_fold(n): n for n in ALL_DATASETS},
                                    **{_fold(f): n for n, f in DATASET_FOLDERS.items()},
                                    **{_fold(a): n for a, n in DATASET_ALIASES.items()}}


def canonical_benchmark(name: str) -> str | None:
    """The canonical name of a benchmark given that name, its folder name or an alias
    (``dtd``, ``textures``, ``imagenet-a``, ``in1k`` ...); None when ``name`` is none of them."""
    return _BENCHMARK_NAMES.get(_fold(name))


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
# A run on half the classes of a user dataset also records the other half as the folder was then,
# so that evaluating those classes later can say which images were added or removed since.
OTHER_SPLIT_FILE = "split-other.json"
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
# `mmrl reproduce --vary`: OUTPUT/ablation/<point>/ holds the sweep layout of one grid point
ABLATION_DIR = "ablation"
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


def eval_file_name(dataset: str, subsample: str, logits: str = "auto") -> str:
    """One evaluation under ``RUN_DIR/eval/``: ``<dataset slug>-<subsample>.json`` with the protocol's
    logits (``auto``), ``<dataset slug>-<subsample>-<kind>.json`` with logits chosen explicitly
    (an evaluation-only ablation never overwrites the protocol's own result)."""
    suffix = "" if logits == "auto" else f"-{logits}"
    return f"{dataset_slug(dataset)}-{subsample}{suffix}.json"


# ---------------------------------------------------------------------------- decoupled inference
# The logits a model gives (docs/method.md#decoupled-inference): from the class token, from the representation tokens, and
# their alpha-blend. ``auto`` = the protocol's choice (:func:`auto_logits`).
LOGIT_KINDS: tuple[str, ...] = ("fused", "class", "rep")
LOGIT_CHOICES: tuple[str, ...] = ("auto",) + LOGIT_KINDS
LOGIT_NAMES: dict[str, str] = {"fused": "fused", "class": "class token only", "rep": "representation tokens only"}


def auto_logits(trained_dataset: str, trained_subsample: str, dataset: str, subsample: str) -> str:
    """Decoupled inference (docs/method.md#decoupled-inference): ``fused`` on the classes the model was trained on (the same
    dataset, and its training subsample or a part of all the classes it was trained on), ``class``
    on anything else (novel classes, other datasets). Dataset names must be canonical."""
    if dataset == trained_dataset and (subsample == trained_subsample or trained_subsample == "all"):
        return "fused"
    return "class"


# ---------------------------------------------------------------------------- numbers
def harmonic_mean(a: float, b: float) -> float:
    """HM = 2ab / (a + b) (0 when both are 0): the base-to-novel summary of Base and Novel accuracy."""
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


# ---------------------------------------------------------------------------- documented settings
def doc(text: str, default: Any = MISSING, *, factory: Any = MISSING) -> Any:
    """A dataclass field documented where it is declared: ``x: int = doc("meaning", 3)``.
    The text is the key's ONE documentation (config.yaml comments, --help, the README table)."""
    return field(default=default, default_factory=factory, metadata={"doc": text})
