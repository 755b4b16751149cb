"""The method registry: each method's name, its settings and its model, in one place (torch-free).

A method is a :class:`MethodSpec`: its name (what ``--method`` takes), its title in tables, its
settings (a frozen dataclass deriving from :class:`MethodConfig`: the ``method`` section of a run
config) and where its model class lives (``"module:Class"``, imported only when a model is built,
so that the CLI, the sweep planner and ``mmrl report`` start without torch). The model implements
:class:`MethodModel`, the only things the engine, the evaluator, export and the report call.

MMRL and MMRL++ are registered below; adding a method is :func:`register` with a spec
(docs/architecture.md, "Adding a method"). Everything that lists methods -- CLI choices, presets,
``describe``, ``convert-official``, the demo, the report -- asks :func:`names` / :func:`get`.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mmrl.errors import shown
from mmrl.vocab import doc

if TYPE_CHECKING:  # the light side never imports torch
    from torch import Tensor, nn


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class MethodConfig:
    """What every method's settings have: the ``method`` section of a run config starts here."""

    name: str = doc("the method (mmrl / mmrl++, or any registered one); it chooses which method.* keys exist", "mmrl")

    def validate(self, vision_layers: int | None = None, text_layers: int | None = None) -> None:
        """Raise ValueError naming the first invalid key (``vision_layers`` / ``text_layers``: the
        backbone's depths, when known)."""
        try:
            spec = get(self.name)
        except ValueError as e:
            raise ValueError(f"method.name = {shown(self.name)}: {e}") from None
        if type(self) is not spec.config:
            raise ValueError(f"method.name = {shown(self.name)} needs {spec.config.__name__} settings, "
                             f"got {type(self).__name__}")


@dataclass(frozen=True)
class MMRLConfig(MethodConfig):
    """Settings of MMRL (docs/method.md)."""

    n_rep_tokens: int = doc("K: number of representation tokens", 5)
    rep_dim: int = doc("d_r: width of the shared representation space", 512)
    first_rep_block: int = doc("J (1-indexed): first transformer block (both towers) that sees the tokens", 6)
    alpha: float = doc("weight of the class-token logits/loss (1 - alpha: representation tokens)", 0.7)
    reg_weight: float = doc("lambda: weight of the two consistency regularisers", 1.0)
    logit_scale: float = doc("fixed logit scale (not CLIP's learned one)", 100.0)

    def validate(self, vision_layers: int | None = None, text_layers: int | None = None) -> None:
        super().validate(vision_layers, text_layers)

        def bad(key: str, msg: str):
            raise ValueError(f"method.{key} = {shown(getattr(self, key))}: {msg}")

        for key in self._positive_ints():
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                bad(key, "expected an integer >= 1")
        if not 0.0 <= self.alpha <= 1.0:
            bad("alpha", "expected a value in [0, 1]")
        if self.reg_weight < 0:
            bad("reg_weight", "expected lambda >= 0")
        if not self.logit_scale > 0:
            bad("logit_scale", "expected a positive scale")
        self._check_own_values()
        depth = min(d for d in (vision_layers, text_layers, 10**9) if d is not None)
        if not isinstance(self.first_rep_block, int) or not 1 <= self.first_rep_block <= depth:
            bad("first_rep_block", f"expected a block number J in 1..{depth} (1-indexed; both towers must "
                                   f"have at least J blocks; this backbone has {vision_layers} vision and "
                                   f"{text_layers} text blocks). MMRL needs a ViT CLIP with at least J blocks")

    def _positive_ints(self) -> tuple[str, ...]:
        return ("n_rep_tokens", "rep_dim")

    def _check_own_values(self) -> None:
        """A derived method's own value checks (before the backbone-dependent one)."""


@dataclass(frozen=True)
class MMRLPlusConfig(MMRLConfig):
    """Settings of MMRL++: MMRL's, plus the slot blend and the two LoRA ranks (docs/method.md)."""

    name: str = doc("the method (mmrl / mmrl++, or any registered one); it chooses which method.* keys exist",
                    "mmrl++")
    beta: float = doc("MMRL++: slot blend beta of the progressive representation composition", 0.9)
    proj_lora_rank: int = doc("MMRL++: rank of A B in proj_rep = proj + A B", 64)
    aligner_lora_rank: int = doc("MMRL++: rank of the per-block residual A_i B_i of the shared aligner", 4)

    def _check_own_values(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"method.beta = {shown(self.beta)}: expected a value in [0, 1]")

    def _positive_ints(self) -> tuple[str, ...]:
        return (*super()._positive_ints(), "proj_lora_rank", "aligner_lora_rank")


