"""One prompt per class, tokenised for the text tower, saying out loud the two ways a class set
goes wrong: a prompt longer than the text context is cut (a warning naming the classes), and
two classes whose prompts become identical by that cut are refused -- the model could only tell
them apart at chance. Classes whose full prompts are already identical (ImageNet's two "crane"
and two "maillot" classes, as CoOp names them) are kept, with a warning: that is the benchmark.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch

from mmrl.errors import PromptError, shown

LOG = logging.getLogger("mmrl")
_LISTED = 3  # classes named in a warning


def class_prompts(classnames: Sequence[str], template: str) -> list[str]:
    """``template`` filled with each class name, underscores read as spaces (as CoOp)."""
    return [template.format(c.replace("_", " ")) for c in classnames]


def tokenize_classes(tokenizer: Callable[[list[str]], torch.Tensor], classnames: Sequence[str],
                     template: str) -> torch.Tensor:
    """The class prompts as token ids (C, context_length), checked (see module docstring).

    A prompt counts as cut when its tokens with start and end token exceed the context; that is
    known where the tokenizer exposes ``encode`` (CLIP's BPE tokenizer does).
    """
    prompts = class_prompts(classnames, template)
    tokens = tokenizer(prompts)
    ctx = tokens.shape[1]
    encode = getattr(tokenizer, "encode", None)
    cut = ({c for c, p in zip(classnames, prompts) if len(encode(p)) + 2 > ctx}
           if callable(encode) else set())
    if cut:
        LOG.warning("%d of %d class prompts are longer than the text context of %d tokens and were cut, e.g. %s; "
                    "shorten the class names or the template (data.template)", len(cut), len(prompts), ctx,
                    ", ".join(shown(c) for c in sorted(cut)[:_LISTED]))
    first: dict[tuple[int, ...], int] = {}
    same: list[str] = []
    for i, row in enumerate(tokens.tolist()):
        j = first.setdefault(tuple(row), i)
        if j == i:
            continue
        if prompts[i] != prompts[j]:
            raise PromptError(f"classes {shown(classnames[j])} and {shown(classnames[i])} have the same prompt once cut "
                              f"to the text context of {ctx} tokens, so no model can tell them apart; shorten the "
                              "class names or the template (data.template)")
        same.append(f"{shown(classnames[j])} / {shown(classnames[i])}")
    if same:
        LOG.warning("%d pairs of classes have identical prompts and cannot be told apart: %s", len(same),
                    ", ".join(same[:_LISTED]))
    return tokens
