"""Load a backbone (a CLIP ViT or another open_clip transformer family) the ways users name it.

A backbone spec is one string (`--backbone SPEC`):

=====================================  ==================================================
spec                                   meaning
=====================================  ==================================================
``ViT-B-16`` / ``ViT-B-16:openai``     open_clip model name + pretrained tag (downloaded
                                       by open_clip; a bare name means the ``openai`` tag,
                                       or the only/first tag of a name without one)
``ViT-L-14:laion2b_s32b_b82k``         any open_clip tag
``/path/ViT-B-16.pt``                  OpenAI-format file: OpenAI's TorchScript archive
                                       (tensors read without executing it), a
                                       ``torch.save`` state dict or a ``.safetensors``
                                       file; the architecture is inferred from shapes
``ViT-B-16:/path/open_clip_ckpt.pt``   local open_clip checkpoint with its model name
``toy-clip``                           the tiny CLIP pretrained on the synthetic world
                                       that ships inside the package (``mmrl demo``)
=====================================  ==================================================

Every backbone is an open_clip model (``CLIP``, or ``CustomTextCLIP`` for timm image towers and
SigLIP-style text towers) in fp32, frozen and in eval mode, plus its tokenizer: CLIP's BPE
tokenizer, or the model's own open_clip tokenizer for another vocabulary. Which towers are
accepted, and how the method reads them, is :mod:`mmrl.models.towers` (docs/method.md, "Other
tower families"); ``mmrl backbones`` lists open_clip's pretrained models with the verdict. OpenAI
weights were trained with QuickGELU: we set it from the pretrained tag's metadata (or always, for
OpenAI-format files) so the user never has to know.

Pretrained weights of an open_clip name are loaded from the local cache without any
network access when they are there. When they are not, the download server is probed
first (a few seconds at most): without a connection :class:`BackboneUnavailableError`
says so at once and names the ways on, instead of minutes of retries and a traceback.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import importlib.util
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import torch
from torch import nn

from mmrl.backbone_spec import CHECKPOINT_SUFFIXES, TOY_CLIP_FILE, TOY_CLIP_NAME
from mmrl.errors import BackboneUnavailableError
from mmrl.models.safe_load import check_weights, load_clip_state_dict
from mmrl.models.towers import (Towers, attention_layout_problem, block_problem, check_block_math,  # noqa: F401
                               refusal, towers_of, towers_problem)

# open_clip (with timm, transformers and huggingface_hub, which it pulls in) is imported inside the
# functions that build or name a backbone: ~4 s on 2 cores, which a deployed Classifier, the
# torch-only engine paths and `mmrl --help` never pay.

CLIP_BPE_VOCAB = 49408  # size of CLIP's BPE vocabulary (open_clip's SimpleTokenizer)

# The largest dimensions an OpenAI-format file may declare: about twice those of the largest
# CLIPs open_clip 3.3 configures (its model_configs: vision width 1792 and 56 layers, ViT-e-14;
# text width 1280, PE-Core-bigG-14-448, and 36 layers, ViT-e-14; image size 512, SigLIP2-512;
# patch 32; embedding 1536, ViT-gopt-16-SigLIP2-384; vocabulary 901,629, ViT-bigG-14-worldwide;
# context 77), the context length a generous 13x for long-text CLIPs (Long-CLIP: 248). Heads
# are width / 64, so at most 64. A file beyond them is refused before anything is built.
ARCHITECTURE_CAPS = {"width": 4096, "layers": 128, "image_size": 1024, "patch_size": 64,
                     "context_length": 1024, "vocab_size": 1 << 21, "embed_dim": 4096}


@dataclass
class Backbone:
    """A frozen open_clip model and the tokenizer that goes with it; sizes via its tower adapters.

    Attributes:
        clip: the open_clip model (``CLIP`` / ``CustomTextCLIP``; fp32, eval mode, ``requires_grad=False``).
        tokenizer: ``tokenizer(list_of_str) -> LongTensor (N, context_length)``.
        spec: the spec string it was loaded from (stored in run configs).
    """

    clip: nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    spec: str

    @property
    def towers(self) -> Towers:
        """The adapters of both towers (:mod:`mmrl.models.towers`), the only view of the model's internals."""
        return towers_of(self.clip, self.spec)

    @property
    def vision_width(self) -> int:  # d_v
        return self.towers.vision.width

    @property
    def text_width(self) -> int:  # d_t
        return self.towers.text.width

    @property
    def embed_dim(self) -> int:  # d_e
        return self.towers.text.embed_dim

    @property
    def vision_layers(self) -> int:
        return self.towers.vision.layers

    @property
    def text_layers(self) -> int:
        return self.towers.text.layers

    @property
    def image_size(self) -> int:
        return self.towers.vision.image_size

    @property
    def context_length(self) -> int:
        return self.towers.text.context_length

    def describe(self) -> dict:
        """Architecture summary (JSON-able)."""
        t = self.towers
        v, x = t.vision, t.text
        pre = v.preprocess
        return {
            "spec": self.spec,
            "vision_tower": v.kind,
            "vision_width": v.width,
            "vision_layers": v.layers,
            "vision_heads": v.heads,
            "patch_size": v.patch_size,
            "image_size": v.image_size,
            "image_mean": list(pre["mean"]),
            "image_std": list(pre["std"]),
            "text_width": x.width,
            "text_layers": x.layers,
            "text_heads": x.heads,
            "text_pooling": x.pool_type if x.causal else f"{x.pool_type} (bidirectional)",
            "context_length": x.context_length,
            "vocab_size": x.vocab_size,
            "embed_dim": x.embed_dim,
            "fast_path": t.clip_layout,
        }


