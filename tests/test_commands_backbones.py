"""`mmrl backbones`: every architecture of open_clip.list_pretrained() is accepted or refused with
one line naming the part, decided from the architecture alone (meta device: no download, no
network, nothing cached). One sweep over the whole list (~30 s on 2 shared cores)."""
from __future__ import annotations

import importlib.util
import json
import socket

import pytest

open_clip = pytest.importorskip("open_clip")

from mmrl.cli import main  # noqa: E402
from mmrl.commands.backbones import survey  # noqa: E402
from mmrl.models.backbone import architecture_problem  # noqa: E402

# transformer families that must be accepted where this open_clip lists them
ACCEPTED = ("ViT-B-16", "ViT-L-14", "ViT-B-16-SigLIP", "ViT-B-16-SigLIP2", "ViT-SO400M-14-SigLIP", "EVA01-g-14",
            "EVA02-B-16", "EVA02-L-14", "PE-Core-B-16", "PE-Core-T-16-384", "coca_ViT-B-32",
            "ViT-L-14-CLIPA", "ViT-H-14-worldwide", "MobileCLIP-B", "ViTamin-S", "ViT-L-16-SigLIP-256",
            "EVA02-E-14", "EVA02-E-14-plus", "ViT-B-16-SigLIP2-naflex", "ViT-SO400M-16-SigLIP2-naflex")
