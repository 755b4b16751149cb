"""Contrastive pretraining of the tiny CLIP on generated image-caption pairs.

Every step draws a fresh batch from the toy world (rendering 256 images takes
well under 0.1 s, so nothing is stored): a shape-colour pair from the pairs
NOT held out, a size, a background, then nuisance parameters and a caption.
Some shape-colour pairs (two diagonals of the 8 x 8 table, so each shape and
each colour is held out exactly twice) never appear in pretraining; zero-shot
accuracy on them measures compositional generalisation.

Loss: CLIP's symmetric cross-entropy, with one change. Toy captions repeat
("a red circle" can describe several images of a batch); a caption that also
describes another image of the batch is a false negative for it, so those
off-diagonal entries are masked out of both softmaxes.

Determinism: data come from numpy generators seeded by (seed, 0, step), weights
from torch's seed; with a fixed CPU thread count a run repeats bit for bit on
the same machine.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer

from mmrl.fileio import dumps_json, write_text_atomic
from mmrl.toyworld.captions import describe, prompt, scene_key
from mmrl.toyworld.model import (CHECKPOINT_PATH, TinyClipConfig, build_tiny_clip, load_tiny_clip,
                                 save_checkpoint, to_tensor)
from mmrl.toyworld.render import BACKGROUNDS, COLOURS, PRETRAIN_SIZES, SHAPES, render_batch, sample_scene
from mmrl.toyworld.zeroshot import accuracy, predict

ZERO_SHOT_TEMPLATE = "a photo of a {}."
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((s, c) for s in SHAPES for c in COLOURS)
# (shape index - colour index) mod 8 in {2, 5}: 16 of 64 pairs, each shape and colour twice.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    (s, c) for i, s in enumerate(SHAPES) for j, c in enumerate(COLOURS) if (j - i) % 8 in (2, 5))
SEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p not in HELD_OUT_PAIRS)


@dataclass
class PretrainConfig:
    """Settings of one pretraining run (defaults: the committed checkpoint)."""
    out: str = str(CHECKPOINT_PATH)   # safetensors path; metrics go next to it as .json
    seed: int = 0
    steps: int = 1500
    batch_size: int = 256
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1         # on weight matrices only (not embeddings, gains, biases)
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    init_logit_scale: float = 30.0    # CLIP starts at 1/0.07; a sharper start doubled held-out accuracy here
    threads: int = 2
    log_every: int = 50
    eval_every: int = 500             # zero-shot check during training; 0 = only at the end
    eval_images_per_pair: int = 16
    model: TinyClipConfig = field(default_factory=TinyClipConfig)


# ---------------------------------------------------------------- data

def sample_batch(rng: np.random.Generator, batch_size: int,
                 tokenizer: SimpleTokenizer) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """One pretraining batch.

    Returns images uint8 (B, H, W, 3), tokens (B, context) and a bool (B, B)
    matrix `match[i, j]`: caption i also describes image j.
    """
    scenes, captions = [], []
    for _ in range(batch_size):
        shape, colour = SEEN_PAIRS[rng.integers(len(SEEN_PAIRS))]
        scene = sample_scene(rng, shape, colour, PRETRAIN_SIZES[rng.integers(len(PRETRAIN_SIZES))],
                             BACKGROUNDS[rng.integers(len(BACKGROUNDS))])
        scenes.append(scene)
        captions.append(describe(scene, rng))
    images = render_batch(scenes)
    keys = np.array([c.key for c in captions])                 # (B, 4), -1 = unstated
    attrs = np.array([scene_key(s) for s in scenes])          # (B, 4)
    match = ((keys[:, None, :] == -1) | (keys[:, None, :] == attrs[None, :, :])).all(-1)
    return images, tokenizer([c.text for c in captions]), match


def contrastive_loss(image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: torch.Tensor,
                     match: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE on normalised (B, D) features; `match[i, j]` (caption i fits image j)
    marks false negatives, which are removed from both softmaxes."""
    logits = logit_scale * image_feats @ text_feats.T          # (B images, B captions)
    false_neg = match.T & ~torch.eye(len(match), dtype=torch.bool)
    logits = logits.masked_fill(false_neg, float("-inf"))
    target = torch.arange(len(logits))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def eval_set(seed: int, per_pair: int) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels (index into ALL_PAIRS) for zero-shot evaluation, per_pair images per pair."""
    rng = np.random.default_rng([seed, 1, 0])  # training steps use [seed, 0, step]
    scenes, labels = [], []
    for label, (shape, colour) in enumerate(ALL_PAIRS):
        for _ in range(per_pair):
            scenes.append(sample_scene(rng, shape, colour, PRETRAIN_SIZES[rng.integers(len(PRETRAIN_SIZES))],
                                       BACKGROUNDS[rng.integers(len(BACKGROUNDS))]))
            labels.append(label)
    return render_batch(scenes), np.array(labels)


def zero_shot_pairs(model: CLIP, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Zero-shot accuracy over all 64 "colour shape" classes, split by seen / held-out pair."""
    tokenizer = SimpleTokenizer(context_length=model.context_length)
    prompts = [prompt(ZERO_SHOT_TEMPLATE, f"{c} {s}") for s, c in ALL_PAIRS]
    pred = predict(model, tokenizer, prompts, images)
    held = np.array([ALL_PAIRS[y] in HELD_OUT_PAIRS for y in labels])
    shape_of = np.array([SHAPES.index(s) for s, _ in ALL_PAIRS])
    colour_of = np.array([list(COLOURS).index(c) for _, c in ALL_PAIRS])
    return {"seen": accuracy(pred[~held], labels[~held]), "held_out": accuracy(pred[held], labels[held]),
            "shape": accuracy(shape_of[pred], shape_of[labels]),
            "colour": accuracy(colour_of[pred], colour_of[labels]),
            "chance": 100.0 / len(ALL_PAIRS)}


