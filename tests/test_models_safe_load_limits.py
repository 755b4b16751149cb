"""Files from others cannot make us allocate what they do not hold: zip bombs, tensors larger
than their storage, architectures no CLIP has, and weights that are not finite floats.

Every hostile file is built here by hand (zipfile + pickle opcodes). A record whose header
declares gigabytes holds a few bytes that are not deflate data, so any attempt to inflate it
would fail at once with a zlib error: the refusal message proves it was refused unread.
"""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest
import torch

from helpers import official_state_dict, write_official_checkpoint, write_tiny_clip
from mmrl.cli import main
from mmrl.models import load_backbone
from mmrl.models.backbone import clip_from_openai_state_dict
from mmrl.models.official import convert_official_state_dict, load_official_adapter
from mmrl.models.safe_load import (MAX_INFLATION, MAX_PICKLE_BYTES, MAX_SAFETENSORS_HEADER, CheckpointFormatError,
                                   load_clip_state_dict, load_dassl_checkpoint)

torch.set_num_threads(1)

GIB3 = 3 << 30
NOT_DEFLATE = b"\xff" * 64  # a reserved deflate block type: inflating it fails on the first byte


# ----------------------------------------------------------------------------- building archives
def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n) if n < 2**31 else b"\x8a\x08" + n.to_bytes(8, "little")


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def tensor_code(key: str, numel: int, size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """Opcodes of a float32 tensor as torch.save writes it: _rebuild_tensor_v2 on storage record
    ``key`` declared with ``numel`` elements."""
    pid = _tuple(_str("storage"), b"ctorch\nFloatStorage\n", _str(key), _str("cpu"), _int(numel))
    return (b"ctorch._utils\n_rebuild_tensor_v2\n"
            + _tuple(pid + b"Q", _int(0), _tuple(*map(_int, size)), _tuple(*map(_int, stride)), b"\x89", b"N")
            + b"R")


def state_dict_pickle(tensors: dict[str, bytes]) -> bytes:
    """``{"state_dict": {name: tensor, ...}}`` (a Dassl checkpoint's or a wrapped state dict's layout)."""
    items = b"".join(_str(k) + code for k, code in tensors.items())
    return b"\x80\x02}" + _str("state_dict") + b"}(" + items + b"us."


def write_zip(path: Path, records: dict[str, bytes], *, deflated: tuple[str, ...] = (),
              declared: dict[str, tuple[bytes, int]] | None = None, torchscript: bool = False) -> Path:
    """A PyTorch-style archive under ``archive/``: ``records`` STORED (or DEFLATED if named in
    ``deflated``); each ``declared`` record holds the given bytes, while its central-directory
    entry claims DEFLATED data inflating to the given size (a header that lies)."""
    declared = declared or {}
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in {**records, **{n: d for n, (d, _) in declared.items()}}.items():
            zf.writestr(f"archive/{name}", data,
                        compress_type=zipfile.ZIP_DEFLATED if name in deflated else zipfile.ZIP_STORED)
        if torchscript:
            zf.writestr("archive/constants.pkl", b"\x80\x02).")
    buf = bytearray(path.read_bytes())
    at = struct.unpack_from("<I", buf, buf.rindex(b"PK\x05\x06") + 16)[0]  # the central directory
    while buf[at:at + 4] == b"PK\x01\x02":  # one entry: 46 bytes, then name, extra field, comment
        n, m, k = struct.unpack_from("<HHH", buf, at + 28)
        name = buf[at + 46:at + 46 + n].decode().removeprefix("archive/")
        if name in declared:
            struct.pack_into("<H", buf, at + 10, zipfile.ZIP_DEFLATED)  # compression method
            struct.pack_into("<I", buf, at + 24, declared[name][1])     # uncompressed size
        at += 46 + n + m + k
    path.write_bytes(bytes(buf))
    return path


# ----------------------------------------------------------------------------- zip bombs
LOADERS = {
    "dassl checkpoint": (load_dassl_checkpoint, False),
    "torch.save backbone": (load_clip_state_dict, False),
    "TorchScript backbone": (load_clip_state_dict, True),
}


@pytest.mark.parametrize("kind", LOADERS)
def test_record_larger_than_its_storage_is_refused_unread(tmp_path, kind) -> None:
    # a 4-byte tensor whose record claims to inflate to 3 GiB
    load, torchscript = LOADERS[kind]
    path = write_zip(tmp_path / "bomb.pth.tar", {"data.pkl": state_dict_pickle({"w": tensor_code("0", 1, (1,), (1,))})},
                     declared={"data/0": (NOT_DEFLATE, GIB3)}, torchscript=torchscript)
    with pytest.raises(CheckpointFormatError,
                       match=rf"bomb.pth.tar: .*storage record 'archive/data/0' has {GIB3} bytes, the pickle declares 4"):
        load(path)


@pytest.mark.parametrize("kind", LOADERS)
def test_record_inflating_too_much_is_refused_unread(tmp_path, kind) -> None:
    # the pickle agrees with the record's 3 GiB, but 64 bytes on disk cannot honestly hold them
    load, torchscript = LOADERS[kind]
    numel = GIB3 // 4
    path = write_zip(tmp_path / "bomb.pt", {"data.pkl": state_dict_pickle({"w": tensor_code("0", numel, (numel,), (1,))})},
                     declared={"data/0": (NOT_DEFLATE, GIB3)}, torchscript=torchscript)
    with pytest.raises(CheckpointFormatError, match=rf"bomb.pt: record 'archive/data/0' would inflate from 64 to "
                                                    rf"{GIB3} bytes, more than {MAX_INFLATION}x"):
        load(path)


def test_many_small_records_cannot_add_up_to_a_bomb(tmp_path) -> None:
    # 40 real records of 1 MiB of zeros (~1 KB each deflated): each under the per-record slack,
    # together 40 MiB from ~50 KB; refused once the archive's budget is spent
    n = 1 << 18
    records = {f"data/{i}": bytes(4 * n) for i in range(40)}
    pkl = state_dict_pickle({f"w{i}": tensor_code(str(i), n, (n,), (1,)) for i in range(40)})
    path = write_zip(tmp_path / "many.pth.tar", {"data.pkl": pkl, **records}, deflated=tuple(records))
    with pytest.raises(CheckpointFormatError, match=rf"many.pth.tar: its records would inflate to \d+ bytes .*"
                                                    rf"more than {MAX_INFLATION}x its \d+ bytes on disk"):
        load_dassl_checkpoint(path)


@pytest.mark.parametrize("size, message", [
    pytest.param(GIB3, rf"archive/data.pkl holds {GIB3} bytes, more than the {MAX_PICKLE_BYTES} allowed", id="size"),
    pytest.param(8 << 20, rf"record 'archive/data.pkl' would inflate from 64 to {8 << 20} bytes", id="inflation"),
])
def test_data_pkl_is_bounded(tmp_path, size, message) -> None:
    path = write_zip(tmp_path / "pkl.pth.tar", {}, declared={"data.pkl": (NOT_DEFLATE, size)})
    with pytest.raises(CheckpointFormatError, match=rf"pkl.pth.tar: {message}"):
        load_dassl_checkpoint(path)
    with pytest.raises(CheckpointFormatError, match=rf"pkl.pth.tar: {message}"):
        load_clip_state_dict(path)


def test_deflated_but_honest_archives_still_load(tmp_path) -> None:
    # a torch.save file re-zipped with deflate (random weights barely shrink) reads as before
    sd = {"a": torch.randn(300, 300), "b": torch.arange(10.0)}
    torch.save({"state_dict": sd}, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as zin, \
            zipfile.ZipFile(tmp_path / "zipped.pt", "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    for load in (load_dassl_checkpoint, load_clip_state_dict):
        out = load(tmp_path / "zipped.pt")
        assert out.keys() == sd.keys() and all(torch.equal(out[k], v) for k, v in sd.items())


def test_safetensors_header_is_bounded(tmp_path) -> None:
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 32 << 20) + b'{"__metadata__": {}}')
    with pytest.raises(CheckpointFormatError, match=rf"huge.safetensors: safetensors header of {32 << 20} bytes, "
                                                    rf"more than the {MAX_SAFETENSORS_HEADER} allowed"):
        load_clip_state_dict(path)


def test_convert_official_refuses_a_bomb_in_one_line(tmp_path, capsys) -> None:
    clip = write_tiny_clip(tmp_path / "clip.pt")
    bomb = write_zip(tmp_path / "model.pth.tar-5", {"data.pkl": state_dict_pickle({"w": tensor_code("0", 1, (1,), (1,))})},
                     declared={"data/0": (NOT_DEFLATE, GIB3)})
    argv = ["convert-official", str(bomb), "--method", "mmrl", "--backbone", str(clip), "--dataset", "dtd",
            "--protocol", "base2novel", "-o", str(tmp_path / "run"), "--set", "method.first_rep_block=2",
            "--set", "method.rep_dim=16"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mmrl: error: {bomb}: ") and f"has {GIB3} bytes" in err[0]


# ----------------------------------------------------------------------------- tensors larger than their storage
@pytest.mark.parametrize("legacy", [False, True])
def test_expanded_views_are_refused(tmp_path, legacy) -> None:
    # a 20000-token positional embedding that is one row viewed 20000 times (stride 0)
    path = tmp_path / "expanded.pt"
    torch.save({"positional_embedding": torch.zeros(1, 64).expand(20000, 64)}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointFormatError, match=r"expanded.pt: .*tensor of size \(20000, 64\) with strides "
                                                    r"\(0, 1\) spans 5120000 bytes, more than the 256 bytes"):
        load_clip_state_dict(path)
    if not legacy:
        torch.save({"state_dict": {"w": torch.zeros(1, 64).expand(20000, 64)}}, path)
        with pytest.raises(CheckpointFormatError, match="expanded.pt: .*spans 5120000 bytes"):
            load_dassl_checkpoint(path)


def test_views_within_their_storage_still_load(tmp_path) -> None:
    table = torch.arange(12.0).reshape(3, 4)
    sd = {"table": table, "tail": table[1:, 1:], "ids": torch.arange(5.0).expand(1, -1)}  # stride 0 on a size-1 dim
    torch.save(sd, tmp_path / "views.pt")
    out = load_clip_state_dict(tmp_path / "views.pt")
    assert all(torch.equal(out[k], v) for k, v in sd.items())


# ----------------------------------------------------------------------------- architectures no CLIP has
@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> dict[str, torch.Tensor]:
    return load_clip_state_dict(write_tiny_clip(tmp_path_factory.mktemp("limits") / "clip.pt"))


def _more_layers(sd: dict[str, torch.Tensor], tower: str, n: int) -> dict[str, torch.Tensor]:
    return {**sd, **{f"{tower}resblocks.{i}.ln_1.weight": torch.ones(64) for i in range(3, n)}}


@pytest.mark.parametrize("change, message", [
    pytest.param(lambda sd: {**sd, "positional_embedding": torch.zeros(2048, 64)},
                 r"context length 2048 \(from positional_embedding\) is outside 1..1024", id="context"),
    pytest.param(lambda sd: _more_layers(sd, "transformer.", 129),
                 r"text layers 129 \(from transformer.resblocks.\*\) is outside 1..128", id="layers"),
    pytest.param(lambda sd: {**sd, "text_projection": torch.zeros(64, 5000)},
                 r"embedding dimension 5000 \(from text_projection\) is outside 1..4096", id="embed_dim"),
    # within the caps, but naming layers the file does not hold: refused before they are allocated
    pytest.param(lambda sd: _more_layers(sd, "visual.transformer.", 40),
                 r"tensors missing, unexpected or of other shapes: visual.transformer.resblocks.10.attn.in_proj_bias",
                 id="layers not held"),
])
def test_architecture_is_bounded_by_what_the_file_holds(tmp_path, tiny_sd, change, message) -> None:
    path = tmp_path / "big.pt"
    torch.save(change(tiny_sd), path)
    with pytest.raises(ValueError, match=rf"backbone '{path}': .*{message}"):
        load_backbone(str(path))


# ----------------------------------------------------------------------------- integrity of the weights
def _with(sd: dict[str, torch.Tensor], key: str, fn) -> dict[str, torch.Tensor]:
    t = sd[key].clone()
    return {**sd, key: fn(t)}


@pytest.mark.parametrize("key, fn, message", [
    pytest.param("visual.proj", lambda t: t.index_fill_(0, torch.tensor([0]), float("nan")),
                 r"holds 32 NaN and 0 infinite values", id="NaN"),
    pytest.param("logit_scale", lambda t: t.fill_(float("inf")), r"holds 0 NaN and 1 infinite values", id="Inf"),
    pytest.param("ln_final.weight", lambda t: t.long(), r"is int64, where a floating-point weight is expected",
                 id="int"),
])
def test_backbone_weights_must_be_finite_floats(tiny_sd, key, fn, message) -> None:
    with pytest.raises(CheckpointFormatError, match=rf"backbone 'bad.pt': tensor '{key}' {message}"):
        clip_from_openai_state_dict(_with(tiny_sd, key, fn), "bad.pt")


def test_backbone_metadata_is_not_a_weight(tiny_sd) -> None:
    # OpenAI's 0-dim ints and a causal mask with -inf, as their archives and traced exports hold
    mask = torch.full((77, 77), float("-inf")).triu_(1)
    meta = {"input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
            "vocab_size": torch.tensor(49408), "attn_mask": mask}
    clip = clip_from_openai_state_dict({**tiny_sd, **meta}, "ok.pt")
    assert torch.equal(clip.visual.proj, tiny_sd["visual.proj"])


ADAPTER = {"rep_tokens": (2, 4), "vision_aligner.0.weight": (64, 4), "vision_aligner.0.bias": (64,),
           "text_aligner.0.weight": (64, 4), "text_aligner.0.bias": (64,), "proj_rep": (64, 32)}


@pytest.mark.parametrize("fn, message", [
    pytest.param(lambda t: t.fill_(float("nan")), r"holds 8 NaN and 0 infinite values", id="NaN"),
    pytest.param(lambda t: t.int(), r"is int32, where a floating-point weight is expected", id="int"),
])
def test_official_adapter_weights_must_be_finite_floats(tmp_path, fn, message) -> None:
    tensors = {k: torch.randn(s) for k, s in ADAPTER.items()}
    tensors["rep_tokens"] = fn(tensors["rep_tokens"])
    key = "module.representation_learner.compound_rep_tokens"
    with pytest.raises(ValueError, match=rf"official checkpoint: tensor '{key}' {message}"):
        convert_official_state_dict(official_state_dict(tensors, "mmrl", "module."), "mmrl")
    path = write_official_checkpoint(tmp_path / "model.pth.tar-5", tensors, "mmrl", "module.")
    with pytest.raises(ValueError, match=rf"^{path}: official checkpoint: tensor '{key}' {message}"):
        load_official_adapter(path, "mmrl", ADAPTER)


def test_torchscript_modules_nested_deeper_than_the_recursion_limit(tmp_path, capsys) -> None:
    """A TorchScript archive whose modules nest 20000 deep (a few hundred KB of pickle) is walked
    without recursion: the file is refused in one line for what it is (no tensors), not with a
    RecursionError."""
    depth = 20_000
    module = b"c__torch__.evil\nM\n" + b")\x81"          # GLOBAL __torch__.evil.M, EMPTY_TUPLE, NEWOBJ
    key = b"X" + struct.pack("<I", 3) + b"sub"             # BINUNICODE 'sub'
    pkl = b"\x80\x02" + (module + b"}" + key) * depth + module + b"sb" * depth + b"."
    path = tmp_path / "deep.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/version", "3\n")
        zf.writestr("archive/constants.pkl", b"\x80\x02).")
        zf.writestr("archive/code/__torch__/evil.py", "class M(Module):\n  pass\n")
    with pytest.raises(CheckpointFormatError, match="TorchScript archive without any tensors"):
        load_clip_state_dict(path)
    assert main(["describe", "--backbone", str(path)]) != 0
    err = capsys.readouterr().err
    assert "without any tensors" in err and "Recursion" not in err and err.count("\n") == 1