def _frozen(clip: nn.Module) -> nn.Module:
    clip = clip.float().eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    return clip


# the layout checks live with the adapters; these names stay importable from here
block_layout_problem = block_problem


def check_vit_clip(clip: nn.Module, spec: str) -> None:
    """Refuse backbones MMRL cannot be applied to, with one line naming the model and the part.

    MMRL inserts representation tokens between the transformer blocks of BOTH towers, so it
    needs a transformer image tower and an open_clip text transformer whose blocks are plain
    pre-LN attention blocks; pooling and heads are the towers' own (:mod:`mmrl.models.towers`,
    docs/method.md "Other tower families"). Conv towers (ResNet, ConvNeXt, FastViT) are refused.
    """
    if not hasattr(clip, "visual"):
        raise ValueError(f"backbone {spec!r}: {type(clip).__name__} has no image tower (visual); "
                         "MMRL needs a CLIP-style model with an image and a text transformer")
    visual = clip.visual
    if hasattr(visual, "layer1") or type(visual).__name__ == "ModifiedResNet":
        raise ValueError(
            f"backbone {spec!r} has a {type(visual).__name__} image tower (a ResNet CLIP?): MMRL inserts "
            "representation tokens between the blocks of a vision TRANSFORMER, so it needs a ViT CLIP")
    towers = towers_of(clip, spec)
    for tower in (towers.vision, towers.text):
        for i, blk in enumerate(tower.blocks):
            problem = check_block_math(blk)
            if problem is not None:
                side = "vision" if tower is towers.vision else "text"
                raise ValueError(f"backbone {spec!r}: {side} block {i} ({type(blk.blk).__name__}) is not "
                                 f"supported: MMRL needs {problem}")