CONV = ("RN50", "RN101", "convnext_base", "MobileCLIP-S1", "MobileCLIP2-S0")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The survey, with the network cut and every cache pointed at an empty folder."""
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    for var in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "TORCH_HOME"):
        mp.setenv(var, str(home))

    def no_network(*a, **k):
        raise AssertionError("mmrl backbones opened a network connection")

    mp.setattr(socket.socket, "connect", no_network)
    architecture_problem.cache_clear()
    try:
        result = survey()
    finally:
        mp.undo()
    assert not any(home.rglob("*")), f"wrote {sorted(home.rglob('*'))[:5]}"
    return result


def test_every_architecture_is_accepted_or_refused_naming_the_part(swept):
    rows = swept["architectures"]
    names = {n for n, _ in open_clip.list_pretrained()}
    assert {r["name"] for r in rows} == names
    for r in rows:
        if r["accepted"]:
            assert r["reason"] is None
        else:
            reason = r["reason"]
            assert "\n" not in reason and len(reason) < 300, reason
            assert "MMRL needs" in reason or "block" in reason or "timm" in reason, reason
    c = swept["counts"]
    assert c["architectures"] == len(names) and c["pairs"] == len(open_clip.list_pretrained())


def test_transformer_families_are_accepted_and_conv_towers_refused_for_tokens(swept):
    by_name = {r["name"]: r for r in swept["architectures"]}
    has_timm = importlib.util.find_spec("timm") is not None
    for name in ACCEPTED:
        if name in by_name:
            uses_timm = bool((open_clip.get_model_config(name) or {}).get("vision_cfg", {}).get("timm_model_name"))
            if uses_timm and not has_timm:  # refused, saying how to get it
                assert "install timm" in by_name[name]["reason"], by_name[name]
                continue
            assert by_name[name]["accepted"], (name, by_name[name]["reason"])
    seen = 0
    for name in CONV:
        if name in by_name:
            seen += 1
            r = by_name[name]
            assert not r["accepted"] and "needs tokens" in r["reason"], (name, r["reason"])
    assert seen >= 3
    assert swept["counts"]["accepted_architectures"] > 17  # CLIP ViTs only, before the adapters


def test_every_transformer_architecture_is_accepted(swept):
    """The whole list: accepted, or refused because its image tower is convolutional (no tokens) or
    there is none (CLAP). A family that newly fails shows here."""
    if importlib.util.find_spec("timm") is None or importlib.util.find_spec("transformers") is None:
        pytest.skip("the timm and Hugging Face towers need timm and transformers")
    wrong = [(r["name"], r["reason"]) for r in swept["architectures"]
             if not r["accepted"] and "needs tokens" not in r["reason"] and "not an image-text model" not in r["reason"]]
    assert not wrong, wrong
    conv = sum("needs tokens" in (r["reason"] or "") for r in swept["architectures"])
    audio = sum("not an image-text model" in (r["reason"] or "") for r in swept["architectures"])
    assert swept["counts"]["accepted_architectures"] == swept["counts"]["architectures"] - conv - audio


HF_TEXT = ("xlm-roberta-base-ViT-B-32", "xlm-roberta-large-ViT-H-14", "roberta-ViT-B-32", "nllb-clip-base",
           "nllb-clip-base-siglip", "nllb-clip-large", "nllb-clip-large-siglip")


def test_hf_text_towers_are_accepted_without_touching_the_network(swept):
    """Decided offline (no HF config cached in the empty home): the layers' parts of the encoder's model type."""
    by_name = {r["name"]: r for r in swept["architectures"]}
    rows = [by_name[n] for n in HF_TEXT if n in by_name]
    assert rows
    if importlib.util.find_spec("transformers") is None:
        assert all('pip install "mmrl[hf]"' in r["reason"] for r in rows), rows
    else:
        assert all(r["accepted"] for r in rows), rows


def test_audio_models_are_refused_as_audio(swept):
    rows = [r for r in swept["architectures"] if r["name"].startswith("CLAP")]  # open_clip 4.x
    assert all(not r["accepted"] and "audio model, not an image-text model" in r["reason"] for r in rows), rows


def test_cli_json_and_table(swept, capsys):
    assert main(["backbones", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["counts"] == swept["counts"]
    assert main(["backbones", "--refused"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert all("refused:" in line for line in lines[:-1]) and "architectures accepted" in lines[-1]


DEPTH = 3  # blocks kept per tower: the representation tokens enter at block 1 and pass two blocks


@pytest.mark.slow  # ~1 min on 2 shared cores: every accepted architecture, shrunk, on meta
def test_every_accepted_architecture_builds_the_method_and_takes_a_training_step(swept):
    """Accepted means trainable: MMRL++ with its default settings on each accepted architecture
    (built on the meta device: shapes only, no memory, no weights) shrunk to DEPTH blocks per
    tower at its real widths, a forward of the loss through the generic path and its backward.
    CLIP's layout takes the fast path, tested at tiny sizes (its prompt caches need real token
    ids), so it is left out here."""
    import logging

    import torch

    from mmrl.models import build_method, method_config
    from mmrl.models.backbone import Backbone, _quiet_open_clip, hf_config_offline
    from mmrl.models.towers import towers_of

    def ids(texts: list[str], ctx: int) -> torch.Tensor:  # distinct rows, made on the CPU
        rows = torch.arange(len(texts), device="cpu")[:, None] + 2
        return (torch.arange(ctx, device="cpu")[None] * rows) % 7 + 1

    failures, ran = [], 0
    logging.disable(logging.WARNING)
    try:
        for r in swept["architectures"]:
            if not r["accepted"]:
                continue
            name = r["name"]
            hf = ((open_clip.get_model_config(name) or {}).get("text_cfg") or {}).get("hf_model_name")
            with _quiet_open_clip(), torch.device("meta"), hf_config_offline(hf):  # no HF config download
                clip = open_clip.create_model(name, pretrained=None, device="meta",
                                              pretrained_hf=False).eval().requires_grad_(False)
            towers = towers_of(clip, name)
            if towers.clip_layout:
                continue
            for blocks in (towers.vision.block_modules, towers.text.block_modules):
                del blocks[DEPTH:]  # shrunk in place: the same stem, block types, pooling and head
            ctx, S = towers.text.context_length, towers.vision.image_size
            try:
                with torch.device("meta"):
                    J = 1
                    model = build_method(Backbone(clip, lambda t: ids(t, ctx), name),
                                         method_config("mmrl++", first_rep_block=J))
                    model.set_classes(["cat", "dog"], "a photo of a {}.")
                    out = model.loss(torch.empty(2, 3, S, S), torch.zeros(2, dtype=torch.long))
                    out.total.backward()
                assert model.proj_lora_A.grad is not None and model.rep_tokens.grad is not None
                ran += 1
            except Exception as e:  # collected: one line per architecture
                failures.append(f"{name}: {type(e).__name__}: {e}"[:200])
    finally:
        logging.disable(logging.NOTSET)
    assert not failures, "\n".join(failures)
    assert ran >= 40