# --------------------------------------------------------------------------- what a model offers
@runtime_checkable
class MethodModel(Protocol):
    """What the engine, the evaluator, export and the report may call on a method's model (an
    ``nn.Module`` whose trainable tensors are its adapter; the backbone inside is frozen).

    Shapes: B images, C classes, d_e the joint embedding width.
    """

    cfg: MethodConfig
    classnames: list[str]

    def set_classes(self, classnames: list[str], template: str) -> None:
        """Tokenise one prompt per class and cache what does not change while training."""

    def encode_text(self) -> Tensor:
        """(C, d_e) unnormalised text features of the current classes."""

    def logits(self, images: Tensor, text: Tensor | None = None) -> Any:
        """:class:`mmrl.models.mmrl.Logits` (B, C) each: ``class_``, ``rep`` and ``fused``."""

    def loss(self, images: Tensor, labels: Tensor, *, batch_size: int | None = None,
             weights: Tensor | None = None, world_size: int = 1) -> Any:
        """:class:`mmrl.models.mmrl.LossOutput`: ``total`` to backpropagate, its terms, the logits."""

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """The trainable tensors by name (what ``adapter.safetensors`` holds)."""

    def adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each trainable tensor's shape by name."""

    def load_adapter_state_dict(self, tensors: dict[str, Tensor]) -> None:
        """Load adapter tensors; ValueError naming each missing / unexpected / misshapen one."""

    def num_trainable_parameters(self) -> int:
        """The adapter's number of parameters."""

    def settings(self) -> dict:
        """The effective settings, JSON-able (run.json, the adapter's metadata, describe)."""

    def evaluation_settings(self, trained_on: str | None, target_settings: dict[str, float],
                            dataset: str | None) -> dict[str, float]:
        """The settings this model uses when applied to ``dataset`` (None: a list of class names),
        e.g. MMRL++'s beta from ``eval.target_beta`` (``target_settings``) on another dataset
        than ``trained_on``; {} for a method without per-dataset settings. Recorded in eval files."""

    def using(self, settings: dict[str, float]) -> AbstractContextManager[None]:
        """Within the block the model computes with ``settings`` (from :meth:`evaluation_settings`)."""

    def freeze(self, kind: str, text: Tensor | None = None) -> nn.Module:
        """An export-ready module for the current classes: (N, 3, H, W) images -> (N, C) logits of
        ``kind`` (fused / class / rep), every image-independent part a constant."""


# --------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class MethodSpec:
    """One registered method."""

    name: str                       # what --method takes and run folders are named by
    title: str                      # its name in tables and logs ("MMRL++")
    config: type[MethodConfig]      # its settings: the `method` section of a run config
    model: str | type               # its model (a MethodModel): the class, or "module:Class" imported when built
    presets: str | None = None      # the method whose presets/*.yaml it uses; None: its own
    official: bool = False          # `mmrl convert-official` reads the authors' checkpoints of it
    retired_keys: tuple[str, ...] = ()  # method.* keys older config.yaml files carry that it ignores

    @property
    def preset_name(self) -> str:
        return self.presets or self.name

    def model_class(self) -> type:
        """The model class (importing its module: the light/heavy boundary)."""
        if isinstance(self.model, type):
            return self.model
        module, _, cls = self.model.partition(":")
        return getattr(importlib.import_module(module), cls)


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method (its name must be new, its settings a frozen MethodConfig whose ``name`` default
    is the method's name); returns the spec."""
    if spec.name in _REGISTRY:
        raise ValueError(f"method {spec.name!r} is already registered")
    if not (isinstance(spec.config, type) and issubclass(spec.config, MethodConfig)
            and spec.config.__dataclass_params__.frozen):
        raise TypeError(f"method {spec.name!r}: config must be a frozen dataclass deriving from MethodConfig")
    if spec.config().name != spec.name:
        raise ValueError(f"method {spec.name!r}: its config's name defaults to {spec.config().name!r}")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a method (tests that register a throwaway one)."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered methods' names, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> MethodSpec:
    """The spec of ``name``; ValueError naming the registered methods (and the closest) otherwise."""
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        close = difflib.get_close_matches(str(name), names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown method {shown(name)}; expected one of {', '.join(names())}{hint}")
    return spec


def title(name: str) -> str:
    """The method's name in tables ("mmrl++" -> "MMRL++"); an unregistered name as it is."""
    spec = _REGISTRY.get(name)
    return spec.title if spec else name


def method_config(name: str, **settings: Any) -> MethodConfig:
    """The settings of method ``name`` with ``settings`` changed from their defaults (unchecked;
    ``validate`` checks them): ``method_config("mmrl++", beta=0.7)``."""
    return get(name).config(**settings)


def convert_config(cfg: MethodConfig, name: str) -> MethodConfig:
    """Settings of method ``name`` that keep every value of ``cfg`` the new method also has (how a
    config being resolved changes method when ``method.name`` is set)."""
    cls = get(name).config
    kept = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if hasattr(cfg, f.name)}
    return cls(**{**kept, "name": name})


register(MethodSpec("mmrl", "MMRL", MMRLConfig, "mmrl.models.mmrl:MMRL", official=True,
                    retired_keys=("beta", "proj_lora_rank", "aligner_lora_rank")))  # mmrl 0.2 wrote them
register(MethodSpec("mmrl++", "MMRL++", MMRLPlusConfig, "mmrl.models.mmrl:MMRLPlus", official=True))

__all__ = ["MethodConfig", "MMRLConfig", "MMRLPlusConfig", "MethodModel", "MethodSpec", "register", "unregister",
           "names", "get", "title", "method_config", "convert_config"]
