"""Safe readers: OpenAI-style TorchScript CLIP archives, plain state dicts, hostile pickles."""
from __future__ import annotations

import builtins
import collections
import io
import pickle
import struct
import sys
import warnings
import zipfile
from pathlib import Path

import open_clip
import pytest
import torch
from torch import nn

from mmrl.models import safe_load
from mmrl.models.safe_load import CheckpointFormatError, load_clip_state_dict, load_dassl_checkpoint

torch.set_num_threads(1)


def tiny_clip() -> nn.Module:
    torch.manual_seed(0)
    return open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=2, width=64, patch_size=8, image_size=32, head_width=64),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=1000, width=64, heads=1, layers=2),
        quick_gelu=True,
    ).eval()


@pytest.fixture(scope="module")
def traced_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, dict[str, torch.Tensor]]:
    """A tiny CLIP traced like OpenAI's release (forward, encode_image, encode_text) and saved
    with torch.jit.save; also what torch.jit.load's state_dict() says it holds."""
    model = tiny_clip()
    img, txt = torch.ones(1, 3, 32, 32), torch.zeros(1, 77, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notices
        traced = torch.jit.trace_module(model, {"forward": (img, txt), "encode_image": (img,), "encode_text": (txt,)})
        path = tmp_path_factory.mktemp("jit") / "ViT-tiny.pt"
        torch.jit.save(traced, str(path))
        jit_sd = {k: v.clone() for k, v in torch.jit.load(str(path), map_location="cpu").state_dict().items()}
    return model, path, jit_sd


# ----------------------------------------------------------------------------- TorchScript archives
def test_torchscript_archive_matches_model_state_dict(traced_clip, monkeypatch) -> None:
    model, path, jit_sd = traced_clip
    names = zipfile.ZipFile(path).namelist()
    assert any("/code/__torch__/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names)

    def refuse(*a, **k):  # the reader must neither run TorchScript nor fall back to torch.load
        raise AssertionError("torch.jit.load / torch.load called")

    imported: list[str] = []
    real_import = builtins.__import__

    def recording_import(name, *args, **kwargs):
        imported.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(builtins, "__import__", recording_import)
    before = set(sys.modules)
    sd = load_clip_state_dict(path)
    monkeypatch.undo()

    assert not [n for n in imported if n.startswith(("__torch__", "open_clip"))]
    assert not [m for m in set(sys.modules) - before if m.startswith("__torch__")]
    # Same keys as torch.jit.load(...).state_dict(): the model's persistent state plus the
    # attn_mask buffer open_clip registers as non-persistent (TorchScript keeps no such flag).
    assert set(sd) == set(jit_sd)
    ref = model.state_dict()
    assert set(sd) - set(ref) == {"attn_mask"}
    for k, v in ref.items():
        assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), k
    assert torch.equal(sd["attn_mask"], jit_sd["attn_mask"])
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in sd and sd["logit_scale"].shape == ()


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)  # int64 num_batches_tracked buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.lin(x))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.seq = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
        self.register_buffer("table", torch.arange(12.0).reshape(3, 4))
        self.register_buffer("tail", self.table[1:, 1:])  # a strided view sharing table's storage
        self.count = 3  # non-tensor attribute: skipped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.seq(x) + self.tail.sum() * self.count


def test_scripted_fp16_module_with_views(tmp_path) -> None:
    torch.manual_seed(0)
    net = _Net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(net).half()
        path = tmp_path / "net.pt"
        torch.jit.save(scripted, str(path))
        ref = torch.jit.load(str(path)).state_dict()
    sd = load_clip_state_dict(path)
    assert set(sd) == set(ref)
    for k, v in ref.items():
        assert sd[k].dtype == v.dtype and sd[k].stride() == v.stride() and torch.equal(sd[k], v), k
    assert sd["blocks.1.lin.weight"].dtype == torch.float16
    assert sd["blocks.0.bn.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(sd["tail"], torch.arange(12.0).reshape(3, 4)[1:, 1:].half())


# ----------------------------------------------------------------------------- other formats
def test_plain_state_dict_round_trips(tmp_path) -> None:
    ref = tiny_clip().state_dict()
    p = tmp_path / "sd.pt"
    torch.save(ref, p)
    sd = load_clip_state_dict(p)
    assert set(sd) == set(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)

    p2 = tmp_path / "wrapped.pth"  # {"state_dict": ...} with DataParallel's module. prefix
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.items()}, "epoch": 3}, p2)
    sd2 = load_clip_state_dict(p2)
    assert set(sd2) == set(ref) and all(torch.equal(sd2[k], ref[k]) for k in ref)

    from safetensors.torch import save_file

    p3 = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in ref.items()}, str(p3))
    sd3 = load_clip_state_dict(p3)
    assert set(sd3) == set(ref) and all(torch.equal(sd3[k], ref[k]) for k in ref)
    p4 = tmp_path / "clip.bin"  # safetensors recognised by content too
    p4.write_bytes(p3.read_bytes())
    assert set(load_clip_state_dict(p4)) == set(ref)


