"""The backbone's own image resizing (open_clip's pretrained config: interpolation, resize mode)
reaches training, evaluation, prediction and exported files; CLIP ViTs keep CLIP's (bicubic,
shorter side + centre crop), so their numbers do not move."""
from __future__ import annotations

import pytest
import torch
from torch import nn

open_clip = pytest.importorskip("open_clip")

from mmrl.engine.export import build_metadata  # noqa: E402
from mmrl.models.backbone import _set_preprocess  # noqa: E402
from mmrl.models.towers import image_resizing  # noqa: E402
from towers_zoo import IMAGE, tiny_backbone  # noqa: E402


def _holder() -> nn.Module:
    m = nn.Module()
    m.visual = nn.Module()
    return m


@pytest.mark.parametrize("name, tag, interpolation, mode", [
    ("ViT-B-16", "openai", "bicubic", "shortest"),
    ("ViT-B-16-SigLIP", "webli", "bicubic", "squash"),
    ("ViT-L-14-CLIPA", "datacomp1b", "bilinear", "squash"),
    ("MobileCLIP-B", "datacompdr", "bilinear", "shortest"),
])
def test_weights_without_a_tag_get_their_tags_resizing(name, tag, interpolation, mode):
    """A checkpoint loaded as NAME:/path (open_clip attaches nothing) gets its name's tag's."""
    if tag not in open_clip.list_pretrained_tags_by_model(name):
        pytest.skip(f"{name}:{tag} not in this open_clip")
    m = _holder()
    _set_preprocess(m, name, tag)
    cfg = m.visual.preprocess_cfg
    assert (cfg["interpolation"], cfg["resize_mode"]) == (interpolation, mode)
    assert cfg["mean"] == tuple(open_clip.get_pretrained_cfg(name, tag)["mean"])


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_resizing_of_a_model_and_what_its_export_records(family):
    clip = tiny_backbone(family).clip
    assert image_resizing(clip) == {"resolution": IMAGE, "interpolation": "bicubic", "resize_mode": "shortest"}
    clip.visual.preprocess_cfg = {**(getattr(clip.visual, "preprocess_cfg", None) or {}),
                                  "interpolation": "bilinear", "resize_mode": "squash"}
    got = image_resizing(clip)
    assert got == {"resolution": IMAGE, "interpolation": "bilinear", "resize_mode": "squash"}
    meta = build_metadata(classnames=["a", "b"], template="a photo of a {}.", kind="fused", resizing=got,
                          method="mmrl", beta=0.5, alpha=0.5, logit_scale=100.0)
    pre = meta["preprocessing"]
    assert (pre["resize"], pre["crop"], pre["interpolation"], pre["resize_mode"]) == (IMAGE, IMAGE, "bilinear", "squash")
    assert meta["input_size"] == IMAGE and meta["input"]["shape"] == ["N", 3, IMAGE, IMAGE]


def test_evaluation_feeds_the_model_its_own_resizing(tmp_path):
    """engine.inference resizes a non-square image as the model's config says: its logits are
    the model's on that image squashed (or cropped), each built here by hand."""
    import numpy as np
    from PIL import Image

    from mmrl.data import CLIP_MEAN, CLIP_STD, Datum
    from mmrl.engine.inference import run_inference
    from mmrl.models import build_method, method_config

    arr = np.random.default_rng(0).integers(0, 256, (IMAGE, 2 * IMAGE, 3), dtype=np.uint8)  # H x 2H
    path = tmp_path / "wide.png"
    Image.fromarray(arr).save(path)
    bb = tiny_backbone("siglip")
    torch.manual_seed(0)
    model = build_method(bb, method_config("mmrl", n_rep_tokens=2, rep_dim=8, first_rep_block=1)).eval()
    classes, template = ["a", "b", "c"], "a photo of a {}."

    def by_hand(pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float() / 255
        x = (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
        model.set_classes(classes, template)
        with torch.no_grad():
            return model.logits(x[None], model.encode_text()).of("fused")

    squashed = np.asarray(Image.fromarray(arr).resize((IMAGE, IMAGE), Image.BILINEAR))
    cropped = arr[:, IMAGE // 2: IMAGE // 2 + IMAGE]  # the short side is IMAGE already: only the crop
    for cfg, pixels in [({"interpolation": "bilinear", "resize_mode": "squash"}, squashed),
                        ({"interpolation": "bicubic", "resize_mode": "shortest"}, cropped)]:
        bb.clip.visual.preprocess_cfg = cfg
        got = run_inference(model, [Datum(str(path), 0, "a", "wide.png")], classes, template, "fused")[0]
        want = by_hand(pixels)
        # torchvision resizes a PIL image with PIL itself, so the pixels are the same; what is left
        # is float32 arithmetic of the same tower called through another path: torch's fp32 default
        torch.testing.assert_close(got, want, msg=str(cfg))
    assert not torch.allclose(by_hand(squashed), by_hand(cropped), atol=1e-1)


@pytest.mark.parametrize("interpolation, mode", [("bicubic", "shortest"), ("bilinear", "squash"),
                                                 ("bicubic", "squash"), ("bilinear", "shortest")])
def test_the_example_script_preprocesses_as_mmrl(interpolation, mode):
    """examples/classify_exported.py (numpy + Pillow) builds the batch mmrl builds, for each resize."""
    import importlib.util
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from mmrl.data import preprocessing_spec
    from mmrl.data.transforms import transform_from_spec

    path = Path(__file__).resolve().parents[1] / "examples" / "classify_exported.py"
    spec_ = importlib.util.spec_from_file_location("classify_exported_pre", path)
    example = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(example)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (23, 41, 3), dtype=np.uint8))
    spec = preprocessing_spec(16, interpolation, mode)
    want = transform_from_spec(spec)(img).numpy()
    got = example.preprocess(img, spec)
    assert got.shape == want.shape == (3, 16, 16)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # the same pixels; float32 (x - m) / s
