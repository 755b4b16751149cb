"""Preprocessing, the torch Dataset (determinism, bad images) and the loader helper."""
from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_data import write_image
from mmrl.data import (
    CLIP_MEAN,
    CLIP_STD,
    BadImageError,
    Datum,
    ImageDataset,
    build_loader,
    build_transform,
    find_bad_images,
)

torch.set_num_threads(1)


def _datum(path, label=0) -> Datum:
    return Datum(str(path), label, f"c{label}", path.name)


@pytest.fixture
def items(tmp_path):
    out = []
    for i in range(6):
        p = write_image(tmp_path / f"img{i}.png", size=24)
        out.append(_datum(p, i % 3))
    return out


def test_test_transform_resize_crop_normalize(tmp_path):
    # a constant-colour non-square image: bicubic resize keeps the constant, so every pixel must equal
    # (c / 255 - mean) / std; tolerance = one 8-bit level through the std (resampling rounds to 8 bits)
    color = (200, 100, 50)
    path = tmp_path / "c.png"
    Image.new("RGB", (40, 20), color).save(path)
    x = build_transform(False, 16)(Image.open(path).convert("RGB"))
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    for ch in range(3):
        expected = (color[ch] / 255 - CLIP_MEAN[ch]) / CLIP_STD[ch]
        assert torch.allclose(x[ch], torch.full((16, 16), expected), atol=1.01 / 255 / CLIP_STD[ch])


def test_test_transform_is_short_side_resize_then_center_crop():
    # left half black, right half white, 40x20: short side -> 16 makes it 32x16, centre crop keeps x in [8, 24)
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, 20:] = 255
    x = build_transform(False, 16)(Image.fromarray(arr))
    row = x[0, 8]
    assert row[0] < 0 and row[-1] > 0  # both halves in the crop, split near the middle
    assert (row < 0).sum().item() == 8


def test_train_transform_shape_and_randomness(items):
    t = build_transform(True, 16)
    img = Image.open(items[0].impath).convert("RGB")
    torch.manual_seed(0)
    a = t(img)
    b = t(img)
    assert a.shape == (3, 16, 16) and not torch.equal(a, b)
    with pytest.raises(ValueError):
        build_transform(True, 0)


def test_same_seed_epoch_index_gives_identical_tensor(items):
    ds = ImageDataset(items, build_transform(True, 16), seed=3)
    ds.set_epoch(2)
    x1, y1, i1 = ds[4]
    # interleave other draws: the result depends only on (seed, epoch, index)
    torch.rand(100)
    ds[1]
    other = ImageDataset(items, build_transform(True, 16), seed=3)
    other.set_epoch(2)
    x2, y2, i2 = other[4]
    assert torch.equal(x1, x2) and (y1, i1) == (y2, i2) == (items[4].label, 4)
    ds.set_epoch(3)
    assert not torch.equal(ds[4][0], x1)  # a new epoch draws a new crop
    assert not torch.equal(ImageDataset(items, build_transform(True, 16), seed=4)[4][0],
                           ImageDataset(items, build_transform(True, 16), seed=3)[4][0])


def test_getitem_leaves_caller_rngs_alone(items):
    ds = ImageDataset(items, build_transform(True, 16), seed=0)
    torch.manual_seed(11)
    random.seed(11)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(11)
    random.seed(11)
    ds[0]
    ds[1]
    got = (torch.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1]


def test_worker_count_does_not_change_batches(items):
    def batches(workers):
        ds = ImageDataset(items, build_transform(True, 16), seed=5)
        ds.set_epoch(1)
        loader = build_loader(ds, 2, train=False, workers=workers, pin_memory=False)
        return [(x, y, i) for x, y, i in loader]

    a, b = batches(0), batches(2)
    assert len(a) == 3
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)


def test_train_loader_shuffles_deterministically_and_drops_last(items):
    ds = ImageDataset(items, build_transform(False, 16))
    order = lambda seed: [i.tolist() for _, _, i in build_loader(ds, 4, train=True, seed=seed, pin_memory=False)]
    assert order(1) == order(1) and len(order(1)) == 1 and len(order(1)[0]) == 4  # 6 items, batch 4: last dropped