def test_bad_files_give_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_clip_state_dict(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointFormatError, match="junk.pt.*not a recognised"):
        load_clip_state_dict(junk)
    z = tmp_path / "other.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointFormatError, match="other.zip.*neither a TorchScript archive nor a torch.save"):
        load_clip_state_dict(z)
    with pytest.raises(CheckpointFormatError, match="other.zip.*neither"):
        load_dassl_checkpoint(z)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointFormatError, match="bad.safetensors"):
        load_clip_state_dict(bad_st)
    obj = tmp_path / "module.pt"  # a pickled nn.Module: weights_only refuses, so do we
    torch.save(nn.Linear(2, 2), obj)
    with pytest.raises(CheckpointFormatError, match="module.pt.*refusing"):
        load_clip_state_dict(obj)
    legacy = tmp_path / "legacy.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointFormatError, match="legacy.pt.*not a PyTorch zip"):
        load_dassl_checkpoint(legacy)


def test_dassl_reader_rejects_wrong_content(tmp_path, traced_clip) -> None:
    _, jit_path, _ = traced_clip
    with pytest.raises(CheckpointFormatError, match="TorchScript archive, not a Dassl"):
        load_dassl_checkpoint(jit_path)
    p = tmp_path / "nosd.pth.tar"
    torch.save({"epoch": 1, "model": {"w": torch.ones(1)}}, p)
    with pytest.raises(CheckpointFormatError, match="no 'state_dict' dict.*epoch"):
        load_dassl_checkpoint(p)
    p2 = tmp_path / "empty.pth.tar"
    torch.save({"state_dict": {"n": 3}}, p2)
    with pytest.raises(CheckpointFormatError, match="holds no tensors"):
        load_dassl_checkpoint(p2)


# ----------------------------------------------------------------------------- hostile pickles
class Raw:
    """Parts of a pickle: bytes are written verbatim (opcodes that push exactly one object and
    use no memo), other parts are pickled normally. Lets tests splice hostile opcodes into an
    otherwise genuine torch pickle."""

    def __init__(self, *parts: object) -> None:
        self.parts = parts


class _ArchivePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol-2 pickler writing storages as torch does: ('storage', <Type>Storage, key, 'cpu', numel)."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, f: io.BytesIO) -> None:
        super().__init__(f, protocol=2)
        self.records: dict[str, bytes] = {}
        self._keys: dict[int, str] = {}

    def persistent_id(self, obj: object):  # noqa: ANN201
        if not isinstance(obj, torch.storage.TypedStorage):
            return None
        ptr = obj._data_ptr()
        if ptr not in self._keys:
            key = self._keys[ptr] = str(len(self._keys))
            raw = torch.empty(0, dtype=torch.uint8).set_(obj._untyped_storage)
            self.records[key] = raw.numpy().tobytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation notice
            storage_type = getattr(torch, obj.pickle_storage_type())
        return ("storage", storage_type, self._keys[ptr], "cpu", obj._size())

    def _save_raw(self, obj: Raw) -> None:
        for part in obj.parts:
            if isinstance(part, bytes):
                self.write(part)
            else:
                self.save(part)

    dispatch[Raw] = _save_raw


