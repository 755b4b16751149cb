"""The default backbone without network: one message at once, not minutes of retries and a traceback;
cached weights load without touching the network; `mmrl describe` is quiet. No test needs (or uses) the
network: being offline is simulated (HF_HUB_OFFLINE with empty caches, or a stubbed probe)."""
from __future__ import annotations

import os
import subprocess
import sys

import open_clip
import pytest

from helpers import make_benchmark_dataset
from mmrl.errors import BackboneUnavailableError
from mmrl.models import backbone as bb

WAYS_ON = ("connect to the internet once", "--backbone PATH", "--backbone toy-clip")


def _offline_env(tmp_path) -> dict:
    """An environment whose caches are empty and whose hub is offline."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HOME=str(tmp_path / "home"),
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("HF_HUB_CACHE", None)
    return env


def test_train_with_default_backbone_offline_is_one_message(tmp_path):
    make_benchmark_dataset(tmp_path / "data", "DescribableTextures")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "mmrl", "train", "--method", "mmrl", "--protocol", "fewshot",
                           "--dataset", "dtd", "--root", str(tmp_path / "data"), "--output", str(out)],
                          capture_output=True, text=True, timeout=300, env=_offline_env(tmp_path))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Retrying" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("mmrl: error: ")]
    assert len(errors) == 1 and "ViT-B-16" in errors[0] and "could not be downloaded" in errors[0]
    assert all(w in errors[0] for w in WAYS_ON), errors[0]
    assert not out.exists()  # nothing written for a run that could not start


def test_describe_does_not_warn_about_random_weights(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mmrl", "describe"], capture_output=True, text=True, timeout=300,
                          env=_offline_env(tmp_path))
    assert proc.returncode == 0 and "trainable parameters" in proc.stdout
    assert proc.stderr.strip() == "", proc.stderr


@pytest.fixture
def fake_open_clip(monkeypatch):
    """open_clip.create_model replaced: records (pretrained, hub offline mode at the call)."""
    from huggingface_hub import constants

    calls = []

    def create_model(name, pretrained=None, **kw):
        calls.append((pretrained, bool(constants.HF_HUB_OFFLINE)))
        if pretrained == "fail":
            raise RuntimeError("Failed to download weights: simulated")
        return "model"
    monkeypatch.setattr(open_clip, "create_model", create_model)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return calls


def test_no_connection_fails_without_attempting_the_download(monkeypatch, fake_open_clip):
    monkeypatch.setattr(bb, "cached_weights", lambda pcfg: None)
    probed = []
    monkeypatch.setattr(bb, "unreachable", lambda host: probed.append(host) or "no connection: simulated")
    with pytest.raises(BackboneUnavailableError) as e:
        bb._open_clip_model("ViT-B-16", "openai", True, "ViT-B-16")
    assert fake_open_clip == [] and probed == ["huggingface.co"]  # one quick probe, no download attempt
    assert "no connection: simulated" in str(e.value) and all(w in str(e.value) for w in WAYS_ON)


def test_failed_download_is_one_message(monkeypatch, fake_open_clip):
    monkeypatch.setattr(bb, "cached_weights", lambda pcfg: None)
    monkeypatch.setattr(bb, "unreachable", lambda host: None)
    real = open_clip.create_model
    monkeypatch.setattr(open_clip, "create_model", lambda name, pretrained=None, **kw: real(name, "fail", **kw))
    with pytest.raises(BackboneUnavailableError, match="RuntimeError: Failed to download weights: simulated"):
        bb._open_clip_model("ViT-B-16", "openai", True, "ViT-B-16")


def test_cached_weights_load_offline_without_probing(tmp_path, monkeypatch, fake_open_clip):
    from huggingface_hub import constants

    # the Hugging Face cache layout of the tag's file: models--org--name/{refs/main, snapshots/<commit>/file}
    repo, names = bb._hf_files(open_clip.get_pretrained_cfg("ViT-B-16", "openai"))
    entry = tmp_path / "hub" / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    (entry / "snapshots" / commit).mkdir(parents=True)
    (entry / "snapshots" / commit / names[-1]).write_bytes(b"weights")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(bb, "unreachable", lambda host: pytest.fail("probed the network for cached weights"))
    assert bb.cached_weights(open_clip.get_pretrained_cfg("ViT-B-16", "openai")).endswith(names[-1])
    assert bb._open_clip_model("ViT-B-16", "openai", True, "ViT-B-16") == "model"
    assert fake_open_clip == [("openai", True)]  # open_clip's own loading, with the hub offline
    assert constants.HF_HUB_OFFLINE is False  # restored afterwards


def test_hub_offline_setting_is_respected_without_probing(monkeypatch, fake_open_clip):
    from huggingface_hub import constants

    monkeypatch.setattr(bb, "cached_weights", lambda pcfg: None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(bb, "unreachable", lambda host: pytest.fail("probed although HF_HUB_OFFLINE is set"))
    with pytest.raises(BackboneUnavailableError, match="HF_HUB_OFFLINE is set"):
        bb._open_clip_model("ViT-B-16", "openai", True, "ViT-B-16")


def test_probe_reports_an_unreachable_host(monkeypatch):
    for v in bb._PROXY_VARS:
        monkeypatch.delenv(v, raising=False)
    # a port nothing listens on, on this machine: refused at once
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert "no connection" in bb.unreachable(f"127.0.0.1:{port}", timeout_s=2)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # only the proxy can tell: the download tries
    assert bb.unreachable(f"127.0.0.1:{port}", timeout_s=2) is None


def test_an_openai_copy_on_disk_is_named_as_the_way_on(tmp_path, monkeypatch, fake_open_clip):
    """open_clip fetches ViT-B-16's weights from the hub; OpenAI's own file in ~/.cache/clip (from an
    older open_clip or the `clip` package) is not used by it, but `--backbone FILE` reads it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    copy = tmp_path / ".cache" / "clip" / "ViT-B-16.pt"  # OpenAI's file name (open_clip 4 lists no URL)
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"weights")
    monkeypatch.setattr(bb, "cached_weights", lambda pcfg: None)
    monkeypatch.setattr(bb, "unreachable", lambda host: "no connection: simulated")
    with pytest.raises(BackboneUnavailableError, match=f"--backbone {copy}, found on this machine"):
        bb._open_clip_model("ViT-B-16", "openai", True, "ViT-B-16")
