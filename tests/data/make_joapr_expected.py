"""How tests/data/joapr_noise_expected.json was made: JoAPR's own functions, run OUTSIDE this project.

Not part of the package or of the test run (pytest does not collect it). To regenerate, in a
scratch folder (never inside this repository):

    git clone https://github.com/yunncheng/JoAPR            # used: ffe5fdb
    git clone https://github.com/KaiyangZhou/Dassl.pytorch   # used: c61a1b5
    mkdir -p scratch/dassl/data/datasets && cd scratch
    cp ../JoAPR/datasets/add_noise.py .
    cp ../Dassl.pytorch/dassl/data/datasets/base_dataset.py dassl/data/datasets/
    touch dassl/__init__.py dassl/data/__init__.py dassl/data/datasets/__init__.py gdown.py
    echo 'def check_isfile(p): return True' > dassl/utils.py     # Datum checks that the file exists
    cp /path/to/this/file harness.py && python harness.py joapr_noise_expected.json

It builds two small datasets in CoOp's split-file layout, then for each case calls JoAPR's
generate_fewshot_dataset_with_{symflip,pairflip}_noise on the train list exactly as its
datasets/dtd.py does, followed by Dassl's generate_fewshot_dataset(val, min(shots, 4)).
"""

import json, os, random, sys, platform
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import add_noise
from dassl.data.datasets.base_dataset import Datum, DatasetBase

_choices = random.choices
def choices_py38(population, weights=None, *, cum_weights=None, k=1):
    # Python >= 3.9 refuses all-zero weights even for k = 0; Python 3.8 (JoAPR's era) returns []
    if k == 0:
        return []
    return _choices(population, weights, cum_weights=cum_weights, k=k)
random.choices = choices_py38

def make_dataset(classes, train_counts, n_val, n_test, interleave_seed):
    entries = {"train": [], "val": [], "test": []}
    i = 0
    for key, counts in (("train", train_counts), ("val", [n_val] * len(classes)), ("test", [n_test] * len(classes))):
        rows = []
        for y, (c, n) in enumerate(zip(classes, counts)):
            for _ in range(n):
                rows.append([f"{c}/{c}_{i:04d}.jpg", y, c]); i += 1
        if key == "train" and interleave_seed is not None:
            random.Random(interleave_seed).shuffle(rows)
        entries[key] = rows
    return entries

DATASETS = {
    "interleaved": make_dataset(["banded", "braided", "bubbly", "chequered", "cracked", "dotted", "fibrous"],
                                [40, 33, 25, 38, 29, 21, 36], 6, 3, interleave_seed=1234),
    "grouped": make_dataset(["lined", "marbled", "meshed", "paisley", "pleated"], [30, 18, 27, 34, 23], 5, 2,
                            interleave_seed=None),
}
CASES = {"interleaved": [(16, 0), (16, 4), (16, 8), (16, 12), (8, 2)], "grouped": [(16, 0), (16, 2), (16, 6), (4, 1)]}
IMAGE_DIR = "/data/dtd/images"

out = {"about": "Expected noisy few-shot lists, produced once by JoAPR's own generate_fewshot_dataset_with_*_noise "
                "(yunncheng/JoAPR datasets/add_noise.py) followed by Dassl's generate_fewshot_dataset(val, min(shots, 4)), "
                "called as JoAPR's datasets/dtd.py calls them, outside this project. train rows: "
                "[relative path, given label, true label]; val rows: [relative path, label]. pairflip with 0 wrong "
                "shots ran with Python 3.8's random.choices (k = 0 returns [] whatever the weights).",
       "python": platform.python_version(), "numpy": np.__version__, "datasets": {}, "cases": []}
for name, entries in DATASETS.items():
    out["datasets"][name] = entries
    for kind in ("symflip", "pairflip"):
        fn = getattr(add_noise, f"generate_fewshot_dataset_with_{kind}_noise")
        for seed in (1, 2, 3):
            for shots, fp in CASES[name]:
                train = [Datum(impath=os.path.join(IMAGE_DIR, r), label=int(y), classname=c) for r, y, c in entries["train"]]
                val = [Datum(impath=os.path.join(IMAGE_DIR, r), label=int(y), classname=c) for r, y, c in entries["val"]]
                true = {d.impath: d.label for d in train}
                import io, contextlib
                with contextlib.redirect_stdout(io.StringIO()):
                    noisy = fn(train, num_shots=shots, num_fp=fp, seed=seed)
                    ds = DatasetBase.__new__(DatasetBase)
                    fval = ds.generate_fewshot_dataset(val, num_shots=min(shots, 4))
                rel = lambda p: os.path.relpath(p, IMAGE_DIR)
                out["cases"].append({"dataset": name, "type": kind, "seed": seed, "shots": shots, "wrong": fp,
                                     "train": [[rel(d.impath), d.label, true[d.impath]] for d in noisy],
                                     "val": [[rel(d.impath), d.label] for d in fval]})
json.dump(out, open(sys.argv[1], "w"), indent=None, separators=(",", ":"))
print(len(out["cases"]), "cases")