# ---------------------------------------------------------------- training

def _lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine to zero."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _param_groups(model: CLIP, weight_decay: float) -> list[dict]:
    """Decay weight matrices only. The token embedding is excluded so that rows of words the
    toy world never uses stay at their initialisation instead of shrinking."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        matrix = p.ndim >= 2 and "embedding" not in name
        (decay if matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretrain(cfg: PretrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train the tiny CLIP, write `cfg.out` (fp16 safetensors) and its metrics JSON; return the metrics."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_tiny_clip(cfg.model).train()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(cfg.init_logit_scale))
    tokenizer = SimpleTokenizer(context_length=cfg.model.context_length)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    eval_images, eval_labels = eval_set(cfg.seed, cfg.eval_images_per_pair)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"tiny CLIP {cfg.model}: {n_params:,} parameters; {len(SEEN_PAIRS)} seen / "
        f"{len(HELD_OUT_PAIRS)} held-out shape-colour pairs; {cfg.steps} steps of {cfg.batch_size}")

    history = []
    start = time.perf_counter()
    running = 0.0
    for step in range(cfg.steps):
        rng = np.random.default_rng([cfg.seed, 0, step])
        images, tokens, match = sample_batch(rng, cfg.batch_size, tokenizer)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        img_f, txt_f, scale = model(to_tensor(images), tokens)
        loss = contrastive_loss(img_f, txt_f, scale, torch.from_numpy(match))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        running += loss.item()
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            n = cfg.log_every if done % cfg.log_every == 0 else done % cfg.log_every
            elapsed = time.perf_counter() - start
            log(f"step {done}/{cfg.steps} loss {running / n:.4f} lr {_lr_at(step, cfg):.2e} "
                f"scale {model.logit_scale.exp().item():.1f} {elapsed:.0f}s ({elapsed / done:.3f}s/step)")
            running = 0.0
        if cfg.eval_every and done % cfg.eval_every == 0 and done != cfg.steps:
            zs = zero_shot_pairs(model, eval_images, eval_labels)
            history.append({"step": done, **zs})
            log(f"  zero-shot @ {done}: seen {zs['seen']:.1f}% held-out {zs['held_out']:.1f}% "
                f"(shape {zs['shape']:.1f}%, colour {zs['colour']:.1f}%)")
    seconds = time.perf_counter() - start

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out)
    # Report the file as committed: reload the fp16 checkpoint the way users will.
    final = zero_shot_pairs(load_tiny_clip(out), eval_images, eval_labels)
    log(f"final zero-shot (fp16 checkpoint, {len(eval_labels)} images, 64 classes): seen {final['seen']:.1f}% "
        f"held-out {final['held_out']:.1f}% (shape {final['shape']:.1f}%, colour {final['colour']:.1f}%, "
        f"chance {final['chance']:.1f}%)")
    metrics = {
        "checkpoint": out.name,
        "config": asdict(cfg) | {"out": out.name},
        "parameters": n_params,
        "steps": cfg.steps,
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
        "held_out_pairs": sorted(f"{c} {s}" for s, c in HELD_OUT_PAIRS),
        "zero_shot_template": ZERO_SHOT_TEMPLATE,
        "zero_shot": {k: round(v, 2) for k, v in final.items()},
        "zero_shot_eval_images": len(eval_labels),
        "history": history,
    }
    json_path = out.with_suffix(".json")
    write_text_atomic(dumps_json(metrics, indent=2) + "\n", json_path)
    log(f"wrote {out} and {json_path} ({seconds:.0f}s)")
    return metrics
