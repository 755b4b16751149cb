"""MMRL and MMRL++ on a frozen CLIP ViT, exact to the published method.

Reads top to bottom: the method's small functions (slot refresh, heads, logits) -> outputs ->
the model (representation space, text tower, vision tower, logits, loss) -> zero-shot CLIP.
The specification is ``docs/method.md``; notation: K tokens, representation width d_r,
vision width d_v, text width d_t, joint embedding d_e, blocks 1-indexed, tokens in blocks
J..L where L is each tower's last block. The attention blocks live in
:mod:`mmrl.models.blocks`, the aligners in :mod:`mmrl.models.aligners`.

This is the **fast path**: blocks 1..J-1 of the image tower run once and the frozen teacher
branches off there; the text hidden states entering block J are cached per class set and the
words of all prompts packed without padding; the class-independent prefix ``[SOT, R_1..R_K]``
runs once instead of once per class; last blocks compute only the tokens that are read. Each
saving is exact: :mod:`mmrl.models.reference` computes the spec the straightforward way (what
the authors' code does) and the tests check that both agree (docs/performance.md).

Choices where the spec is silent (also in docs):
* J applies to both towers; tokens live from block J to the last block of EACH tower, so
  towers of different depth get different numbers of aligner maps.
* ``K``, ``d_r``, J, the LoRA ranks follow :class:`MMRLConfig` / :class:`MMRLPlusConfig`; widths
  follow the backbone.
* Text-side blocks 1..J-1 run on the prompt cut after its longest EOT (exact under the
  causal mask) for the cached states and the zero-shot teacher features.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from contextlib import contextmanager
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmrl.models.aligners import BlockAligners, SharedResidualAligners
from mmrl.models.backbone import Backbone
from mmrl.models import generic
from mmrl.models.blocks import finish_block, finish_tokens, in_proj, run_adapted_vision_blocks, run_block, run_block_rows
from mmrl.methods import MMRLConfig, MMRLPlusConfig
from mmrl.models.losses import Criterion, cross_entropy
from mmrl.models.prompts import tokenize_classes
from mmrl.models.towers import VisionTower, towers_of


def refresh_slots(slots: Tensor, new: Tensor, beta: float | None) -> Tensor:
    """Slot refresh before block i > J: ``new`` replaces the slots (MMRL, ``beta=None``) or
    is blended in as ``beta * new + (1 - beta) * slots`` (MMRL++ PRC).

    Args:
        slots: (B, K, d) the slots leaving block i - 1; new: (B, K, d) or (K, d) the aligner's
            output for block i.
    Returns:
        (B, K, d)
    """
    if beta is not None:
        return beta * new + (1.0 - beta) * slots
    return new.expand_as(slots)


def _without_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off where it is on (a model built on the meta device has none to switch)."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def upcast(t: Tensor | None) -> Tensor | None:
    """bf16 / fp16 -> fp32; fp32, float64 and None as they are."""
    return t if t is None or t.dtype not in (torch.bfloat16, torch.float16) else t.float()


def fuse_logits(class_logits: Tensor, rep_logits: Tensor, alpha: float) -> Tensor:
    """Decoupled inference's fused logits ``alpha l_c + (1 - alpha) l_r``, each (B, C)."""
    return alpha * class_logits + (1 - alpha) * rep_logits


def vision_stem(tower: VisionTower, images: Tensor) -> Tensor:
    """The image tower's stem: (B, 3, H, W) -> (B, 1 + P, d_v) (CLIP: patches, CLS, positional
    embedding, ln_pre)."""
    return tower.stem(images)


