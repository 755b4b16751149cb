"""Hugging Face text towers (open_clip's HFTextEncoder: XLM-R, RoBERTa, NLLB), beyond what the tower
zoo's families already get from tests/test_models_towers.py (loss, logits and every gradient
against the reference; hidden slots = zero-shot; describe sizes; no slots = open_clip's
encode_text): the layers' layouts, refusals by part, a few training steps, and the
tokenizer's offline behaviour. Tiny random configs built in-process, no download."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from mmrl.models import build_method, method_config, reference  # noqa: E402
from mmrl.models.backbone import _frozen, architecture_problem, check_vit_clip  # noqa: E402
from mmrl.models.towers import HFTextTower, towers_of, towers_problem  # noqa: E402
from towers_zoo import HF_FAMILIES, IMAGE, tiny_backbone  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.mark.parametrize("family,layout,pool", [("xlmr", "post_ln", "mean"), ("roberta-cls", "post_ln", "cls"),
                                                ("nllb", "pre_ln", "cls")])
def test_layers_are_recognised_by_layout_and_checked_against_their_own_forward(family, layout, pool):
    bb = tiny_backbone(family)
    t = towers_of(bb.clip).text
    assert isinstance(t, HFTextTower) and (t.layout, t.pool_type, t.n_prefix, t.causal) == (layout, pool, 1, False)
    check_vit_clip(bb.clip, family)  # every layer: by its parts == its own forward
    x = torch.randn(2, 5, 32)
    m = torch.zeros(2, 1, 5, 5)
    m[1, ..., 3:] = float("-inf")
    for blk in t.blocks:
        torch.testing.assert_close(blk.by_parts(x, m), blk.forward(x, m), rtol=1e-5, atol=1e-5)


def _clip_with_hf(config, tmp_path, pooler="mean_pooler"):
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    config.save_pretrained(str(tmp_path))
    vision = dict(layers=3, width=32, head_width=16, patch_size=8, image_size=IMAGE)
    return _frozen(CustomTextCLIP(16, CLIPVisionCfg(**vision), CLIPTextCfg(
        hf_model_name=str(tmp_path), hf_tokenizer_name=str(tmp_path), hf_pooler_type=pooler, hf_proj_type="linear",
        hf_model_pretrained=False)))


def test_other_encoders_are_refused_naming_the_part(tmp_path):
    import transformers

    bb = tiny_backbone("nllb")  # an embedding norm (mBART-like): not the M2M100 encoder's math
    bb.clip.text.transformer.layernorm_embedding = torch.nn.LayerNorm(32)
    problem = towers_problem(bb.clip)
    assert problem and "layernorm_embedding" in problem and "\n" not in problem
    bb = tiny_backbone("xlmr")  # a layer without its feed-forward part
    bb.clip.text.transformer.encoder.layer[1].intermediate = None
    problem = towers_problem(bb.clip)
    assert problem and "layer 1" in problem and "BERT/RoBERTa" in problem
    rel = transformers.RobertaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=48, max_position_embeddings=40, pad_token_id=1,
                                     position_embedding_type="relative_key")
    problem = towers_problem(_clip_with_hf(rel, tmp_path / "rel"))
    assert problem is None or "absolute text positions" in problem  # transformers 5 dropped relative keys


def test_audio_models_and_missing_transformers_get_one_line(monkeypatch):
    import importlib.util

    import open_clip

    if "CLAP-HTSAT-tiny-Roberta-base" in open_clip.list_models():  # open_clip 4.x
        assert "audio model, not an image-text model" in architecture_problem("CLAP-HTSAT-tiny-Roberta-base")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "transformers" else real(n, *a))
    architecture_problem.cache_clear()
    try:
        assert 'pip install "mmrl[hf]"' in architecture_problem("xlm-roberta-base-ViT-B-32")
    finally:
        architecture_problem.cache_clear()


def test_uncached_hf_config_without_the_hub_is_one_line_with_the_ways_on(monkeypatch, capsys):
    """open_clip reads an HF text tower's config from the hub at build time: not cached and the hub
    unreachable -> one line naming the model and the encoder, without the hub client's retries."""
    from mmrl.cli import main
    from mmrl.errors import BackboneUnavailableError
    from mmrl.models import backbone

    asked = []
    monkeypatch.setattr(backbone, "_hf_offline_config", lambda hf, allow_default=True: None)  # nothing cached
    monkeypatch.setattr(backbone, "unreachable", lambda host, timeout_s=5.0: asked.append(host) or "no connection: cut")
    with pytest.raises(BackboneUnavailableError) as e:
        backbone.load_backbone("xlm-roberta-base-ViT-B-32", pretrained=False)
    msg = str(e.value)
    assert "\n" not in msg and "xlm-roberta-base-ViT-B-32" in msg and "encoder xlm-roberta-base is not cached" in msg
    assert "no connection: cut" in msg and "Ways on" in msg and asked == ["huggingface.co"]
    assert main(["describe", "--method", "mmrl", "--backbone", "xlm-roberta-base-ViT-B-32"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0] and "not cached" in err[0], err


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_a_few_training_steps_lower_the_loss_and_train_only_the_adapter(family):
    bb = tiny_backbone(family)
    torch.manual_seed(0)
    model = build_method(bb, method_config("mmrl++", n_rep_tokens=3, rep_dim=8, first_rep_block=2))
    model.set_classes(["cat", "dog", "bird", "fish"], "a photo of a {}.")
    frozen = {n: p.clone() for n, p in bb.clip.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    x = torch.randn(8, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 4
    losses = []
    for _ in range(6):
        out = model.loss(x, y)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        losses.append(float(out.total.detach()))
    assert losses[-1] < losses[0], losses
    assert all(torch.equal(p, frozen[n]) for n, p in bb.clip.named_parameters())


def test_step_time_generic_against_reference(capsys):
    """Not a speed claim (both run every position): the step times the report quotes."""
    bb = tiny_backbone("xlmr")
    model = build_method(bb, method_config("mmrl", n_rep_tokens=5, rep_dim=32, first_rep_block=2))
    model.set_classes(["cat", "dog", "bird", "fish", "horse", "cow", "sheep", "goat"], "a photo of a {}.")
    x, y = torch.randn(8, 3, IMAGE, IMAGE), torch.arange(8)

    def step(fn) -> float:
        t0 = time.perf_counter()
        for _ in range(3):
            fn(model, x, y).total.backward()
        return (time.perf_counter() - t0) / 3

    step(type(model).loss)
    g, r = step(type(model).loss), step(reference.loss)
    with capsys.disabled():
        print(f"\ntiny xlmr step: generic {g * 1e3:.1f} ms, reference {r * 1e3:.1f} ms")


def _fake_hub_tokenizer(home: Path, repo: str) -> None:
    """A tiny WordLevel tokenizer saved into a Hugging Face cache layout for ``repo``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 4, "photo": 5, "of": 6, "cat": 7}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    snap = home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    fast.save_pretrained(str(snap))
    from towers_zoo import hf_config

    hf_config("xlmr").save_pretrained(str(snap))  # AutoTokenizer reads the model's config too
    (snap.parents[1] / "refs").mkdir(parents=True, exist_ok=True)
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)


def _tokenize_in_child(home: Path) -> subprocess.CompletedProcess:
    code = textwrap.dedent("""
        import json, socket, sys
        def no_network(*a, **k):
            raise AssertionError("network")
        socket.socket.connect = no_network
        sys.path.insert(0, "tests")
        from mmrl.errors import BackboneUnavailableError
        from mmrl.models.backbone import _tokenizer_for
        from towers_zoo import tiny_backbone
        tok = _tokenizer_for(tiny_backbone("xlmr").clip, "xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k")
        try:
            print(json.dumps(tok(["a photo of a cat"]).tolist()))
        except BackboneUnavailableError as e:
            print("ERROR " + str(e))
    """)
    env = {**os.environ, "HF_HOME": str(home), "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("HF_HUB_OFFLINE", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=str(Path(__file__).resolve().parents[1]))


def test_hf_tokenizer_loads_offline_when_cached_and_names_the_ways_on_when_not(tmp_path):
    absent = _tokenize_in_child(tmp_path / "empty")
    line = absent.stdout.strip().splitlines()[-1]
    assert line.startswith("ERROR") and "not cached" in line and "Ways on" in line, absent.stdout + absent.stderr
    _fake_hub_tokenizer(tmp_path / "cached", "xlm-roberta-base")
    cached = _tokenize_in_child(tmp_path / "cached")
    ids = json.loads(cached.stdout.strip().splitlines()[-1])
    assert ids[0][:6] == [4, 5, 6, 4, 7, 1], cached.stdout + cached.stderr  # words, then <pad>
