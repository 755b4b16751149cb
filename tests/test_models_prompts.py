"""Class prompts: a cut prompt is said, classes made identical by the cut are refused, and the
benchmark's own duplicate names (ImageNet's two "crane") are kept with a warning."""
from __future__ import annotations

import logging

import pytest
import torch

from helpers import make_folder_dataset, tiny_train_argv, write_tiny_clip
from mmrl.cli import main
from mmrl.errors import PromptError
from mmrl.models.backbone import load_backbone
from mmrl.models.prompts import tokenize_classes

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    return load_backbone("toy-clip").tokenizer  # a context of 16 tokens: easy to exceed


def test_short_prompts_pass_silently(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="mmrl"):
        tokens = tokenize_classes(tokenizer, ["red circle", "blue_star"], "a photo of a {}.")
    assert tokens.shape == (2, 16) and not caplog.records
    assert torch.equal(tokens, tokenizer(["a photo of a red circle.", "a photo of a blue star."]))


def test_a_cut_prompt_is_warned_about(tokenizer, caplog):
    long = "very " * 20 + "long name"
    with caplog.at_level(logging.WARNING, logger="mmrl"):
        tokenize_classes(tokenizer, ["cat", long], "a photo of a {}.")
    (rec,) = caplog.records
    assert "1 of 2 class prompts are longer than the text context of 16 tokens and were cut" in rec.getMessage()
    assert "very very" in rec.getMessage() and "data.template" in rec.getMessage()


def test_classes_made_identical_by_the_cut_are_refused(tokenizer):
    a, b = "very " * 20 + "long cat", "very " * 20 + "long dog"
    with pytest.raises(PromptError, match="have the same prompt once cut to the text context of 16 tokens"):
        tokenize_classes(tokenizer, ["bird", a, b], "a photo of a {}.")


def test_identical_full_prompts_are_kept_with_a_warning(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="mmrl"):
        tokens = tokenize_classes(tokenizer, ["crane", "maillot", "crane"], "a photo of a {}.")
    assert tokens.shape[0] == 3
    assert "1 pairs of classes have identical prompts" in caplog.records[-1].getMessage()


def test_training_on_classes_the_cut_merges_stops_with_one_line(tmp_path, capsys):
    clip = write_tiny_clip(tmp_path / "clip.pt")
    long = "x" + " x" * 80  # 81 tokens: beyond the tiny CLIP's context of 77 (and a valid folder name)
    make_folder_dataset(tmp_path / "pets", classes=(f"{long} a", f"{long} b", "c"))
    rc = main(tiny_train_argv(clip, tmp_path, tmp_path / "run", dataset=f"folder:{tmp_path / 'pets'}"))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("mmrl: error: ")]
    assert rc != 0 and len(lines) == 1 and "have the same prompt once cut" in lines[0], err