def test_corrupt_image_error_names_file(tmp_path, items):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    ds = ImageDataset(items + [_datum(bad)], build_transform(False, 16))
    with pytest.raises(BadImageError, match="broken.jpg"):
        ds[len(items)]
    missing = ImageDataset([_datum(tmp_path / "gone.png")], build_transform(False, 16))
    with pytest.raises(BadImageError, match="gone.png"):
        missing[0]


def test_skip_bad_filters_counts_and_logs(tmp_path, items, caplog):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"garbage")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(open(items[0].impath, "rb").read()[:60])
    gone = tmp_path / "gone.png"
    mixed = [items[0], _datum(bad), items[1], _datum(gone), _datum(truncated), items[2]]
    with caplog.at_level(logging.WARNING, logger="mmrl.data"):
        ds = ImageDataset(mixed, build_transform(False, 16), skip_bad=True)
    assert ds.num_bad == 3 and len(ds) == 3 and ds.items == items[:3]
    assert "broken.jpg" in caplog.text and "gone.png" in caplog.text and "truncated.png" in caplog.text
    assert [i for _, _, i in (ds[k] for k in range(len(ds)))] == [0, 1, 2]
    assert [p for p, _ in find_bad_images(mixed, decode=False)] == [str(gone)]  # without decoding: only absent


def _stripes():
    """40x20: a white stripe in x < 4 (the left tenth), the rest black."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :4] = 255
    return Image.fromarray(arr)


def test_squash_keeps_the_whole_image_shortest_crops_it():
    # shortest: 40x20 -> 32x16, centre crop keeps x in [8, 24) of 32: the stripe (x < 3.2) is cut off;
    # squash: 40x20 -> 16x16 whole, the stripe is the first 16 / 10 = 1.6 columns
    crop = build_transform(False, 16)(_stripes())
    squash = build_transform(False, 16, resize_mode="squash")(_stripes())
    assert crop.shape == squash.shape == (3, 16, 16)
    assert (crop[0] < 0).all()                            # no white left after the crop
    assert (squash[0, :, 0] > 0).all() and (squash[0, :, 8:] < 0).all()


def test_bilinear_differs_from_bicubic_and_train_takes_it():
    from torchvision import transforms as T

    a = build_transform(False, 16, interpolation="bilinear")(_stripes())
    b = build_transform(False, 16, interpolation="bicubic", resize_mode="squash")(_stripes())
    c = build_transform(False, 16, interpolation="bilinear", resize_mode="squash")(_stripes())
    assert torch.equal(a, build_transform(False, 16)(_stripes()))  # the stripe is cropped away either way
    assert not torch.equal(b, c)                                    # the stripe's edge is resampled differently
    crop = build_transform(True, 16, interpolation="bilinear").transforms[0]
    assert isinstance(crop, T.RandomResizedCrop) and crop.interpolation == T.InterpolationMode.BILINEAR


def test_spec_without_resize_mode_means_shortest_and_bad_modes_are_named():
    from mmrl.data import preprocessing_spec
    from mmrl.data.transforms import transform_from_spec

    spec = preprocessing_spec(16)
    assert spec["resize_mode"] == "shortest" and spec["interpolation"] == "bicubic"
    old = {k: v for k, v in spec.items() if k != "resize_mode"}   # files exported by mmrl 0.2
    assert torch.equal(transform_from_spec(old)(_stripes()), transform_from_spec(spec)(_stripes()))
    for key, value, said in [("resize_mode", "longest", "resize_mode 'longest'; expected one of shortest, squash"),
                             ("interpolation", "nearest", "interpolation 'nearest'; expected one of bicubic")]:
        with pytest.raises(ValueError, match=said):
            transform_from_spec({**spec, key: value})
    with pytest.raises(ValueError, match="interpolation 'lanczos'"):
        build_transform(True, 16, interpolation="lanczos")
