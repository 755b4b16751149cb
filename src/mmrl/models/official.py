"""Import the authors' released MMRL / MMRL++ adapters (Dassl ``model.pth.tar-N`` files).

The authors' ``CustomCLIP`` names its trainable tensors (under any leading prefix such as
``module.``)::

    MMRL    representation_learner.compound_rep_tokens                 (K, d_r)
            representation_learner.compound_rep_tokens_r2vproj.{i}.weight|bias   (d_v, d_r) | (d_v,)
            representation_learner.compound_rep_tokens_r2tproj.{i}.weight|bias   (d_t, d_r) | (d_t,)
            image_encoder.proj_rep                                     (d_v, d_e)
    MMRL++  representation_learner.compound_rep_tokens                 (K, d_r)
            representation_learner.srra_r2vproj.weight                 (d_v, d_r)  shared W
            representation_learner.srra_r2vproj.srra.{i}.A|B|bias      (d_v, r) | (r, d_r) | (d_v,)
            (the same under srra_r2tproj with d_t)
            image_encoder.A, image_encoder.B                           (d_v, 64), (64, d_e)

with i = 0..n-1 for blocks J..L. Everything else in the checkpoint (the frozen CLIP towers, the
``prompt_embeddings`` buffer, ...) is ignored. Our adapter names are those of
``MMRL.adapter_state_dict()``: ``rep_tokens``; MMRL ``vision_aligner.{i}.weight|bias``,
``text_aligner.{i}.weight|bias``, ``proj_rep``; MMRL++ ``vision_aligner.weight``,
``vision_aligner.A.{i}``, ``vision_aligner.B.{i}``, ``vision_aligner.bias.{i}`` (same for
``text_aligner``), ``proj_lora_A``, ``proj_lora_B``.
"""
from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor

from mmrl.models.safe_load import check_weights, load_dassl_checkpoint

__all__ = ["check_adapter_shapes", "convert_official_state_dict", "load_official_adapter"]


# Official name (after the prefix) -> our name, per method.
_RULES: dict[str, list[tuple[re.Pattern[str], str]]] = {
    "mmrl": [
        (re.compile(r"representation_learner\.compound_rep_tokens"), "rep_tokens"),
        (re.compile(r"representation_learner\.compound_rep_tokens_r2vproj\.(\d+)\.(weight|bias)"),
         r"vision_aligner.\1.\2"),
        (re.compile(r"representation_learner\.compound_rep_tokens_r2tproj\.(\d+)\.(weight|bias)"),
         r"text_aligner.\1.\2"),
        (re.compile(r"image_encoder\.proj_rep"), "proj_rep"),
    ],
    "mmrl++": [
        (re.compile(r"representation_learner\.compound_rep_tokens"), "rep_tokens"),
        (re.compile(r"representation_learner\.srra_r2vproj\.weight"), "vision_aligner.weight"),
        (re.compile(r"representation_learner\.srra_r2vproj\.srra\.(\d+)\.(A|B|bias)"), r"vision_aligner.\2.\1"),
        (re.compile(r"representation_learner\.srra_r2tproj\.weight"), "text_aligner.weight"),
        (re.compile(r"representation_learner\.srra_r2tproj\.srra\.(\d+)\.(A|B|bias)"), r"text_aligner.\2.\1"),
        (re.compile(r"image_encoder\.A"), "proj_lora_A"),
        (re.compile(r"image_encoder\.B"), "proj_lora_B"),
    ],
}
# Tensors that only one of the two methods has: tell the user they picked the wrong one.
_SIGNATURE = {
    "mmrl": re.compile(r"representation_learner\.compound_rep_tokens_r2[vt]proj\.|image_encoder\.proj_rep$"),
    "mmrl++": re.compile(r"representation_learner\.srra_r2[vt]proj\.|image_encoder\.[AB]$"),
}
# Leftmost 'representation_learner.' / 'image_encoder.' preceded by nothing or by '<prefix>.'.
_ANCHOR = re.compile(r"^(?:(?P<prefix>.*?)\.)??(?P<rel>(?:representation_learner|image_encoder)\..+)$")


def _method(method: str) -> str:
    m = method.lower()
    if m not in _RULES:
        raise ValueError(f"method must be one of {', '.join(_RULES)} (the methods the authors released "
                         f"checkpoints of), got {method!r}")
    return m


def _relative(key: str) -> str | None:
    m = _ANCHOR.match(key)
    return m.group("rel") if m else None


def _required_names(method: str, n_blocks: int) -> list[str]:
    if method == "mmrl":
        per_block = [f"{side}_aligner.{i}.{p}" for side in ("vision", "text")
                     for i in range(n_blocks) for p in ("weight", "bias")]
        return ["rep_tokens", *per_block, "proj_rep"]
    per_block = [f"{side}_aligner.{p}.{i}" for side in ("vision", "text")
                 for i in range(n_blocks) for p in ("A", "B", "bias")]
    return ["rep_tokens", "vision_aligner.weight", "text_aligner.weight", *per_block,
            "proj_lora_A", "proj_lora_B"]