def write_archive(path: Path, obj: object, torchscript: bool = False) -> Path:
    """A PyTorch zip archive holding ``obj`` (with TorchScript's code/ and constants.pkl if asked)."""
    buf = io.BytesIO()
    pickler = _ArchivePickler(buf)
    pickler.dump(obj)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
        for key, data in pickler.records.items():
            zf.writestr(f"archive/data/{key}", data)
        if torchscript:
            zf.writestr("archive/constants.pkl", b"\x80\x02).")
            zf.writestr("archive/code/__torch__/evil.py", "class Root(Module):\n  pass\n")
    return path


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


_REDUCE, _BUILD, _TUPLE1, _TUPLE2, _NEWOBJ, _SETITEM = b"R", b"b", b"\x85", b"\x86", b"\x81", b"s"


def payloads(marker: Path) -> dict[str, bytes]:
    """Opcode sequences that each create ``marker`` when unpickled by a stock unpickler
    (pushing one object)."""
    touch = _str(f"touch {marker}")
    set_setstate = b"N}" + _str("__setstate__") + _global("posix", "system") + _SETITEM + _TUPLE2 + _BUILD
    return {
        "os.system": _global("posix", "system") + touch + _TUPLE1 + _REDUCE,
        "os.system (py name)": _global("os", "system") + touch + _TUPLE1 + _REDUCE,
        "builtins.exec": _global("builtins", "exec") + _str(f"open({str(marker)!r}, 'w').close()") + _TUPLE1 + _REDUCE,
        "subprocess.call": (_global("subprocess", "call") + b"](" + _str("touch") + _str(str(marker)) + b"e"
                            + _TUPLE1 + _REDUCE),
        # BUILD sets __setstate__ = os.system on an OrderedDict, a second BUILD then calls it
        "BUILD __setstate__": _global("collections", "OrderedDict") + b")" + _REDUCE + set_setstate + touch + _BUILD,
        "NEWOBJ+BUILD": _global("evil.module", "Thing") + b")" + _NEWOBJ + set_setstate + touch + _BUILD,
    }


def test_payloads_are_live(tmp_path) -> None:
    """Control: a stock unpickler does run these payloads (else the tests below prove nothing)."""
    marker = tmp_path / "pwned"
    for name, code in payloads(marker).items():
        if name == "NEWOBJ+BUILD":  # needs an importable class; same BUILD trick as above
            continue
        pickle.loads(b"\x80\x02" + code + b".")
        assert marker.exists(), name
        marker.unlink()


