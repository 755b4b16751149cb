"""Import of the authors' released MMRL / MMRL++ Dassl checkpoints."""
from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import open_clip
import pytest
import torch
from torch import nn

from mmrl.models.official import check_adapter_shapes, convert_official_state_dict, load_official_adapter
from mmrl.models.safe_load import load_dassl_checkpoint

torch.set_num_threads(1)

K, D_R, N_BLOCKS, RANK, LORA = 2, 8, 3, 4, 16  # tiny stand-ins for K=5, d_r=512, 7 blocks, rank 4, 64
D_V, D_T, D_E = 64, 64, 32  # the tiny CLIP below

_FAKE_DASSL = "fake_dassl_lr_scheduler_not_installed"  # one level: pickle imports parents


class ConstantWarmupScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Dassl's warm-up wrapper, as the authors' checkpoints pickle it (optimizer + successor inside)."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr, last_epoch=-1):  # noqa: ANN001
        self.successor, self.warmup_epoch, self.cons_lr = successor, warmup_epoch, cons_lr
        super().__init__(optimizer, last_epoch)

    def get_lr(self):  # noqa: ANN201
        return [self.cons_lr for _ in self.base_lrs]


def tiny_clip() -> nn.Module:
    torch.manual_seed(0)
    return open_clip.model.CLIP(
        embed_dim=D_E,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=2, width=D_V, patch_size=8, image_size=32, head_width=64),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=1000, width=D_T, heads=1, layers=2),
        quick_gelu=True,
    )


class _Residual(nn.Module):
    def __init__(self, d_out: int, bias: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(d_out, RANK).uniform_(-0.5, 0.5))
        self.B = nn.Parameter(torch.randn(RANK, D_R))
        self.bias = nn.Parameter(bias.clone())


class _SRRA(nn.Module):
    def __init__(self, d_out: int) -> None:
        super().__init__()
        base = nn.Linear(D_R, d_out)
        self.weight = nn.Parameter(base.weight.detach().clone())
        self.srra = nn.ModuleList([_Residual(d_out, base.bias.detach()) for _ in range(N_BLOCKS)])


class OfficialModel(nn.Module):
    """The authors' CustomCLIP layout: representation_learner, image_encoder (CLIP visual with
    the new tensors), text_encoder and, for MMRL++, a prompt_embeddings buffer."""

    def __init__(self, method: str) -> None:
        super().__init__()
        clip = tiny_clip()
        rl = nn.Module()
        rl.compound_rep_tokens = nn.Parameter(torch.randn(K, D_R) * 0.02)
        if method == "mmrl":
            rl.compound_rep_tokens_r2vproj = nn.ModuleList([nn.Linear(D_R, D_V) for _ in range(N_BLOCKS)])
            rl.compound_rep_tokens_r2tproj = nn.ModuleList([nn.Linear(D_R, D_T) for _ in range(N_BLOCKS)])
            clip.visual.proj_rep = nn.Parameter(torch.randn(D_V, D_E) * D_V ** -0.5)
        else:
            rl.srra_r2vproj, rl.srra_r2tproj = _SRRA(D_V), _SRRA(D_T)
            clip.visual.A = nn.Parameter(torch.empty(D_V, LORA).uniform_(-1 / 8, 1 / 8))
            clip.visual.B = nn.Parameter(torch.randn(LORA, D_E))
            self.register_buffer("prompt_embeddings", torch.randn(3, 77, D_T))
        self.representation_learner = rl
        self.image_encoder = clip.visual
        te = nn.Module()
        te.transformer, te.ln_final = clip.transformer, clip.ln_final
        te.positional_embedding, te.text_projection = clip.positional_embedding, clip.text_projection
        self.text_encoder = te
        self.token_embedding = clip.token_embedding