def convert_official_state_dict(state_dict: dict[str, Tensor], method: str) -> dict[str, Tensor]:
    """Map the authors' adapter tensors to our names (see module docstring).

    Args:
        state_dict: the checkpoint's ``state_dict`` (all tensors of the authors' model).
        method: ``"mmrl"`` or ``"mmrl++"``.

    Returns:
        our name -> tensor (as stored, not copied or cast).

    Raises:
        ValueError: the tensors of the other method are there instead, a name occurs under two
            prefixes, required tensors are missing (named), or one is not a finite float tensor
            (:func:`mmrl.models.safe_load.check_weights`).
    """
    method = _method(method)
    other = "mmrl++" if method == "mmrl" else "mmrl"
    rels = {k: r for k in state_dict if (r := _relative(k)) is not None}
    ours: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    for key, rel in rels.items():
        for pattern, target in _RULES[method]:
            m = pattern.fullmatch(rel)
            if m:
                name = m.expand(target)
                if name in ours:
                    raise ValueError(f"official checkpoint has {name!r} twice: {source[name]!r} and {key!r}")
                ours[name], source[name] = state_dict[key], key
                break
    own = [k for k, r in rels.items() if _SIGNATURE[method].search(r)]
    foreign = [k for k, r in rels.items() if _SIGNATURE[other].search(r)]
    if foreign and not own:
        raise ValueError(f"official checkpoint holds {other.upper()} tensors (e.g. {sorted(foreign)[:3]}), "
                         f"not {method.upper()} ones: choose method={other!r}")
    if foreign:
        raise ValueError(f"official checkpoint mixes MMRL and MMRL++ tensors: {sorted(own)[:2]} and "
                         f"{sorted(foreign)[:2]}")
    index = re.compile(r"(?:vision|text)_aligner\.(?:(\d+)\.|(?:A|B|bias)\.(\d+)$)")
    blocks = [int(m.group(1) or m.group(2)) for n in ours if (m := index.match(n))]
    n_blocks = max(blocks) + 1 if blocks else 0
    missing = [n for n in _required_names(method, n_blocks) if n not in ours]
    if not blocks:
        missing.append("<per-block aligner tensors>")
    if missing:
        raise ValueError(f"official {method.upper()} checkpoint lacks {len(missing)} adapter tensor(s) "
                         f"(our names): {missing[:12]}")
    check_weights({source[n]: t for n, t in ours.items()}, "official checkpoint")  # named as in the file
    return ours


def _describe(shapes: dict[str, tuple[int, ...]]) -> str:
    """Summarise an adapter config from its tensor shapes, e.g. for error messages."""
    def dim(key: str, axis: int) -> str:
        s = shapes.get(key)
        return str(s[axis]) if s is not None and len(s) > axis else "?"

    pp = "vision_aligner.weight" in shapes or "proj_lora_A" in shapes
    if pp:
        n = sum(1 for k in shapes if re.fullmatch(r"vision_aligner\.A\.\d+", k))
        d_v, d_t, d_e = dim("vision_aligner.weight", 0), dim("text_aligner.weight", 0), dim("proj_lora_B", 1)
    else:
        n = sum(1 for k in shapes if re.fullmatch(r"vision_aligner\.\d+\.weight", k))
        d_v, d_t, d_e = dim("vision_aligner.0.weight", 0), dim("text_aligner.0.weight", 0), dim("proj_rep", 1)
    return (f"{'MMRL++' if pp else 'MMRL'}: K={dim('rep_tokens', 0)}, d_r={dim('rep_tokens', 1)}, "
            f"{n} token blocks on a d_v={d_v} vision tower, d_t={d_t} text tower, d_e={d_e} embedding")


def check_adapter_shapes(tensors: dict[str, Tensor], expected: dict[str, tuple[int, ...]], source: str) -> None:
    """Check that ``tensors`` are exactly the adapter the model expects.

    Args:
        tensors: our name -> tensor, e.g. from :func:`convert_official_state_dict`.
        expected: our name -> shape, e.g. ``{k: tuple(v.shape) for k, v in model.adapter_state_dict().items()}``.
        source: where the tensors come from (a file name), for the message.

    Raises:
        ValueError: naming every missing/unexpected key and every shape mismatch, with both
            configurations spelled out (K, d_r, token blocks, tower widths).
    """
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    want = {k: tuple(int(d) for d in v) for k, v in expected.items()}
    problems = [f"missing {k} (model expects shape {want[k]})" for k in sorted(want.keys() - got.keys())]
    problems += [f"unexpected {k} (shape {got[k]})" for k in sorted(got.keys() - want.keys())]
    problems += [f"{k}: checkpoint shape {got[k]}, model expects {want[k]}"
                 for k in sorted(got.keys() & want.keys()) if got[k] != want[k]]
    if problems:
        raise ValueError(
            f"{source}: the adapter does not fit the chosen backbone/method config.\n"
            f"  checkpoint: {_describe(got)}\n  model:      {_describe(want)}\n  - " + "\n  - ".join(problems))


def load_official_adapter(path: str | Path, method: str, expected: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Read an authors' Dassl checkpoint safely and return its adapter under our names.

    Args:
        path: ``model.pth.tar-N`` (or ``model-best.pth.tar``).
        method: ``"mmrl"`` or ``"mmrl++"``.
        expected: our name -> shape of the model that will load it.

    Returns:
        tensors ready for ``model.load_adapter_state_dict`` (dtype as stored; the caller casts).
    """
    method = _method(method)
    state_dict = load_dassl_checkpoint(path)
    try:
        tensors = convert_official_state_dict(state_dict, method)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    check_adapter_shapes(tensors, expected, str(path))
    return tensors
