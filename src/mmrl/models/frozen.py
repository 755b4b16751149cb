"""A trained MMRL / MMRL++ model frozen for one class set: images in, logits out.

Once training is over, everything that does not depend on the image is a constant:

* the class text features (the whole text tower, for the chosen class names and template);
* the representation tokens after every vision aligner, ``F^i(R)`` for blocks J..L;
* the representation projection (MMRL's ``proj_rep``; MMRL++'s ``proj + A B``);
* the decoupled-inference choice (``fused`` on the run's training classes, ``class``
  otherwise) and, for MMRL++, the beta of the slot blend.

:class:`FrozenClassifier` holds those constants and the frozen image tower and computes what
``MMRL.logits(images, text)`` computes at evaluation (the same functions of
``mmrl.models.mmrl``), returning only the chosen kind. Its forward has no data-dependent
control flow, so ``torch.export`` and the ONNX exporter trace it with a dynamic batch size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmrl.models import generic
from mmrl.models.blocks import run_adapted_vision_blocks, run_block
from mmrl.models.mmrl import MMRL, cosine_logits, fuse_logits, refresh_slots, vision_heads, vision_stem
from mmrl.vocab import LOGIT_KINDS



class FrozenClassifier(nn.Module):
    """(N, 3, H, W) preprocessed float32 images -> (N, C) logits of one kind.

    Buffers (all constants): ``slots`` (L - J + 1, K, d_v) the vision aligners' outputs,
    ``text`` (C, d_e) the L2-normalised class text features, ``rep_projection`` (d_v, d_e)
    (fused and representation logits only). The image tower's weights are shared with the model it was built
    from (``visual``); the text tower and the aligners are not kept.
    """

    def __init__(self, model: MMRL, kind: str, text: Tensor | None = None):
        """Freeze ``model`` for its current class set (``model.set_classes``) and ``model.cfg.beta``.

        Args:
            model: an MMRL / MMRL++ model (eval mode) whose classes are set.
            kind: ``fused`` (alpha class + (1 - alpha) representation logits), ``class`` (class token
                only) or ``rep`` (representation tokens only).
            text: (C, d_e) unnormalised text features if already computed (``model.encode_text()``).
        """
        super().__init__()
        if kind not in LOGIT_KINDS:
            raise ValueError(f"logits={kind!r}; expected one of {', '.join(LOGIT_KINDS)}")
        self.kind = kind
        self.visual = model.towers.vision.module  # registered: the exported program holds its weights
        self.tower = model.towers.vision     # the adapter that reads it
        self.fast = model.fast
        self.first_block = model.J0          # 0-indexed block J
        self.n_rep = model.K
        beta = model.slot_beta()
        self.beta = None if beta is None else float(beta)
        self.alpha = float(model.cfg.alpha)
        self.scale = float(model.cfg.logit_scale)
        with torch.no_grad():
            if text is None:
                text = model.encode_text()
            rep = model.rep_tokens
            n = len(model.vision_aligner)
            self.register_buffer("slots", torch.stack([model.vision_aligner.map(i, rep) for i in range(n)]).detach())
            self.register_buffer("text", F.normalize(text.detach(), dim=-1))
            if kind != "class":
                self.register_buffer("rep_projection", model.rep_projection().detach().clone())
            else:
                self.rep_projection = None
        self.classnames = list(model.classnames)

    @property
    def num_classes(self) -> int:
        return int(self.text.shape[0])

    def _refresh(self, slots: Tensor, new: Tensor) -> Tensor:
        return refresh_slots(slots, new, self.beta)

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) float32, preprocessed -> (N, C) logits (``self.kind``)."""
        if not self.fast:  # other tower families: the generic path (mmrl.models.generic)
            f_c, f_r, _ = generic.image_features(self.tower, images, self.first_block, lambda i: self.slots[i],
                                                 self._refresh, self.rep_projection)
        else:
            blocks = self.tower.blocks
            x = vision_stem(self.tower, images)
            for blk in blocks[: self.first_block]:
                x = run_block(blk, x)
            # class logits read CLS alone after the last block (exact: everything after attention
            # is per token); fused and representation logits also read the K slots
            n_out = 1 if self.kind == "class" else 1 + self.n_rep
            x = run_adapted_vision_blocks(blocks[self.first_block:], x, lambda i: self.slots[i], self._refresh, n_out)
            f_c, f_r = vision_heads(self.tower, x, self.n_rep, self.rep_projection)
        if self.kind == "rep":
            return cosine_logits(f_r, self.text, self.scale)
        lc = cosine_logits(f_c, self.text, self.scale)
        if f_r is None:
            return lc
        return fuse_logits(lc, cosine_logits(f_r, self.text, self.scale), self.alpha)