def expected_shapes(method: str, n_blocks: int = N_BLOCKS, d_r: int = D_R) -> dict[str, tuple[int, ...]]:
    """Our adapter names and shapes (what MMRL.adapter_state_dict() holds)."""
    out: dict[str, tuple[int, ...]] = {"rep_tokens": (K, d_r)}
    for side, d in (("vision", D_V), ("text", D_T)):
        if method == "mmrl":
            for i in range(n_blocks):
                out[f"{side}_aligner.{i}.weight"], out[f"{side}_aligner.{i}.bias"] = (d, d_r), (d,)
        else:
            out[f"{side}_aligner.weight"] = (d, d_r)
            for i in range(n_blocks):
                out[f"{side}_aligner.A.{i}"], out[f"{side}_aligner.B.{i}"] = (d, RANK), (RANK, d_r)
                out[f"{side}_aligner.bias.{i}"] = (d,)
    if method == "mmrl":
        out["proj_rep"] = (D_V, D_E)
    else:
        out["proj_lora_A"], out["proj_lora_B"] = (D_V, LORA), (LORA, D_E)
    return out


def official_to_ours(model: OfficialModel, method: str) -> dict[str, torch.Tensor]:
    """Ground truth written out by hand from the authors' module structure."""
    rl, out = model.representation_learner, {"rep_tokens": model.representation_learner.compound_rep_tokens}
    for side, short in (("vision", "v"), ("text", "t")):
        if method == "mmrl":
            for i, lin in enumerate(getattr(rl, f"compound_rep_tokens_r2{short}proj")):
                out[f"{side}_aligner.{i}.weight"], out[f"{side}_aligner.{i}.bias"] = lin.weight, lin.bias
        else:
            srra = getattr(rl, f"srra_r2{short}proj")
            out[f"{side}_aligner.weight"] = srra.weight
            for i, res in enumerate(srra.srra):
                out[f"{side}_aligner.A.{i}"], out[f"{side}_aligner.B.{i}"] = res.A, res.B
                out[f"{side}_aligner.bias.{i}"] = res.bias
    if method == "mmrl":
        out["proj_rep"] = model.image_encoder.proj_rep
    else:
        out["proj_lora_A"], out["proj_lora_B"] = model.image_encoder.A, model.image_encoder.B
    return {k: v.detach().clone() for k, v in out.items()}


def save_dassl_checkpoint(path: Path, method: str, prefix: str = "", monkeypatch=None) -> OfficialModel:  # noqa: ANN001
    """Train one step with AdamW + cosine under the Dassl warm-up wrapper and save as Dassl does."""
    torch.manual_seed(1)
    model = OfficialModel(method)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("representation_learner") or name in
                         ("image_encoder.proj_rep", "image_encoder.A", "image_encoder.B"))
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=2e-3, weight_decay=5e-4)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=5)
    sched = ConstantWarmupScheduler(optim, cosine, warmup_epoch=1, cons_lr=1e-5)
    sum((p.float() ** 2).sum() for p in params).backward()
    optim.step()
    sched.step()
    module = types.ModuleType(_FAKE_DASSL)  # importable only while saving
    module.ConstantWarmupScheduler = ConstantWarmupScheduler
    monkeypatch.setattr(ConstantWarmupScheduler, "__module__", _FAKE_DASSL)
    monkeypatch.setitem(sys.modules, _FAKE_DASSL, module)
    state_dict = {f"{prefix}{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state_dict, "epoch": 5, "optimizer": optim.state_dict(), "scheduler": sched,
                "val_result": 0.5}, path)
    monkeypatch.delitem(sys.modules, _FAKE_DASSL)
    return model


