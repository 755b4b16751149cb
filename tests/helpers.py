"""Shared test helpers: a tiny CLIP on disk (OpenAI format) and tiny datasets.

Everything here is small enough for CPU tests on 2 shared cores:

* :func:`write_tiny_clip` -- a randomly initialised open_clip ``CLIP`` (3 + 3 blocks, width
  64, 32x32 images, patch 8) saved with ``torch.save(state_dict)``; ``--backbone PATH``
  loads it like an OpenAI ``.pt`` file (heads = width // 64 = 1, as the OpenAI loader infers).
* :func:`make_benchmark_dataset` -- a benchmark dataset (DTD, EuroSAT, ... by Dassl name)
  in the CoOp layout under a data root, with its ``split_zhou_<Name>.json``.
* :func:`make_folder_dataset` -- a ``folder:PATH`` dataset (``PATH/<class>/<image>``).
* :func:`write_official_checkpoint` -- a fake authors' Dassl checkpoint (official tensor
  names) built from our adapter tensors, for convert-official tests.
* :func:`tiny_method_overrides` / :func:`tiny_train_argv` -- ``--set`` items that make
  MMRL/MMRL++ fit the tiny CLIP and train in a second or two.

Images are class-coloured squares with noise, so a few steps of training can learn them.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

TINY_CLIP = dict(embed_dim=32, vision_layers=3, vision_width=64, patch_size=8, image_size=32,
                 text_layers=3, text_width=64, text_heads=1, context_length=77, vocab_size=49408)

DTD_CLASSES = ("banded", "blotchy", "braided", "bubbly")
EUROSAT_FOLDERS = {"AnnualCrop": "Annual Crop Land", "Forest": "Forest", "Highway": "Highway or Road",
                   "River": "River"}


def write_tiny_clip(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random CLIP as an OpenAI-format state dict (``torch.save``) and return its path.

    Architecture: ViT with 3 blocks of width 64 (1 head), patch 8 on 32x32 images; text
    transformer with 3 blocks of width 64 (1 head), context 77, CLIP's BPE vocabulary;
    joint embedding 32; QuickGELU. The caller's RNG state is left untouched.
    """
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    c = TINY_CLIP
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(embed_dim=c["embed_dim"],
                     vision_cfg=CLIPVisionCfg(layers=c["vision_layers"], width=c["vision_width"],
                                              patch_size=c["patch_size"], image_size=c["image_size"],
                                              head_width=64),
                     text_cfg=CLIPTextCfg(context_length=c["context_length"], vocab_size=c["vocab_size"],
                                          width=c["text_width"], heads=c["text_heads"], layers=c["text_layers"]),
                     quick_gelu=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def _palette(n: int) -> list[tuple[int, int, int]]:
    """n well-separated RGB colours."""
    import colorsys

    return [tuple(int(255 * v) for v in colorsys.hsv_to_rgb(i / n, 0.8, 0.9)) for i in range(n)]


def make_image(path: str | Path, color: Sequence[int], seed: int, size: int = 32) -> Path:
    """A size x size PNG-or-JPEG: noisy background in ``color`` plus a random darker square."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.asarray(color, dtype=np.int16)[None, None, :]
                  + rng.integers(-40, 41, size=(size, size, 3)), 0, 255)
    s = size // 3
    x, y = rng.integers(0, size - s, size=2)
    arr[y:y + s, x:x + s] = arr[y:y + s, x:x + s] // 2
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def _stable_seed(*parts: object) -> int:
    """A seed from the parts that is the same in every process (unlike hash() of strings)."""
    return zlib.crc32(repr(parts).encode())


def _split_counts(per_class: int) -> tuple[int, int, int]:
    n_val = max(1, round(per_class * 0.2))
    n_test = max(1, round(per_class * 0.3))
    return per_class - n_val - n_test, n_val, n_test


def make_benchmark_dataset(root: str | Path, name: str = "DescribableTextures", *, per_class: int = 6,
                           classes: Sequence[str] | None = None, size: int = 32, seed: int = 0,
                           with_split_file: bool = True) -> Path:
    """Create a tiny benchmark dataset in the CoOp layout under ``root``; returns its folder.

    Supported names: ``DescribableTextures`` (``dtd/images/<class>/``) and ``EuroSAT``
    (``eurosat/2750/<Folder>/``, class names renamed as CoOp does) -- any benchmark with a
    ``split_zhou_<Name>.json`` works when its folder/image_subdir are known to
    ``mmrl.data.BENCHMARKS``. Default classes: 4 (DTD names / EuroSAT folders). Each class
    has ``per_class`` images split train/val/test about 50/20/30 in
    ``split_zhou_<Name>.json`` (``[relpath, label, classname]`` lists).
    """
    from mmrl.data.datasets import BENCHMARKS

    b = BENCHMARKS[name]
    if classes is None:
        classes = list(EUROSAT_FOLDERS) if name == "EuroSAT" else list(DTD_CLASSES)
    folder = Path(root) / b.folder
    image_dir = folder / b.image_subdir if b.image_subdir else folder
    n_train, n_val, _ = _split_counts(per_class)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, (cls, color) in enumerate(zip(classes, _palette(len(classes)))):
        classname = EUROSAT_FOLDERS.get(cls, cls) if name == "EuroSAT" else cls
        for i in range(per_class):
            rel = f"{cls}/{cls}_{i:04d}.png"
            make_image(image_dir / rel, color, seed=_stable_seed(seed, name, cls, i), size=size)
            part = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            split[part].append([rel, label, classname])
    if with_split_file:
        (folder / b.split_file).write_text(json.dumps(split), encoding="utf-8")
    return folder


def make_folder_dataset(path: str | Path, classes: Sequence[str] = ("cat", "dog", "bird"), *, per_class: int = 6,
                        size: int = 32, seed: int = 0) -> Path:
    """Create a ``folder:PATH`` dataset: ``PATH/<class>/<class>_<i>.png``; returns PATH.

    The data layer splits it 50/20/30 per class by a hash of each path (at least 4 images per class).
    """
    path = Path(path)
    for cls, color in zip(classes, _palette(len(classes))):
        for i in range(per_class):
            make_image(path / cls / f"{cls}_{i:04d}.png", color, seed=_stable_seed(seed, cls, i), size=size)
    return path


def tiny_method_overrides(method: str = "mmrl") -> list[str]:
    """``--set`` items fitting MMRL/MMRL++ to the tiny CLIP (J = 2 of 3 blocks, K = 2, d_r = 16)
    and making a run fast (2 epochs, batch 4, no workers, eval batch 16)."""
    items = ["method.first_rep_block=2", "method.n_rep_tokens=2", "method.rep_dim=16", "optim.epochs=2",
             "optim.batch_size=4", "data.num_workers=0", "eval.batch_size=16"]
    if method == "mmrl++":
        items += ["method.proj_lora_rank=4", "method.aligner_lora_rank=2"]
    return items


def tiny_train_argv(clip: str | Path, root: str | Path, output: str | Path, *, method: str = "mmrl",
                    dataset: str = "dtd", protocol: str = "fewshot", shots: int = 2, seed: int = 1,
                    extra: Sequence[str] = ()) -> list[str]:
    """argv for ``mmrl.cli.main`` running ``mmrl train`` with the tiny CLIP on a tiny dataset."""
    argv = ["train", "--method", method, "--dataset", dataset, "--protocol", protocol, "--root", str(root),
            "--backbone", str(clip), "--shots", str(shots), "--seed", str(seed), "--output", str(output),
            "--progress", "lines"]
    for item in tiny_method_overrides(method):
        argv += ["--set", item]
    return argv + list(extra)


# --------------------------------------------------------------------------- official checkpoints
def official_state_dict(tensors: dict[str, torch.Tensor], method: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """Our adapter names -> the authors' names (inverse of mmrl.models.official's mapping)."""
    import re

    out = {}
    for name, t in tensors.items():
        if name == "rep_tokens":
            key = "representation_learner.compound_rep_tokens"
        elif method == "mmrl":
            m = re.fullmatch(r"(vision|text)_aligner\.(\d+)\.(weight|bias)", name)
            if m:
                side = "r2vproj" if m.group(1) == "vision" else "r2tproj"
                key = f"representation_learner.compound_rep_tokens_{side}.{m.group(2)}.{m.group(3)}"
            elif name == "proj_rep":
                key = "image_encoder.proj_rep"
            else:
                raise KeyError(name)
        else:
            m = re.fullmatch(r"(vision|text)_aligner\.weight", name)
            m2 = re.fullmatch(r"(vision|text)_aligner\.(A|B|bias)\.(\d+)", name)
            if m:
                key = f"representation_learner.srra_r2{m.group(1)[0]}proj.weight"
            elif m2:
                key = f"representation_learner.srra_r2{m2.group(1)[0]}proj.srra.{m2.group(3)}.{m2.group(2)}"
            elif name in ("proj_lora_A", "proj_lora_B"):
                key = f"image_encoder.{name[-1]}"
            else:
                raise KeyError(name)
        out[prefix + key] = t.detach().clone()
    return out


def write_official_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], method: str,
                              prefix: str = "") -> Path:
    """A fake Dassl ``model.pth.tar-N``: ``torch.save`` of a plain dict with ``state_dict``
    (official adapter names plus two frozen-CLIP distractors), ``epoch``, ``optimizer``,
    ``scheduler``; readable by ``mmrl.models.safe_load.load_dassl_checkpoint``."""
    sd = official_state_dict(tensors, method, prefix)
    sd[prefix + "image_encoder.conv1.weight"] = torch.zeros(4, 3, 2, 2)      # frozen CLIP tensors are ignored
    sd[prefix + "text_encoder.positional_embedding"] = torch.zeros(77, 8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd, "epoch": 5, "optimizer": None, "scheduler": None, "val_result": None}, path)
    return path


def random_adapter(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of the given shapes (std 0.05), e.g. to stand in for a trained adapter."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*s, generator=g) * 0.05 for k, s in shapes.items()}


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def train_killed_after_first_checkpoint(argv: Sequence[str], timeout: float = 300):
    """Run ``mmrl train ARGV`` in a subprocess that SIGKILLs itself right after writing its first
    checkpoint (a crash mid-run); returns the CompletedProcess (text output)."""
    import subprocess
    import sys

    script = f"""
import os, signal, sys, torch
torch.set_num_threads(1)
from mmrl.cli import main
from mmrl.engine import rundir
real = rundir.save_checkpoint
def save_then_die(path, **kw):
    real(path, **kw)
    os.kill(os.getpid(), signal.SIGKILL)
rundir.save_checkpoint = save_then_die
main({[str(a) for a in argv]!r})
"""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)


def dead_pid() -> int:
    """The pid of a process that has already exited (for stale-lock tests)."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_lock_file(path: str | Path, **fields) -> None:
    """A lock/claim file as another process of this host would leave it (``mmrl.engine.lock``'s
    format); ``fields`` (pid, proc_start, command, ...) complete or override it."""
    from mmrl.engine import lock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": lock.HOST, "boot_id": lock.BOOT_ID, "time_iso": "then", "token": "other",
                                **fields}))


def make_benchmark_folders(root: str | Path) -> Path:
    """An empty folder for every benchmark under ``root``: enough for `mmrl reproduce`'s up-front
    check that the data exist, when stand-ins replace `mmrl train` / `mmrl eval`."""
    from mmrl.data import BENCHMARKS

    for b in BENCHMARKS.values():
        (Path(root) / b.folder).mkdir(parents=True, exist_ok=True)
    return Path(root)
