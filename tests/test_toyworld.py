"""The toy world: renderer, captions, task writer, pretraining loop and the committed tiny CLIP."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

from mmrl.models.backbone import clip_from_openai_state_dict
from mmrl.toyworld.captions import PHRASINGS, VOCABULARY, describe, prompt, scene_key
from mmrl.toyworld.model import (CHECKPOINT_PATH, METRICS_PATH, TinyClipConfig, build_tiny_clip, load_state_dict,
                                 load_tiny_clip, to_tensor)
from mmrl.toyworld.pretrain import (ALL_PAIRS, HELD_OUT_PAIRS, PretrainConfig, contrastive_loss, eval_set, pretrain,
                                    sample_batch, zero_shot_pairs)
from mmrl.toyworld.render import BACKGROUNDS, COLOURS, SHAPES, SIZES, Style, colour_rgb, render, sample_scene
from mmrl.toyworld.tasks import TASKS, write_task

CONTEXT = TinyClipConfig().context_length


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


# ---------------------------------------------------------------- renderer

def _scenes(seed: int, n: int = 12, style: Style = Style()):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, SHAPES[i % 8], list(COLOURS)[(3 * i) % 8], ("small", "large", "tiny")[i % 3],
                         BACKGROUNDS[i % 4], style) for i in range(n)]


def test_renderer_is_deterministic_and_seeded():
    a, b, c = _scenes(1), _scenes(1), _scenes(2)
    assert a == b and a != c
    for style in (Style(), Style(fill="outline"), Style(blur=1.0)):
        imgs = [render(s, style) for s in a]
        assert all(i.shape == (32, 32, 3) and i.dtype == np.uint8 for i in imgs)
        assert all(np.array_equal(i, render(s, style)) for i, s in zip(imgs, b))
    # different nuisance draws give different pixels, and the style changes the picture
    assert not np.array_equal(render(a[0]), render(c[0]))
    assert not np.array_equal(render(a[0]), render(a[0], Style(fill="outline")))


def test_renderer_draws_the_object_in_its_colour():
    # Without noise, the object's centre pixel is the scene's object colour; a corner is background.
    style = Style(noise=0.0)
    for scene in _scenes(3, style=style):
        if scene.size == "tiny" or scene.shape in ("moon", "star", "cross", "arrow"):
            continue  # centre may be outside the shape (moon) or on a thin part
        img = render(scene, style).astype(float) / 255
        cx, cy = int(scene.cx * 32), int(scene.cy * 32)
        assert np.abs(img[cy, cx] - np.array(scene.rgb)).max() < 0.02, scene
    assert colour_rgb("light red") != colour_rgb("red") != colour_rgb("dark red")
    with pytest.raises(ValueError, match="unknown colour"):
        colour_rgb("magenta")


# ---------------------------------------------------------------- captions

def test_vocabulary_is_single_bpe_tokens():
    tok = SimpleTokenizer(context_length=CONTEXT)
    for word in VOCABULARY:
        ids = tok.encode(word)
        assert len(ids) == 1 and tok.decoder[ids[0]] == word + "</w>", (word, ids)


def test_captions_and_prompts_use_the_vocabulary_and_fit_the_context():
    tok = SimpleTokenizer(context_length=CONTEXT)
    rng = np.random.default_rng(0)
    texts = [describe(s, rng).text for _ in range(40) for s in _scenes(4)]
    texts += [prompt(t.template, c.name) for t in TASKS.values() for c in t.classes]
    # longest phrasing with the longest prefix and words
    texts.append("an image of a large yellow triangle on a striped background.")
    seen_phrasings = set()
    for text in texts:
        words = text.replace(".", " .").split()
        assert set(words) <= set(VOCABULARY), text
        ids = tok.encode(text)
        assert len(ids) + 2 <= CONTEXT, (text, len(ids))  # + start and end of text
        seen_phrasings.add(len(words))
    assert len(seen_phrasings) >= 4  # the phrasings really vary


def test_caption_keys_state_exactly_what_the_text_says():
    rng = np.random.default_rng(5)
    names = {0: SHAPES, 1: tuple(COLOURS), 2: tuple(SIZES), 3: BACKGROUNDS}
    for scene in _scenes(6) * 5:
        if scene.size == "tiny":
            continue
        cap = describe(scene, rng)
        full = scene_key(scene)
        words = cap.text.replace(".", " ").split()
        for field, value in enumerate(cap.key):
            assert value in (-1, full[field])
            assert (value != -1) == (names[field][full[field]] in words), cap  # stated iff its word is there
    assert abs(sum(p for _, p in PHRASINGS) - 1) < 1e-9


def test_false_negative_mask_and_loss():
    tok = SimpleTokenizer(context_length=CONTEXT)
    images, tokens, match = sample_batch(np.random.default_rng(0), 64, tok)
    assert images.shape == (64, 32, 32, 3) and tokens.shape == (64, CONTEXT)
    assert match.diagonal().all() and match.sum() > 64  # repeats do occur at this batch size
    # the masked loss equals InfoNCE where the masked captions/images are simply absent
    f_img = torch.nn.functional.normalize(torch.randn(64, 8), dim=-1)
    f_txt = torch.nn.functional.normalize(torch.randn(64, 8), dim=-1)
    loss = contrastive_loss(f_img, f_txt, torch.tensor(10.0), torch.from_numpy(match))
    sims = 10.0 * f_img @ f_txt.T
    i2t = [-torch.log_softmax(sims[i][~match[:, i] | (np.arange(64) == i)], 0)[
        int((~match[:i, i]).sum())] for i in range(64)]
    t2i = [-torch.log_softmax(sims[:, j][~match[j] | (np.arange(64) == j)], 0)[
        int((~match[j, :j]).sum())] for j in range(64)]
    expected = (torch.stack(i2t).mean() + torch.stack(t2i).mean()) / 2
    assert torch.allclose(loss, expected, atol=1e-5)


# ---------------------------------------------------------------- tasks

def _small(task):
    return dataclasses.replace(task, n_train=3, n_val=1, n_test=2)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_writer_layout_and_split(tmp_path, name):
    task = _small(TASKS[name])
    root = write_task(task, tmp_path, seed=3)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta == {"name": name, "template": task.template, "image_dir": "images", "split_file": "split.json"}
    assert "{}" in meta["template"]
    split = json.loads((root / "split.json").read_text())
    assert set(split) == {"train", "val", "test"}
    n_classes = len(task.classes)
    paths = []
    for part, per_class in (("train", 3), ("val", 1), ("test", 2)):
        entries = split[part]
        assert len(entries) == per_class * n_classes
        for rel, label, cname in entries:
            assert isinstance(label, int) and 0 <= label < n_classes
            assert cname == task.classes[label].name and rel.split("/")[0] == task.classes[label].folder
            assert (root / "images" / rel).is_file()
        paths += [e[0] for e in entries]
    assert len(set(paths)) == len(paths)  # no image in two splits
    assert sorted(p.relative_to(root / "images").as_posix() for p in (root / "images").rglob("*.png")) == sorted(paths)
    assert len({c.name for c in task.classes}) == n_classes
    # deterministic for a seed, different for another seed
    again = write_task(task, tmp_path / "again", seed=3)
    other = write_task(task, tmp_path / "other", seed=4)
    digest = lambda r: hashlib.sha256(b"".join((r / "images" / p).read_bytes() for p in paths)).hexdigest()
    assert (again / "split.json").read_text() == (root / "split.json").read_text()
    assert digest(again) == digest(root) != digest(other)


# ---------------------------------------------------------------- pretraining

def test_pretraining_is_deterministic(tmp_path):
    cfg = dict(steps=3, batch_size=16, warmup_steps=1, threads=1, eval_every=0, eval_images_per_pair=1,
               model=TinyClipConfig(vision_layers=1, text_layers=1))
    lines: list[str] = []
    m1 = pretrain(PretrainConfig(out=str(tmp_path / "a.safetensors"), **cfg), log=lines.append)
    m2 = pretrain(PretrainConfig(out=str(tmp_path / "b.safetensors"), **cfg), log=lambda _: None)
    a, b = load_state_dict(tmp_path / "a.safetensors"), load_state_dict(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert m1["zero_shot"] == m2["zero_shot"] and (tmp_path / "a.json").is_file()
    assert any(line.startswith("step 3/3 loss") for line in lines)


# ---------------------------------------------------------------- the committed checkpoint

def test_checkpoint_has_openai_keys_and_round_trips():
    state = load_state_dict()
    fresh = build_tiny_clip(TinyClipConfig())
    assert set(state) == set(fresh.state_dict())
    assert all(v.dtype == torch.float16 for v in state.values())
    assert CHECKPOINT_PATH.stat().st_size < 10e6
    loaded = clip_from_openai_state_dict(dict(state))  # the OpenAI-format loader, shapes only (both open_clips)
    loaded.eval()
    fresh.load_state_dict({k: v.float() for k, v in state.items()})
    fresh.eval()
    # heads follow width // 64, as the OpenAI loader infers them
    for name, heads in (("visual.transformer.resblocks.0.attn", 2), ("transformer.resblocks.0.attn", 1)):
        assert loaded.get_submodule(name).num_heads == fresh.get_submodule(name).num_heads == heads
    images, _ = eval_set(seed=11, per_pair=1)
    tokens = SimpleTokenizer(context_length=CONTEXT)(["a photo of a red circle.", "a small blue star"])
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(to_tensor(images[:8])), fresh.encode_image(to_tensor(images[:8])))
        assert torch.equal(loaded.encode_text(tokens), fresh.encode_text(tokens))


def test_checkpoint_zero_shot_on_held_out_pairs():
    """Fresh images (a seed pretraining never used) of all 64 shape-colour pairs, classified among all 64."""
    model = load_tiny_clip()
    images, labels = eval_set(seed=12345, per_pair=4)
    acc = zero_shot_pairs(model, images, labels)
    # Measured (tiny_clip.json, 1024 images): seen 97.7%, held-out 51.6%; chance is 1.6%. On 64
    # held-out images the standard error is ~6 points (42-58% over four sample seeds), so the
    # held-out bar sits ~2.5 standard errors under the lowest; the seen bar is as far under 97.7%.
    assert acc["seen"] > 85.0, acc
    assert acc["held_out"] > 35.0, acc
    metrics = json.loads(METRICS_PATH.read_text())
    assert metrics["config"] | {"out": "x"} == asdict(PretrainConfig()) | {"out": "x"} | {
        "model": asdict(TinyClipConfig()), "betas": list(PretrainConfig().betas)}
    assert sorted(metrics["held_out_pairs"]) == sorted(f"{c} {s}" for s, c in HELD_OUT_PAIRS)
    assert len(ALL_PAIRS) == 64


# ---------------------------------------------------------------- command line

def test_cli_help_states_the_real_defaults_and_make_tasks_writes(tmp_path, capsys):
    from mmrl.cli import build_parser, main

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["toyworld"]
    pretrain_parser = sub._subparsers._group_actions[0].choices["pretrain"]
    defaults = PretrainConfig()
    for action in pretrain_parser._actions:
        name = action.dest
        if name in ("help", "out"):
            continue
        assert action.default is None  # None = take PretrainConfig's value
        stated = float(action.help.rsplit("(", 1)[1].rstrip(")"))
        assert stated == getattr(defaults, name), (name, action.help)
    assert main(["toyworld", "make-tasks", "--out", str(tmp_path), "--tasks", "toy_striped"]) == 0
    assert (tmp_path / "toy_striped" / "split.json").is_file()
    assert "toy_striped" in capsys.readouterr().out
    # the settings files written beside the tasks give `--config` users the demo's exact config
    from mmrl.config import resolve_config
    from mmrl.toyworld.demo import toy_overrides

    task = f"dataset:{tmp_path / 'toy_striped'}"
    for method in ("mmrl", "mmrl++"):
        from_file = resolve_config(method, "base2novel", task, tmp_path / f"settings-{method}.yaml")
        as_demo = resolve_config(method, "base2novel", task, overrides=[*toy_overrides(method), "backbone=toy-clip"])
        assert from_file == as_demo and from_file.backbone == "toy-clip" and from_file.method.first_rep_block == 4