@pytest.mark.parametrize("method,prefix", [("mmrl", ""), ("mmrl", "module."), ("mmrl++", "")])
def test_load_official_adapter(tmp_path, monkeypatch, method, prefix) -> None:
    path = tmp_path / "model.pth.tar-5"
    model = save_dassl_checkpoint(path, method, prefix, monkeypatch)
    # the file is as hostile to the stock loaders as the released ones
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    with pytest.raises(ModuleNotFoundError, match="fake_dassl"):
        torch.load(path, weights_only=False)

    sd = load_dassl_checkpoint(path)
    assert set(sd) == {f"{prefix}{k}" for k in model.state_dict()}
    got = load_official_adapter(path, method, expected_shapes(method))
    want = official_to_ours(model, method)
    assert set(got) == set(want) == set(expected_shapes(method))
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_shape_and_key_errors(tmp_path, monkeypatch) -> None:
    path = tmp_path / "model.pth.tar-5"
    save_dassl_checkpoint(path, "mmrl", "", monkeypatch)
    with pytest.raises(ValueError, match=r"rep_tokens: checkpoint shape \(2, 8\), model expects \(2, 16\)") as e:
        load_official_adapter(path, "mmrl", expected_shapes("mmrl", d_r=16))
    assert "model.pth.tar-5" in str(e.value) and "K=2, d_r=8, 3 token blocks on a d_v=64 vision tower" in str(e.value)
    assert "K=2, d_r=16" in str(e.value)
    with pytest.raises(ValueError) as e:
        load_official_adapter(path, "mmrl", expected_shapes("mmrl", n_blocks=5))
    for part in ("missing vision_aligner.3.weight", "missing vision_aligner.4.bias", "missing text_aligner.3.bias",
                 "3 token blocks", "5 token blocks"):
        assert part in str(e.value), part
    with pytest.raises(ValueError, match=r"holds MMRL tensors.*choose method='mmrl'"):
        load_official_adapter(path, "mmrl++", expected_shapes("mmrl++"))
    with pytest.raises(ValueError, match="method must be one of"):
        load_official_adapter(path, "maple", {})


def test_convert_names_missing_keys(monkeypatch, tmp_path) -> None:
    for method in ("mmrl", "mmrl++"):
        sd = OfficialModel(method).state_dict()
        ours = convert_official_state_dict({f"model.module.{k}": v for k, v in sd.items()}, method)
        assert set(ours) == set(expected_shapes(method))
        check_adapter_shapes(ours, expected_shapes(method), "x")  # fits: no error

    sd = OfficialModel("mmrl").state_dict()
    del sd["representation_learner.compound_rep_tokens_r2tproj.1.bias"], sd["image_encoder.proj_rep"]
    with pytest.raises(ValueError, match=r"lacks 2 adapter tensor.*'text_aligner\.1\.bias', 'proj_rep'"):
        convert_official_state_dict(sd, "mmrl")
    sd = OfficialModel("mmrl++").state_dict()
    del sd["representation_learner.srra_r2vproj.srra.2.B"]
    with pytest.raises(ValueError, match=r"vision_aligner\.B\.2"):
        convert_official_state_dict(sd, "mmrl++")
    with pytest.raises(ValueError, match=r"holds MMRL\+\+ tensors.*choose method='mmrl\+\+'"):
        convert_official_state_dict(sd, "mmrl")
    sd = OfficialModel("mmrl").state_dict()
    dup = {**sd, "module.representation_learner.compound_rep_tokens": sd["representation_learner.compound_rep_tokens"]}
    with pytest.raises(ValueError, match="'rep_tokens' twice"):
        convert_official_state_dict(dup, "mmrl")
    with pytest.raises(ValueError, match="lacks"):
        convert_official_state_dict({"text_encoder.ln_final.weight": torch.ones(2)}, "mmrl")


def test_check_adapter_shapes_lists_every_problem() -> None:
    want = expected_shapes("mmrl++")
    got = {k: torch.zeros(v) for k, v in want.items()}
    got["proj_lora_B"] = torch.zeros(LORA, 7)
    del got["text_aligner.bias.0"]
    got["extra"] = torch.zeros(1)
    with pytest.raises(ValueError) as e:
        check_adapter_shapes(got, want, "ckpt.pth")
    msg = str(e.value)
    assert msg.startswith("ckpt.pth: the adapter does not fit the chosen backbone/method config")
    for part in ("missing text_aligner.bias.0", "unexpected extra (shape (1,))",
                 f"proj_lora_B: checkpoint shape ({LORA}, 7), model expects ({LORA}, {D_E})",
                 "MMRL++: K=2, d_r=8, 3 token blocks on a d_v=64 vision tower, d_t=64 text tower, d_e=7"):
        assert part in msg, part