@pytest.mark.parametrize("where", ["beside state_dict", "inside state_dict", "as optimizer state"])
def test_hostile_dassl_checkpoint_runs_nothing(tmp_path, where) -> None:
    marker = tmp_path / "pwned"
    weights = {"a.weight": torch.randn(3, 4), "a.bias": torch.arange(3.0)}
    for name, code in payloads(marker).items():
        sd = dict(weights)
        ckpt: dict[str, object] = {"state_dict": sd, "epoch": 2}
        if where == "beside state_dict":
            ckpt["scheduler"] = Raw(code)
        elif where == "inside state_dict":
            sd["evil"] = Raw(code)
        else:
            ckpt["optimizer"] = {"state": {0: Raw(code)}, "param_groups": [Raw(code)]}
        path = write_archive(tmp_path / "model.pth.tar-5", ckpt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the skipped non-tensor state_dict entry
            out = load_dassl_checkpoint(path)
        assert not marker.exists(), name
        assert set(out) == set(weights) and all(torch.equal(out[k], v) for k, v in weights.items()), name


def test_hostile_root_object_raises_cleanly(tmp_path) -> None:
    marker = tmp_path / "pwned"
    for name, code in payloads(marker).items():
        path = write_archive(tmp_path / "root.pth", Raw(code))
        with pytest.raises(CheckpointFormatError, match="root.pth"):
            load_dassl_checkpoint(path)
        assert not marker.exists(), name


def test_hostile_torchscript_archive_runs_nothing(tmp_path) -> None:
    marker = tmp_path / "pwned"
    w = torch.randn(2, 3)
    for name, code in payloads(marker).items():
        # a '__torch__' module whose attributes hold a tensor, a hostile object and a submodule
        sub = Raw(_global("__torch__.evil", "Sub") + b")" + _NEWOBJ, {"bias": torch.ones(2), "x": Raw(code)}, _BUILD)
        root = Raw(_global("__torch__.evil", "Root") + b")" + _NEWOBJ,
                   {"evil": Raw(code), "weight": w, "training": False, "sub": sub}, _BUILD)
        path = write_archive(tmp_path / "clip.pt", root, torchscript=True)
        sd = load_clip_state_dict(path)
        assert not marker.exists(), name
        assert set(sd) == {"weight", "sub.bias"} and torch.equal(sd["weight"], w)
        path = write_archive(tmp_path / "root.pt", Raw(code), torchscript=True)
        with pytest.raises(CheckpointFormatError, match="does not hold a module"):
            load_clip_state_dict(path)
        assert not marker.exists(), name


def test_unpickler_allow_list_details(tmp_path) -> None:
    def load(code: bytes) -> object:
        return safe_load.RestrictedUnpickler(io.BytesIO(b"\x80\x02" + code + b".")).load()

    cmd = f"touch {tmp_path / 'pwned'}"
    ph = load(_global("posix", "system") + _str(cmd) + _TUPLE1 + _REDUCE)
    assert isinstance(ph, safe_load.Placeholder) and (ph.module, ph.name) == ("posix", "system")
    assert ph.ph_args == (cmd,) and not (tmp_path / "pwned").exists()
    # protocol-2 names of builtins are mapped back (Python 3 pickles write __builtin__.set)
    assert load(_global("__builtin__", "set") + b"](K\x01K\x02e" + _TUPLE1 + _REDUCE) == {1, 2}
    assert load(_global("collections", "OrderedDict") + b")" + _REDUCE) == collections.OrderedDict()
    assert load(_global("torch", "float16")) is torch.float16
    # containers of unknown classes (an optimizer's defaultdict state) record their items
    dd = load(_global("collections", "defaultdict") + _global("__builtin__", "dict") + _TUPLE1 + _REDUCE
              + b"(K\x01" + _str("a") + b"u" + b"(K\x05e")
    assert isinstance(dd, safe_load.Placeholder) and dd.ph_items == [(1, "a")] and dd.ph_list == [5]
    assert dd.ph_args == (dict,)
    # a BUILD must not retarget one of our own rebuild functions
    defaults = safe_load._rebuild_tensor_v2.__defaults__
    load(_global("torch._utils", "_rebuild_tensor_v2") + b"N}" + _str("__defaults__") + b"N" + _SETITEM
         + _TUPLE2 + _BUILD)
    assert safe_load._rebuild_tensor_v2.__defaults__ == defaults and "__defaults__" not in vars(safe_load._rebuild_tensor_v2)
    # only placeholders and allow-listed callables may be called
    with pytest.raises(pickle.UnpicklingError, match="refusing to call"):
        load(_global("torch", "float32") + b")" + _REDUCE)
    with pytest.raises(pickle.UnpicklingError, match="refusing to instantiate"):
        load(_global("torch._utils", "_rebuild_tensor_v2") + b")" + _NEWOBJ)
    with pytest.raises(pickle.UnpicklingError, match="outside a zip"):
        load(b"(" + _str("storage") + _global("torch", "FloatStorage") + _str("0") + _str("cpu") + b"K\x01tQ")


def test_tensor_geometry_is_checked(tmp_path) -> None:
    # a tensor claiming more elements than its storage record holds is refused, not grown
    st = torch.arange(4.0)
    code = (_global("torch._utils", "_rebuild_tensor_v2")
            + b"(" + b"(" + _str("storage") + _global("torch", "FloatStorage") + _str("0") + _str("cpu") + b"K\x04tQ"
            + b"K\x00" + b"K\x08" + _TUPLE1 + b"K\x01" + _TUPLE1 + b"\x89" + b"N" + b"t" + _REDUCE)
    path = tmp_path / "over.pth"
    write_archive(path, {"state_dict": {"w": st}})  # provides record 0 (16 bytes)
    with zipfile.ZipFile(path) as zf:
        records = {n: zf.read(n) for n in zf.namelist()}
    records["archive/data.pkl"] = b"\x80\x02}" + _str("state_dict") + b"}" + _str("w") + code + _SETITEM + _SETITEM + b"."
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in records.items():
            zf.writestr(n, data)
    with pytest.raises(CheckpointFormatError, match="overruns storage record"):
        load_dassl_checkpoint(path)