def infer_openai_architecture(state_dict: dict[str, torch.Tensor]) -> dict:
    """Architecture of an OpenAI-format ViT CLIP state dict, from tensor shapes only
    (as OpenAI's ``clip.model.build_model`` does: heads = width / 64).

    Raises:
        ValueError: a dimension outside 1..:data:`ARCHITECTURE_CAPS`, naming it, its value,
            the tensor it comes from and the cap.
    """
    sd = state_dict
    vision_width = sd["visual.conv1.weight"].shape[0]
    patch = sd["visual.conv1.weight"].shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = sd["ln_final.weight"].shape[0]
    arch = {
        "embed_dim": sd["text_projection"].shape[1],
        "vision_cfg": {
            "layers": len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")}),
            "width": vision_width, "head_width": 64, "patch_size": patch, "image_size": patch * grid,
        },
        "text_cfg": {
            "context_length": sd["positional_embedding"].shape[0],
            "vocab_size": sd["token_embedding.weight"].shape[0],
            "width": text_width, "heads": text_width // 64,
            "layers": len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
        },
    }
    v, t = arch["vision_cfg"], arch["text_cfg"]
    for what, value, cap, source in (
            ("vision width", v["width"], "width", "visual.conv1.weight"),
            ("vision layers", v["layers"], "layers", "visual.transformer.resblocks.*"),
            ("patch size", v["patch_size"], "patch_size", "visual.conv1.weight"),
            ("image size", v["image_size"], "image_size", "visual.positional_embedding"),
            ("text width", t["width"], "width", "ln_final.weight"),
            ("text layers", t["layers"], "layers", "transformer.resblocks.*"),
            ("context length", t["context_length"], "context_length", "positional_embedding"),
            ("vocabulary size", t["vocab_size"], "vocab_size", "token_embedding.weight"),
            ("embedding dimension", arch["embed_dim"], "embed_dim", "text_projection")):
        if not 1 <= value <= ARCHITECTURE_CAPS[cap]:
            raise ValueError(f"{what} {value} (from {source}) is outside 1..{ARCHITECTURE_CAPS[cap]}, "
                             "about twice the largest real CLIP's")
    return arch


def clip_from_openai_state_dict(state_dict: dict[str, torch.Tensor], spec: str = "<state dict>") -> nn.Module:
    """Build an open_clip ``CLIP`` (fp32) from an OpenAI-format state dict of any size.

    The architecture is inferred from tensor shapes (:func:`infer_openai_architecture`);
    QuickGELU is used, as OpenAI trained with it. Unlike open_clip's
    ``build_model_from_openai_state_dict`` the weights are never rounded through fp16. Every
    weight must be a finite float tensor, and the file must hold every tensor of the inferred
    architecture at its shape (checked on the meta device first, so that a file naming many
    layers it does not hold cannot make us allocate them).
    """
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    if "visual.proj" not in state_dict:
        if any(k.startswith("visual.layer1") for k in state_dict):
            raise ValueError(f"backbone {spec!r} is a ResNet CLIP: MMRL inserts representation tokens between "
                             "the blocks of a vision transformer, so it needs a ViT CLIP")
        raise ValueError(f"backbone {spec!r}: not an OpenAI-format CLIP state dict (no 'visual.proj' key; "
                         f"found keys such as {sorted(state_dict)[:5]})")
    # 0-dim metadata in OpenAI's archives, and the causal mask some exports carry: not weights
    weights = {k: v for k, v in state_dict.items()
               if k not in ("input_resolution", "context_length", "vocab_size", "attn_mask")}
    check_weights(weights, f"backbone {spec!r}")
    sd = {k: v.float() for k, v in weights.items()}
    try:
        arch = infer_openai_architecture(sd)

        def build() -> nn.Module:
            return CLIP(arch["embed_dim"], CLIPVisionCfg(**arch["vision_cfg"]), CLIPTextCfg(**arch["text_cfg"]),
                        quick_gelu=True)

        with torch.device("meta"):  # shapes only: nothing is allocated for tensors the file lacks
            want = {k: tuple(v.shape) for k, v in build().state_dict().items()}
        have = {k: tuple(v.shape) for k, v in sd.items()}
        if want != have:
            diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
            raise RuntimeError("tensors missing, unexpected or of other shapes: " + ", ".join(
                f"{k} (file {have.get(k)}, model {want.get(k)})" for k in diff[:5]))
        clip = build()
        clip.load_state_dict(sd)
    except ValueError as e:
        raise ValueError(f"backbone {spec!r}: {e}") from e
    except (RuntimeError, KeyError) as e:
        raise ValueError(f"backbone {spec!r}: state dict does not describe an OpenAI-format CLIP ViT: {e}") from e
    return clip