def vision_heads(tower: VisionTower, x: Tensor, K: int,
                 rep_projection: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """CLIP layout. Output tokens (B, 1 + K + ..., d_v) -> f_c = ln_post(CLS) @ proj and
    f_r = mean_k ln_post(rep token k) @ rep_projection (ln_post BEFORE the mean); each (B, d_e).
    ``rep_projection=None``: f_c alone (f_r is None)."""
    f_c = tower.pool(x[:, :1])
    if rep_projection is None:
        return f_c, None
    f_r = tower.final_norm(x[:, 1:1 + K]).mean(dim=1) @ rep_projection
    return f_c, f_r


def cosine_logits(features: Tensor, text_normed: Tensor, scale: float) -> Tensor:
    """``scale * cos``: features (B, d_e) unnormalised, text_normed (C, d_e) L2-normalised -> (B, C)."""
    return scale * F.normalize(features, dim=-1) @ text_normed.t()


# --------------------------------------------------------------------------- outputs
class Logits(NamedTuple):
    """Each (B, C): ``class_`` from the class token, ``rep`` from the representation
    tokens, ``fused = alpha * class_ + (1 - alpha) * rep``."""

    class_: Tensor
    rep: Tensor
    fused: Tensor

    def of(self, kind: str) -> Tensor:
        """The logits of one kind of :data:`mmrl.vocab.LOGIT_KINDS`: ``fused``, ``class`` or ``rep``."""
        return {"fused": self.fused, "class": self.class_, "rep": self.rep}[kind]


class LossOutput(NamedTuple):
    """Loss terms. The per-sample terms are averaged over ``batch_size`` (the GLOBAL batch
    under data parallelism); ``sample_part`` is their weighted sum
    ``alpha CE_c + (1-alpha) CE_r + lambda reg_image`` and ``total`` the loss to backpropagate."""

    total: Tensor         # scalar: world_size * sample_part + lambda * reg_text (= the loss when world_size = 1)
    ce_class: Tensor      # CE(logits_c, y), this process's share of the batch mean
    ce_rep: Tensor        # CE(logits_r, y), likewise
    reg_image: Tensor     # 1 - mean_batch cos(f_c, f_c_zs), likewise
    reg_text: Tensor      # 1 - mean_classes cos(t, t_zs)
    logits: Logits
    sample_part: Tensor   # scalar: the per-sample part of the loss (sums over ranks to the global one)


class ImageFeatures(NamedTuple):
    class_: Tensor                 # (B, d_e) f_c, unnormalised
    rep: Tensor                    # (B, d_e) f_r, unnormalised
    teacher: Tensor | None = None  # (B, d_e) frozen CLIP's f_c_zs of the same images


# --------------------------------------------------------------------------- model
class MMRL(nn.Module):
    """MMRL around a frozen CLIP (:class:`MMRLPlus` is MMRL++); a :class:`mmrl.methods.MethodModel`.

    Usage::

        model = MMRL(load_backbone("ViT-B-16"), MMRLConfig())
        model.set_classes(["cat", "dog"], "a photo of a {}.")
        out = model.loss(images, labels)            # training
        logits = model.logits(images).fused         # (B, C)

    Only the adapter (``rep_tokens``, the aligners, ``proj_rep``) is trainable; ``model.clip``
    is frozen.
    """

    config_class: type[MMRLConfig] = MMRLConfig  # the settings it is built from

    def __init__(self, backbone: Backbone, cfg: MMRLConfig):
        super().__init__()
        if type(cfg) is not self.config_class:
            raise TypeError(f"{type(self).__name__} is built from {self.config_class.__name__}, got "
                            f"{type(cfg).__name__} (method {cfg.name!r}): use mmrl.models.build_method")
        cfg.validate(backbone.vision_layers, backbone.text_layers)
        self.cfg = cfg
        self.clip = backbone.clip
        # the towers' adapters (mmrl.models.towers): every read of the backbone goes through them;
        # CLIP's layout takes the fast path below, other families the generic one (mmrl.models.generic)
        self.towers = towers_of(backbone.clip, backbone.spec)
        self.fast = self.towers.clip_layout
        self.mask_slot_keys = False  # generic path only: hide the slots from other tokens (the special case of docs/method.md)
        self.tokenizer = backbone.tokenizer
        n_v = backbone.vision_layers - cfg.first_rep_block + 1
        n_t = backbone.text_layers - cfg.first_rep_block + 1
        # R: the shared representation space, N(0, 0.02^2)
        self.rep_tokens = nn.Parameter(torch.randn(cfg.n_rep_tokens, cfg.rep_dim) * 0.02)
        self._build_maps(backbone, n_v, n_t)
        self.to(next(backbone.clip.parameters()).device)
        self.classnames: list[str] = []

    def _build_maps(self, backbone: Backbone, n_v: int, n_t: int) -> None:
        """The aligners (one map per block J..L of each tower) and the representation projection,
        created right after ``rep_tokens`` (the order of the random draws is the authors')."""
        d_r, d_v, d_e = self.cfg.rep_dim, backbone.vision_width, backbone.embed_dim
        d_p = self.towers.vision.rep_width  # d_v, or an attentional pooler's output width (CoCa)
        self.vision_aligner = BlockAligners(d_r, d_v, n_v)
        self.text_aligner = BlockAligners(d_r, backbone.text_width, n_t)
        self.proj_rep = nn.Parameter(d_p ** -0.5 * torch.randn(d_p, d_e))

    # ---------------------------------------------------------------- helpers
    @property
    def K(self) -> int:
        return self.cfg.n_rep_tokens

    @property
    def J0(self) -> int:
        """0-indexed position of block J in the block lists."""
        return self.cfg.first_rep_block - 1

    def rep_projection(self) -> Tensor:
        """(d_v, d_e): ``proj_rep``."""
        return self.proj_rep

    def slot_beta(self) -> float | None:
        """The slot blend of :func:`refresh_slots`: None, MMRL replaces the slots."""
        return None

    def refresh_slots(self, slots: Tensor, new: Tensor) -> Tensor:
        """Slot refresh before block i > J: replace (MMRL) or beta-blend (MMRL++ PRC)."""
        return refresh_slots(slots, new, self.slot_beta())

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """The trainable tensors only (a few MB), detached, by name."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in self.named_parameters() if p.requires_grad}

    def load_adapter_state_dict(self, tensors: dict[str, Tensor]) -> None:
        """Load adapter tensors; error naming each missing/unexpected/misshapen key."""
        expected = self.adapter_shapes()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        wrong = [f"{k}: got {tuple(tensors[k].shape)}, expected {expected[k]}"
                 for k in sorted(set(expected) & set(tensors)) if tuple(tensors[k].shape) != expected[k]]
        if missing or unexpected or wrong:
            raise ValueError(f"adapter tensors do not fit method {self.cfg.name!r} (K={self.K}, "
                             f"d_r={self.cfg.rep_dim}, J={self.cfg.first_rep_block}) on this backbone: "
                             f"missing {missing}, unexpected {unexpected}, shape mismatches {wrong}")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for k, v in tensors.items():
                params[k].copy_(v.to(params[k].dtype))

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ---------------------------------------------------------------- classes
    def set_classes(self, classnames: list[str], template: str) -> None:
        """Tokenise one prompt per class and cache what does not change during training.

        Caches (non-persistent buffers): ``text_tokens`` (C, ctx), ``eot`` (C,) EOT positions,
        ``text_hidden_J`` (C, T, d_t) the hidden states entering block J cut after the
        longest EOT (T = max EOT + 1), ``text_teacher`` (C, d_e) frozen CLIP's text
        features (the regulariser's t_zs). For the fast path, the words and EOT of every
        prompt (positions 1..EOT) packed without padding: ``text_words`` (W, d_t) their states
        entering block J, ``text_word_index`` (W,) the row of each in a padded (C * (T - 1))
        layout, ``text_eot_row`` (C,) each EOT's packed row and ``text_word_mask``
        (T - 1, 1 + K + T - 1) the keys [prefix, words] each word position may attend to.
        """
        if not classnames:
            raise ValueError("set_classes: empty class list")
        device = self.rep_tokens.device
        tokens = tokenize_classes(self.tokenizer, classnames, template).to(device)
        if not self.fast:  # other families: the prompts and the frozen tower's features (t_zs)
            with torch.no_grad():
                teacher = generic.text_features(self.towers.text, tokens)
            self.classnames = list(classnames)
            self.register_buffer("text_tokens", tokens, persistent=False)
            self.register_buffer("text_teacher", teacher, persistent=False)
            return
        eot = tokens.argmax(dim=-1)  # EOT has the largest id in CLIP's vocabulary
        T = int(eot.max()) + 1
        with torch.no_grad():
            h = self._text_stem(tokens[:, :T])
            blocks = self.towers.text.blocks
            for blk in blocks[: self.J0]:
                h = run_block(blk, h, is_causal=True)
            t = h
            for blk in blocks[self.J0:]:
                t = run_block(blk, t, is_causal=True)
            teacher = self._text_head(t, eot)
        self.classnames = list(classnames)
        self.register_buffer("text_tokens", tokens, persistent=False)
        self.register_buffer("eot", eot, persistent=False)
        self.register_buffer("text_hidden_J", h, persistent=False)
        self.register_buffer("text_teacher", teacher, persistent=False)
        # fast path: the words of all prompts packed (no padding), see _encode_text_fast
        n_w = T - 1
        is_word = torch.arange(1, T, device=device) <= eot[:, None]    # (C, T - 1): positions 1..EOT
        mask = torch.ones(n_w, 1 + self.K + n_w, dtype=torch.bool, device=device)
        mask[:, 1 + self.K:].tril_()                                    # prefix: all; words: causal
        self.register_buffer("text_words", h[:, 1:][is_word], persistent=False)
        self.register_buffer("text_word_index", is_word.flatten().nonzero().squeeze(1), persistent=False)
        self.register_buffer("text_eot_row", eot.cumsum(0) - 1, persistent=False)
        self.register_buffer("text_word_mask", mask, persistent=False)

    def _text_stem(self, tokens: Tensor) -> Tensor:
        """(C, T) ids -> (C, T, d_t) token + positional embeddings."""
        return self.towers.text.stem(tokens)

    def _text_head(self, x: Tensor, pos: Tensor) -> Tensor:
        """ln_final at the given position of each row, then text_projection: (C, d_e)."""
        return self.towers.text.head(x[torch.arange(x.shape[0], device=x.device), pos])

    # ---------------------------------------------------------------- text tower
    def encode_text(self) -> Tensor:
        """Text features ``t`` (C, d_e), unnormalised, of the current classes."""
        if not hasattr(self, "text_teacher"):
            raise RuntimeError("call set_classes(classnames, template) first")
        if not self.fast:
            rep = self.rep_tokens
            return generic.text_features(self.towers.text, self.text_tokens, self.J0,
                                         lambda i: self.text_aligner.map(i, rep), self.refresh_slots,
                                         mask_slot_keys=self.mask_slot_keys)
        blocks = self.towers.text.blocks[self.J0:]
        last = len(blocks) - 1
        H, D = blocks[0].num_heads, self.text_words.shape[-1]
        h, rep = self.text_hidden_J, self.rep_tokens

        def heads(x: Tensor) -> Tensor:  # (B, N, D) -> (B, heads, N, D / heads)
            return x.unflatten(-1, (H, -1)).transpose(1, 2)

        # The prefix [SOT, R_1..R_K] sees only itself under the causal mask, so it is the same
        # for every class: run it once (batch 1) and keep its q/k/v of each block.
        prefix = torch.cat([h[:1, :1], self.text_aligner.map(0, rep).unsqueeze(0).to(h.dtype)], dim=1)
        prefix_qkv = []                                                      # (1, 1 + K, 3D) per block
        for i, blk in enumerate(blocks):
            if i > 0:
                new = self.text_aligner.map(i, rep).unsqueeze(0).to(prefix.dtype)
                prefix = torch.cat([prefix[:, :1], self.refresh_slots(prefix[:, 1:], new)], dim=1)
            prefix_qkv.append(in_proj(blk, blk.norm1(prefix)))
            if i < last:  # the prefix's output after the last block is never read
                q, k, v = (heads(t) for t in prefix_qkv[i].chunk(3, dim=-1))
                prefix = finish_block(blk, prefix, F.scaled_dot_product_attention(q, k, v, is_causal=True))

        # Words and EOT of all classes, packed (W rows, no padding): all but attention is per
        # token and runs on the packed rows. For attention, q/k/v go to a padded (C, T - 1)
        # layout whose padding lies after each EOT, where the causal mask hides it from every
        # real token; keys/values are [prefix, words]. Only the EOT outputs are read, so the
        # last block runs its query, out_proj and MLP for the EOT tokens alone.
        words, index, mask = self.text_words, self.text_word_index, self.text_word_mask
        C, n_w = self.eot.shape[0], mask.shape[0]

        def padded(rows: Tensor) -> Tensor:  # packed (W, m) -> (C, T - 1, m), zeros after EOT
            return rows.new_zeros(C * n_w, rows.shape[-1]).index_copy(0, index, rows).view(C, n_w, -1)

        for i, blk in enumerate(blocks):
            hw = blk.norm1(words)
            if i < last:
                q, k, v = padded(in_proj(blk, hw)).chunk(3, dim=-1)
                m = mask
            else:
                k, v = padded(in_proj(blk, hw, 1, 2)).chunk(2, dim=-1)
                q = in_proj(blk, hw[self.text_eot_row], 0, 1).unsqueeze(1)     # (C, 1, D)
                m = mask[self.eot - 1][:, None, None]                           # (C, 1, 1, 1 + K + T - 1)
                words = words[self.text_eot_row]
            _, pk, pv = prefix_qkv[i].chunk(3, dim=-1)
            k = torch.cat([pk.expand(C, -1, -1), k], dim=1)
            v = torch.cat([pv.expand(C, -1, -1), v], dim=1)
            o = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=m)
            o = o.transpose(1, 2).flatten(2)                                     # (C, T - 1 or 1, D)
            words = finish_tokens(blk, words, o.reshape(C * n_w, D)[index] if i < last else o[:, 0])
        return self.towers.text.head(words)

    # ---------------------------------------------------------------- vision tower
    def _vision_stem(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 1 + P, d_v): patches, CLS, positional embedding, ln_pre."""
        return vision_stem(self.towers.vision, images)

    def _vision_heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Output tokens (B, 1 + K + ..., d_v) -> (f_c, f_r), see :func:`vision_heads`."""
        return vision_heads(self.towers.vision, x, self.K, self.rep_projection())

    def encode_image(self, images: Tensor, teacher: bool = False) -> ImageFeatures:
        """Image features of a batch (B, 3, H, W); ``teacher=True`` also returns frozen
        CLIP's class feature of the same images (for the regulariser)."""
        rep = self.rep_tokens
        if not self.fast:
            return ImageFeatures(*generic.image_features(
                self.towers.vision, images, self.J0, lambda i: self.vision_aligner.map(i, rep), self.refresh_slots,
                self.rep_projection(), teacher=teacher, mask_slot_keys=self.mask_slot_keys))
        blocks = self.towers.vision.blocks
        with torch.no_grad():  # blocks 1..J-1 are frozen and shared by teacher and student
            x = self._vision_stem(images)
            for blk in blocks[: self.J0]:
                x = run_block(blk, x)
            f_t = None
            if teacher:  # only the teacher's CLS is read: its last block runs for CLS alone
                t = x
                for blk in blocks[self.J0:-1]:
                    t = run_block(blk, t)
                t = run_block_rows(blocks[-1], t, 1)
                f_t = self.towers.vision.pool(t)
        x = run_adapted_vision_blocks(blocks[self.J0:], x, lambda i: self.vision_aligner.map(i, rep),
                                      self.refresh_slots, 1 + self.K)
        f_c, f_r = self._vision_heads(x)
        return ImageFeatures(f_c, f_r, f_t)

    # ---------------------------------------------------------------- logits and loss
    def logits_from_features(self, image: ImageFeatures, text: Tensor) -> Logits:
        """Cosine logits at the fixed scale; ``text`` (C, d_e) unnormalised."""
        t = F.normalize(text, dim=-1)
        s = self.cfg.logit_scale
        lc = cosine_logits(image.class_, t, s)
        lr = cosine_logits(image.rep, t, s)
        return Logits(lc, lr, fuse_logits(lc, lr, self.cfg.alpha))

    def logits(self, images: Tensor, text: Tensor | None = None) -> Logits:
        """All three kinds of logits (B, C); pass precomputed ``text`` features to evaluate
        many batches against one class set. The decoupled-inference choice (fused on
        training classes, class-only on novel ones) is the caller's."""
        if text is None:
            text = self.encode_text()
        feats = self.encode_image(images)
        with _without_autocast(images.device):  # the head in fp32, whatever the towers ran in
            return self.logits_from_features(ImageFeatures(*map(upcast, feats)), upcast(text))

    def loss(self, images: Tensor, labels: Tensor, *, batch_size: int | None = None,
             weights: Tensor | None = None, world_size: int = 1, criterion: Criterion = cross_entropy) -> LossOutput:
        """The training loss of docs/method.md#training-loss (see :meth:`loss_from_features`).

        Args:
            images: (B, 3, H, W); labels: (B,) class indices.
            batch_size: denominator of the per-sample means (default B). Data-parallel
                training passes the global batch size so that each rank's share sums to
                the single-process loss.
            weights: optional (B,) per-sample weights (0 masks a padding sample that a rank
                without real samples runs so that every trainable tensor gets a gradient).
            world_size: number of data-parallel processes; ``total`` is scaled so that
                DDP's gradient AVERAGE equals the single-process gradient of the global
                batch (the text regulariser is the same on every rank and is not scaled).
            criterion: the per-sample classification loss of both terms (:mod:`mmrl.models.losses`;
                cross-entropy, the papers', by default).
        """
        feats, text = self.encode_image(images, teacher=True), self.encode_text()
        # logits, cross-entropies and regularisers in fp32 from the towers' (bf16 / fp16) features;
        # at fp32 this is the same computation bit for bit
        with _without_autocast(images.device):
            return self.loss_from_features(ImageFeatures(*map(upcast, feats)), upcast(text), labels,
                                           batch_size=batch_size, weights=weights, world_size=world_size,
                                           criterion=criterion)

    def loss_from_features(self, feats: ImageFeatures, text: Tensor, labels: Tensor, *,
                           batch_size: int | None = None, weights: Tensor | None = None,
                           world_size: int = 1, criterion: Criterion = cross_entropy) -> LossOutput:
        """``alpha CE(l_c) + (1-alpha) CE(l_r) + lambda (1 - cos(f_c, f_c_zs)) + lambda (1 - cos(t, t_zs))``
        from image features (with the teacher's) and text features (C, d_e); arguments as :meth:`loss`."""
        logits = self.logits_from_features(feats, text)
        a, lam = self.cfg.alpha, self.cfg.reg_weight
        B = labels.shape[0]
        n = float(batch_size if batch_size is not None else B)
        dtype = logits.class_.dtype
        w = torch.ones(B, device=labels.device, dtype=dtype) if weights is None else weights.to(logits.class_)
        w = w / n
        ce_c = (criterion(logits.class_, labels) * w).sum()
        ce_r = (criterion(logits.rep, labels) * w).sum()
        cos_i = F.cosine_similarity(feats.class_, feats.teacher.to(feats.class_.dtype), dim=-1)
        reg_i = ((1 - cos_i) * w).sum()
        reg_t = 1 - F.cosine_similarity(text, self.text_teacher.to(text.dtype), dim=-1).mean()
        sample_part = a * ce_c + (1 - a) * ce_r + lam * reg_i
        total = world_size * sample_part + lam * reg_t
        return LossOutput(total, ce_c, ce_r, reg_i, reg_t, logits, sample_part)

    def forward(self, images: Tensor, labels: Tensor, **kw) -> LossOutput:
        """The training loss (so that ``DistributedDataParallel(model)(images, labels)`` works)."""
        return self.loss(images, labels, **kw)

    def settings(self) -> dict:
        """Effective settings (JSON-able)."""
        d = dataclasses.asdict(self.cfg)
        d["blocks_vision"] = [self.cfg.first_rep_block, self.towers.vision.layers]
        d["blocks_text"] = [self.cfg.first_rep_block, self.towers.text.layers]
        return d

    # ---------------------------------------------------------------- applying the model
    def evaluation_settings(self, trained_on: str | None, target_settings: dict[str, float],
                            dataset: str | None) -> dict[str, float]:
        """MMRL has no per-dataset settings."""
        return {}

    @contextmanager
    def using(self, settings: dict[str, float]) -> Iterator[None]:
        """Within the block the model computes with ``settings`` (method keys -> values)."""
        if not settings:
            yield
            return
        old = self.cfg
        self.cfg = dataclasses.replace(old, **settings)  # the settings are frozen: the model gets a variant
        try:
            yield
        finally:
            self.cfg = old

    def freeze(self, kind: str, text: Tensor | None = None) -> nn.Module:
        """A :class:`mmrl.models.frozen.FrozenClassifier` of the current classes and settings."""
        from mmrl.models.frozen import FrozenClassifier  # it builds on this module's functions

        return FrozenClassifier(self, kind, text)


class MMRLPlus(MMRL):
    """MMRL++ (docs/method.md): MMRL with a shared residual aligner (SRRA), the slot blend beta of
    the progressive representation composition (PRC) and ``proj_rep = proj + A B``. Only the
    adapter (``rep_tokens``, the aligners, ``proj_lora_A/B``) is trainable."""

    cfg: MMRLPlusConfig
    config_class = MMRLPlusConfig

    def _build_maps(self, backbone: Backbone, n_v: int, n_t: int) -> None:
        d_r, d_v, d_e, r = self.cfg.rep_dim, backbone.vision_width, backbone.embed_dim, self.cfg.aligner_lora_rank
        self.vision_aligner = SharedResidualAligners(d_r, d_v, n_v, r)
        self.text_aligner = SharedResidualAligners(d_r, backbone.text_width, n_t, r)
        self.proj_lora_A = nn.Parameter(torch.empty(self.towers.vision.rep_width, self.cfg.proj_lora_rank))
        nn.init.kaiming_uniform_(self.proj_lora_A, a=math.sqrt(5))
        self.proj_lora_B = nn.Parameter(torch.zeros(self.cfg.proj_lora_rank, d_e))

    def rep_projection(self) -> Tensor:
        """(d_v, d_e): ``P + A B``, P the tower's frozen output projection (the identity where
        its head projects nothing, :meth:`mmrl.models.towers.VisionTower.projection`)."""
        return self.towers.vision.projection() + self.proj_lora_A @ self.proj_lora_B

    def slot_beta(self) -> float | None:
        """PRC's blend ``beta * new + (1 - beta) * slots``."""
        return self.cfg.beta

    def evaluation_settings(self, trained_on: str | None, target_settings: dict[str, float],
                            dataset: str | None) -> dict[str, float]:
        """The beta on ``dataset``: its published target beta (``eval.target_beta``) when it is another
        dataset than the training one and listed, else the run's own."""
        if dataset is not None and dataset != trained_on and dataset in target_settings:
            return {"beta": float(target_settings[dataset])}
        return {"beta": float(self.cfg.beta)}


__all__ = ["MMRL", "MMRLPlus", "Logits", "LossOutput", "ImageFeatures"]