@functools.cache
def _tokenizer(context_length: int) -> Callable[[list[str]], torch.Tensor]:
    """CLIP's BPE tokenizer, one per context length and process: building it reads the
    49k merges (~55 ms), which every backbone load paid again (30 times in ``mmrl demo``).
    Sharing is safe: its only state besides the vocabulary is a memo of encoded words."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


@functools.lru_cache(maxsize=1)
def _toy_clip(stamp: tuple[int, int]) -> nn.Module:
    """The packaged tiny CLIP, read and built once per process (``stamp`` = the file's
    (mtime_ns, size), so a checkpoint rewritten by ``mmrl toyworld pretrain`` is read anew).
    :func:`load_backbone` hands out deep copies: bit-identical tensors, ~9 ms instead of
    ~45 ms (read, fp16 -> fp32, random init of a fresh module, load_state_dict)."""
    clip = clip_from_openai_state_dict(load_clip_state_dict(TOY_CLIP_FILE), TOY_CLIP_NAME)
    check_vit_clip(clip, TOY_CLIP_NAME)
    return _frozen(clip)


def _looks_like_file(s: str) -> bool:
    return os.path.sep in s or s.endswith(CHECKPOINT_SUFFIXES) or Path(s).exists()


def load_backbone(spec: str = "ViT-B-16:openai", *, pretrained: bool = True,
                  device: str | torch.device = "cpu") -> Backbone:
    """Load a frozen backbone from a spec string (see module docstring).

    Args:
        spec: the backbone spec.
        pretrained: False builds an open_clip name with random weights (no download),
            e.g. for ``mmrl describe`` or benchmarks. Ignored for files.
        device: where to put the model.
    """
    spec = str(spec)
    if spec == TOY_CLIP_NAME:
        st = TOY_CLIP_FILE.stat()
        clip = copy.deepcopy(_toy_clip((st.st_mtime_ns, st.st_size)))
    elif Path(spec).is_file():
        clip = clip_from_openai_state_dict(load_clip_state_dict(spec), spec)
    elif ":" not in spec and _looks_like_file(spec):
        raise FileNotFoundError(f"backbone file not found: {spec}")
    else:
        name, _, tag = spec.partition(":")
        clip = _open_clip_model(name, tag or _default_tag(name), pretrained, spec)
        _set_preprocess(clip, name, tag or _default_tag(name))
    check_vit_clip(clip, spec)
    clip = _frozen(clip).to(device)
    return Backbone(clip=clip, tokenizer=_tokenizer_for(clip, spec), spec=spec)


def _tokenizer_for(clip: nn.Module, spec: str) -> Callable[[list[str]], torch.Tensor]:
    """CLIP's BPE tokenizer for a tower with CLIP's vocabulary; else the model's own tokenizer
    (open_clip's ``get_tokenizer``, a Hugging Face one for SigLIP, MetaCLIP-2 worldwide...),
    built on first use from the local cache, offline: :class:`BackboneUnavailableError` when
    it is not cached."""
    text = towers_of(clip, spec).text
    if text.vocab_size == CLIP_BPE_VOCAB:
        return _tokenizer(text.context_length)
    return _LazyTokenizer(spec.partition(":")[0], text.context_length, spec)


class _LazyTokenizer:
    """A model's own open_clip tokenizer, built on first call (from the local cache only)."""

    def __init__(self, name: str, context_length: int, spec: str):
        self.name, self.context_length, self.spec = name, context_length, spec
        self._tok: Callable[[list[str]], torch.Tensor] | None = None

    def __call__(self, texts: list[str]) -> torch.Tensor:
        if self._tok is None:
            import open_clip

            hf = ((open_clip.get_model_config(self.name) or {}).get("text_cfg") or {}).get("hf_tokenizer_name")
            if hf and importlib.util.find_spec("transformers") is None:
                raise BackboneUnavailableError(
                    f"backbone {self.spec!r}: its tokenizer is the Hugging Face tokenizer {hf}, which needs the "
                    f"transformers package: {HF_INSTALL} (then it is read from the Hugging Face cache)")
            try:
                with _quiet_open_clip(), _hub_offline():
                    self._tok = open_clip.get_tokenizer(self.name, context_length=self.context_length)
            except Exception as e:  # not cached (OSError and kin across transformers versions)
                raise BackboneUnavailableError(
                    f"backbone {self.spec!r}: the tokenizer of {self.name} is not cached on this machine "
                    f"({type(e).__name__}: {' '.join(str(e).split())[:160]}). Ways on: connect to the internet "
                    f"once (it is then cached by Hugging Face), or use a backbone with CLIP's BPE tokenizer "
                    "(e.g. ViT-B-16, toy-clip)") from e
        return self._tok(texts)


def _set_preprocess(clip: nn.Module, name: str, tag: str) -> None:
    """Give the image tower the mean/std, interpolation and resize mode its weights were trained with (open_clip attaches them
    only when it loads a pretrained tag): the tag's, or for a local checkpoint the model's first
    listed tag's. The adapters read them (``VisionTower.preprocess``)."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    pcfg = open_clip.get_pretrained_cfg(name, tag if tag in tags else (tags[0] if tags else "")) or {}
    if "mean" in pcfg and "std" in pcfg:
        cfg = dict(getattr(clip.visual, "preprocess_cfg", None) or {})
        cfg.update(mean=tuple(pcfg["mean"]), std=tuple(pcfg["std"]),
                   **{k: pcfg[k] for k in ("interpolation", "resize_mode") if k in pcfg})
        clip.visual.preprocess_cfg = cfg


def _default_tag(name: str) -> str:
    """The tag a bare open_clip name means: ``openai`` where open_clip has it (CLIP's own
    weights), else the name's only or first listed tag (e.g. ``webli`` for SigLIP)."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name) if name in open_clip.list_models() else []
    return "openai" if "openai" in tags or not tags else tags[0]


def _open_clip_model(name: str, tag: str, pretrained: bool, spec: str) -> nn.Module:
    import open_clip

    if name not in open_clip.list_models():
        if _looks_like_file(spec):
            raise FileNotFoundError(f"backbone file not found: {spec}")
        close = difflib.get_close_matches(name, [TOY_CLIP_NAME, *open_clip.list_models()], n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ValueError(f"backbone {spec!r}: unknown open_clip model {name!r}; {hint}known ViT names include "
                         f"{[m for m in open_clip.list_models() if m.startswith('ViT-B')][:8]} "
                         "(or give a path to an OpenAI-format .pt file)")
    if _looks_like_file(tag):  # NAME:/path/to/open_clip_checkpoint
        if not Path(tag).is_file():
            raise FileNotFoundError(f"backbone {spec!r}: checkpoint file not found: {tag}")
        with _quiet_open_clip():
            clip = open_clip.create_model(name, pretrained=None)
        missing, unexpected = clip.load_state_dict(load_clip_state_dict(tag), strict=False)
        missing = [k for k in missing if k != "attn_mask"]
        if missing or unexpected:
            raise ValueError(f"backbone {spec!r}: checkpoint {tag} does not fit open_clip model {name}: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        return clip
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in tags:
        raise ValueError(f"backbone {spec!r}: open_clip has no pretrained tag {tag!r} for {name}; "
                         f"available: {tags}")
    pcfg = open_clip.get_pretrained_cfg(name, tag)
    quick_gelu = bool(pcfg.get("quick_gelu", False))
    hf = ((open_clip.get_model_config(name) or {}).get("text_cfg") or {}).get("hf_model_name")
    if _hf_missing(hf):
        raise BackboneUnavailableError(f"backbone {spec!r}: {_hf_missing(hf)}")
    _check_hf_config_reachable(hf, spec)
    if not pretrained:  # the architecture only (describe, shapes): nothing to download, nothing to say
        with _quiet_open_clip(), hf_config_offline(hf, allow_default=False):
            return open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu, pretrained_hf=False)
    if cached_weights(pcfg) is not None:
        with _quiet_open_clip(), _hub_offline():  # from the cache, no network round trips
            return open_clip.create_model(name, pretrained=tag, force_quick_gelu=quick_gelu)
    host = _download_host(pcfg)
    problem = "HF_HUB_OFFLINE is set" if _hub_offline_mode() else unreachable(host)
    if problem is None:
        try:
            with _quiet_open_clip():
                return open_clip.create_model(name, pretrained=tag, force_quick_gelu=quick_gelu)
        except Exception as e:  # open_clip wraps every download failure (RuntimeError, FileNotFoundError...)
            problem = " ".join(f"{type(e).__name__}: {e}".split())
    local = _openai_copy(pcfg, name, tag) if pcfg.get("hf_hub") else None  # a copy open_clip would not use
    example = f"--backbone {local}, found on this machine" if local else \
        f"e.g. --backbone /path/{name}.pt, or --backbone {name}:/path/open_clip_model.safetensors"
    raise BackboneUnavailableError(
        f"backbone {spec!r}: the pretrained weights of {name} ({tag}) are not cached on this machine and could not "
        f"be downloaded from {host} ({problem}). Ways on: connect to the internet once (they are then cached in "
        f"{_cache_hint(pcfg)}); or --backbone PATH to a local OpenAI/open_clip weights file ({example}); "
        f"or --backbone toy-clip (the tiny CLIP shipped with mmrl, for trying it out)")


# --------------------------------------------------------------------------- weights cache / network
def _hf_files(pcfg: dict) -> tuple[str, list[str]] | None:
    """(repo id, candidate file names in open_clip's order: safetensors first) of a tag's hub entry."""
    hub = pcfg.get("hf_hub", "")
    if not hub:
        return None
    repo, filename = os.path.split(hub)  # as open_clip: 'org/model/' = the default file name
    filename = filename or "open_clip_pytorch_model.bin"
    names = []
    if filename == "open_clip_pytorch_model.bin":
        names.append("open_clip_model.safetensors")
    elif filename.endswith((".bin", ".pth")):
        names.append(filename[:-4] + ".safetensors")
    return repo, names + [filename]


def cached_weights(pcfg: dict) -> str | None:
    """Local path of a pretrained tag's weights when cached where open_clip will look for them
    (the Hugging Face cache for a tag with a hub entry, else open_clip's URL cache
    ``~/.cache/clip``), else None. Never touches the network."""
    files = _hf_files(pcfg)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        files = None
    if files is not None:  # open_clip prefers the hub when the tag has an entry there
        repo, names = files
        for fn in names:
            try:
                return hf_hub_download(repo_id=repo, filename=fn, local_files_only=True)
            except Exception:  # not cached (LocalEntryNotFoundError and kin across versions)
                continue
        return None
    return _url_cached(pcfg)


def _url_cached(pcfg: dict) -> str | None:
    """open_clip's copy of a tag's URL download (``~/.cache/clip/<file>``, e.g. OpenAI's ``ViT-B-16.pt``)."""
    url = pcfg.get("url", "")
    p = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url) if url else None
    return str(p) if p is not None and p.is_file() else None


# OpenAI's own file names (as `clip.load` and open_clip 3.x save them in ~/.cache/clip); open_clip
# 4.x lists no OpenAI URL any more, so for the openai tag the name is all there is to go by.
OPENAI_FILES = {"ViT-B-32": "ViT-B-32.pt", "ViT-B-16": "ViT-B-16.pt", "ViT-L-14": "ViT-L-14.pt",
                "ViT-L-14-336": "ViT-L-14-336px.pt"}


def _openai_copy(pcfg: dict, name: str, tag: str) -> str | None:
    """An OpenAI-format file of this model already on disk (``~/.cache/clip``), or None."""
    found = _url_cached(pcfg)
    if found is None and tag == "openai" and name in OPENAI_FILES:
        p = Path(os.path.expanduser("~/.cache/clip")) / OPENAI_FILES[name]
        found = str(p) if p.is_file() else None
    return found


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(getattr(constants, "ENDPOINT", "https://huggingface.co"))
    except ImportError:
        return "https://huggingface.co"


def _download_host(pcfg: dict) -> str:
    """host[:port] open_clip downloads a tag's weights from (the hub when it has an entry there)."""
    url = _hub_endpoint() if pcfg.get("hf_hub") else pcfg.get("url", "") or _hub_endpoint()
    parts = urlsplit(url)
    return parts.netloc or parts.path


def _hub_offline_mode() -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Hugging Face hub offline mode while inside: a cached file is used as it is, without the
    request that checks for a newer one (which, offline, is retried for ~25 s per file)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    old = getattr(constants, "HF_HUB_OFFLINE", None)
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def unreachable(host: str, timeout_s: float = 5.0) -> str | None:
    """Why ``host`` (``name[:port]``, default port 443) cannot be reached, or None when a TCP
    connection opens (or a proxy is configured: only the proxy can tell, so the download tries)."""
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return None
    name, _, port = host.partition(":")
    try:
        with socket.create_connection((name, int(port or 443)), timeout=timeout_s):
            return None
    except OSError as e:
        return f"no connection: {e.strerror or e}"


def _cache_hint(pcfg: dict) -> str:
    if pcfg.get("hf_hub"):
        try:
            from huggingface_hub import constants

            return str(getattr(constants, "HF_HUB_CACHE", "~/.cache/huggingface/hub"))
        except ImportError:
            pass
    return "~/.cache/clip"


class _DropOpenClipRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}open_clip{os.sep}" not in record.pathname


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Silence open_clip's own log records while it builds a model.

    open_clip logs through the root logger: an expected "No pretrained weights loaded ...
    initialized randomly" when the architecture is built without weights on purpose, and
    download errors that :class:`BackboneUnavailableError` says better. Its first
    ``logging.warning`` would also install a root handler (``basicConfig``) that prints every
    later library warning a second time; a temporary NullHandler prevents that.
    """
    root = logging.getLogger()
    guard = logging.NullHandler() if not root.handlers else None
    drop = _DropOpenClipRecords()
    if guard is not None:
        root.addHandler(guard)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        if guard is not None:
            root.removeHandler(guard)


HF_INSTALL = 'pip install "mmrl[hf]"'  # what an open_clip model with a Hugging Face text tower needs


def _hf_missing(hf: str | None) -> str | None:
    """Why a model whose text tower is the Hugging Face encoder ``hf`` cannot be built here (the
    transformers package is not installed), or None."""
    if hf and importlib.util.find_spec("transformers") is None:
        return f"its text tower is the Hugging Face encoder {hf}: {HF_INSTALL}"
    return None


def _check_hf_config_reachable(hf: str | None, spec: str) -> None:
    """open_clip reads the config of a Hugging Face text tower ``hf`` from the hub when it builds
    the model: cached, or the hub reachable -> nothing to say; otherwise one line with the ways on
    (instead of the hub client's retries, ~25 s, and its multi-line error).

    Raises:
        BackboneUnavailableError: the config is not cached and cannot be downloaded.
    """
    if not hf or _hf_offline_config(hf, allow_default=False) is not None:
        return
    host = urlsplit(_hub_endpoint()).netloc
    problem = "HF_HUB_OFFLINE is set" if _hub_offline_mode() else unreachable(host)
    if problem is None:
        return
    raise BackboneUnavailableError(
        f"backbone {spec!r}: the config of its Hugging Face text encoder {hf} is not cached on this machine and "
        f"could not be downloaded from {host} ({problem}). Ways on: connect to the internet once (it is then "
        f"cached in {_cache_hint({'hf_hub': hf})}); or --backbone toy-clip (the tiny CLIP shipped with mmrl, "
        "for trying it out)")


# The Hugging Face model type of an encoder named by open_clip whose config is not cached: the
# longest model type of transformers' own table contained in the name (as transformers' AutoConfig
# falls back to), and NLLB -- whose config says m2m_100 -- by name. Only the verdict of
# `mmrl backbones` uses it (the layers' parts); loading a backbone always reads the real config.
_HF_TYPE_BY_NAME = {"nllb-200": "m2m_100"}


def _hf_offline_config(hf: str, allow_default: bool = True):
    """The Hugging Face config of encoder ``hf`` without the network: the cached one, or the
    default config of its model type (:data:`_HF_TYPE_BY_NAME`); None when neither is known."""
    from transformers import AutoConfig, CONFIG_MAPPING

    try:
        with _hub_offline():
            return AutoConfig.from_pretrained(hf, local_files_only=True)
    except Exception:  # not cached (OSError and kin across transformers versions)
        pass
    if not allow_default:
        return None
    kind = next((t for key, t in _HF_TYPE_BY_NAME.items() if key in hf), None)
    if kind is None:
        kind = next((k for k in sorted(CONFIG_MAPPING.keys(), key=len, reverse=True) if k in hf), None)
    return None if kind is None else CONFIG_MAPPING[kind]()


@contextlib.contextmanager
def hf_config_offline(hf: str | None, allow_default: bool = True) -> Iterator[None]:
    """While inside, open_clip builds the Hugging Face text tower ``hf`` from a config found
    without the network (:func:`_hf_offline_config`): the cached one is what open_clip would read
    itself; an uncached one is the model type's default (the architecture's parts, not its sizes:
    for `mmrl backbones`; without ``allow_default`` open_clip fetches an uncached one itself)."""
    if not hf:
        yield
        return
    import open_clip.hf_model as ohf

    cfg = _hf_offline_config(hf, allow_default)
    if cfg is None and not allow_default:
        yield
        return
    if cfg is None:
        raise ValueError(f"the Hugging Face config of {hf} is not cached and its model type is not known")
    real = ohf.AutoConfig

    class _Offline:
        @staticmethod
        def from_pretrained(name, *a, **k):
            return copy.deepcopy(cfg) if name == hf else real.from_pretrained(name, *a, **k)

    ohf.AutoConfig = _Offline
    try:
        yield
    finally:
        ohf.AutoConfig = real


# --------------------------------------------------------------------------- open_clip architectures
@functools.cache
def architecture_problem(name: str) -> str | None:
    """Why MMRL refuses open_clip architecture ``name`` (one line naming the part), or None.

    Decided from the architecture alone: the model is built on the meta device (no weights, no
    memory, no download; nothing is written to any cache), then its towers are recognised as
    :func:`load_backbone` would (the numeric block check needs real weights and runs there).
    """
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        return f"open_clip has no model config {name!r}"
    if cfg.get("audio_cfg") is not None or "visual" not in cfg and "vision_cfg" not in cfg:
        return f"MMRL needs an image tower ({name} is an audio model, not an image-text model)"
    hf = (cfg.get("text_cfg") or {}).get("hf_model_name")
    if _hf_missing(hf):
        return _hf_missing(hf)
    timm_name = (cfg.get("vision_cfg") or {}).get("timm_model_name")
    if timm_name:
        try:
            import timm
        except ImportError:
            return f"its vision tower is timm's {timm_name}: install timm (pip install 'mmrl[timm]')"
        if not timm.is_model(timm_name):
            return f"its vision tower timm {timm_name} is not in the installed timm {timm.__version__}"
    try:
        with _quiet_open_clip(), torch.device("meta"), hf_config_offline(hf):
            model = open_clip.create_model(name, pretrained=None, device="meta", pretrained_hf=False)
    except Exception as e:  # an architecture this open_clip / timm cannot build
        return f"open_clip cannot build it here ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
    problem = towers_problem(model)
    return None if problem is None else refusal(problem)
