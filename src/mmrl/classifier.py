"""Apply an adapted model in an application: :class:`Classifier`.

::

    from mmrl import Classifier

    clf = Classifier.from_run("runs/.../seed_1")                    # the run's training classes
    clf.predict(["cat.jpg", "dog.jpg"], top_k=3)                    # [[("cat", 0.97), ...], ...]
    clf.export("pets.onnx")                                         # one self-contained file
    Classifier.load("pets.onnx").predict("cat.jpg")                 # no CLIP, no class texts
    Classifier.load("pets.pt2", trust_pt2=True)                     # a .pt2 may run its author's code

A classifier is a fixed class set with a fixed logit kind. Logit choice (decoupled
inference, as ``mmrl eval`` decides): ``fused`` logits (alpha class-token + (1 - alpha)
representation-token logits) when the classes are the run's training classes, ``class``-token
logits for any other class set; ``logits='fused'|'class'`` chooses explicitly.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
from PIL import Image

from mmrl.data import load_image, transform_from_spec
from mmrl.engine import precision as amp
from mmrl.engine.decoupled import recorded_settings, resolve_class_set
from mmrl.engine.export import build_metadata, export_program, format_for, load_exported, write_exported
from mmrl.models.towers import image_resizing
from mmrl.engine.rundir import load_run, training_classnames
from mmrl.errors import shown

ImageLike = Union[str, Path, Image.Image]


class Classifier:
    """An adapted CLIP classifier for one class set: images -> class logits / probabilities.

    Build one with :meth:`from_run` (a run directory; needs the run's CLIP backbone) or
    :meth:`load` (a file written by :meth:`export` / ``mmrl export``; needs neither CLIP nor
    the class texts). Both give the same logits as ``mmrl eval --predictions`` on the same
    images (fp32; see docs/export.md for the measured agreement).

    Files from others: an ``.onnx`` file is plain data and safe to load; a ``.pt2`` file may run
    code of its author when loaded (``torch.export.load`` unpickles), so :meth:`load` opens one
    only with ``trust_pt2=True``.
    """

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], metadata: dict[str, Any], *,
                 model: Any = None, cfg: Any = None, run_dir: Path | None = None, frozen: Any = None,
                 columns: list[int] | None = None):
        """Internal: use :meth:`from_run` or :meth:`load`."""
        self._run = run
        self._meta = metadata
        self._model, self._cfg, self._run_dir, self._frozen = model, cfg, run_dir, frozen
        self._columns = columns  # a loaded file's columns kept by with_classes (None: all)
        self._transform = transform_from_spec(metadata["preprocessing"])
        self._precision = "fp32"  # of a classifier from a run: what its model computes at

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_run(cls, run_dir: str | Path, classes: Sequence[str] | None = None, *, dataset: str | None = None,
                 root: str | Path | None = None, subsample: str = "all", logits: str = "auto",
                 template: str | None = None, device: str | None = None,
                 precision: str | None = None) -> "Classifier":
        """A classifier from a trained (or converted) run directory.

        Args:
            run_dir: the run directory (``config.yaml`` + ``adapter.safetensors``).
            classes: class names; default: the run's training classes (from its ``split.json``).
            dataset, root, subsample: instead of ``classes``, the classes of a dataset, with its
                template and (MMRL++) its published target beta, exactly as ``mmrl eval`` uses them.
            logits: ``auto`` (fused on the run's training classes, class-token logits otherwise),
                ``fused`` or ``class``.
            template: prompt template with one ``{}`` (default: the run's / its dataset's).
            device: where the model runs (default: CUDA when available, else CPU).
            precision: auto / fp32 / bf16 / fp16; default the run's ``eval.precision`` (auto: bf16 on a
                CPU with native bf16, the frozen weights cast once; fp32 elsewhere). Logits are fp32 tensors
                whatever the precision.

        The class text features and the representation tokens after the vision aligners are
        computed here, once.
        """

        run_dir = Path(run_dir)
        model, cfg = load_run(run_dir, device=device)
        precision = _cast_for(model, precision or cfg.eval.precision)
        if classes is None and dataset is None:
            classes = training_classnames(run_dir)
            if classes is None:
                raise ValueError(f"{run_dir} has no split.json telling its training classes (e.g. a run converted "
                                 "from the authors' checkpoint): pass the class names (classes=[...]) or a dataset")
        return cls._for_classes(model, cfg, run_dir, classes=classes, dataset=dataset, root=root,
                                subsample=subsample, logits=logits, template=template, precision=precision)

    @classmethod
    def _for_classes(cls, model, cfg, run_dir: Path, precision: str = "fp32", **class_set) -> "Classifier":

        cs = resolve_class_set(model, cfg, run_dir, **class_set)
        model.eval()
        device = model.rep_tokens.device
        with torch.no_grad(), model.using(cs.settings):
            model.set_classes(cs.classnames, cs.template)
            text = amp.encode_text(model, device=device, precision=precision)
            with amp.autocast(device, precision):  # the aligners' outputs as the image tower uses them
                frozen = model.freeze(cs.kind, text).eval()
        meta = build_metadata(classnames=cs.classnames, template=cs.template, kind=cs.kind,
                              resizing=image_resizing(model.clip), method=model.cfg.name, beta=recorded_settings(cs.settings)["beta"],
                              alpha=float(model.cfg.alpha), logit_scale=float(model.cfg.logit_scale),
                              backbone=cfg.backbone, trained_on=cfg.data.dataset,
                              trained_subsample=cfg.data.subsample, dataset=cs.dataset, run=str(run_dir))

        def run(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), amp.autocast(device, precision):
                return frozen(images.to(device)).float().cpu()
        clf = cls(run, meta, model=model, cfg=cfg, run_dir=run_dir, frozen=frozen)
        clf._precision = precision
        return clf

    @classmethod
    def load(cls, path: str | Path, format: str | None = None, *, trust_pt2: bool = False) -> "Classifier":
        """A classifier from a file written by :meth:`export` or ``mmrl export``.

        Args:
            path: an ``.onnx`` or ``.pt2`` file.
            format: ``onnx`` or ``torch``; default: from the suffix of ``path`` (never guessed
                from the content: a file named ``.onnx`` is only ever read as ONNX).
            trust_pt2: allow opening a ``.pt2`` file. ``.pt2`` files are opened with
                ``torch.export.load``, which may unpickle parts of the archive, and unpickling can
                run any code the file's author put in it: trusting a ``.pt2`` file means trusting
                its author as you would a program you run. Without it a ``.pt2`` file is refused
                (UntrustedFileError) before it is read.

        ONNX files run with onnxruntime (``pip install onnxruntime``) and are plain data: loading
        one, from anyone, executes nothing of the file's.
        """

        run, meta = load_exported(path, format, trust_pt2=trust_pt2)
        return cls(run, meta)

    # ------------------------------------------------------------------ what it is
    @property
    def classes(self) -> list[str]:
        """The class names, in logit order (C of them)."""
        names = self._meta["classes"]
        return list(names) if self._columns is None else [names[i] for i in self._columns]

    @property
    def logit_kind(self) -> str:
        """``fused`` or ``class``."""
        return self._meta["logits"]

    @property
    def template(self) -> str:
        return self._meta["template"]

    @property
    def input_size(self) -> int:
        """H = W of the (N, 3, H, W) batches :meth:`logits` takes."""
        return int(self._meta["input_size"])

    @property
    def metadata(self) -> dict[str, Any]:
        """What an exported file records: classes, template, logit kind, input size, preprocessing, ..."""
        meta = copy.deepcopy(self._meta)
        if self._columns is not None:
            meta["classes"] = self.classes
            meta["output"]["shape"] = ["N", len(self._columns)]
        return meta

    def __repr__(self) -> str:
        src = f"run {self._run_dir}" if self._run_dir is not None else "exported file"
        return (f"Classifier({len(self.classes)} classes, {self.logit_kind} logits, "
                f"{self.input_size}x{self.input_size} input, {src})")

    # ------------------------------------------------------------------ inference
    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Image files or PIL images -> the (N, 3, H, W) float32 batch :meth:`logits` takes:
        RGB, the backbone's resize (CLIP's: bicubic, shorter side, centre crop), CLIP normalisation
        (``metadata['preprocessing']``)."""
        items = _as_list(images)
        pil = [im.convert("RGB") if isinstance(im, Image.Image) else load_image(str(im)) for im in items]
        return torch.stack([self._transform(im) for im in pil]) if pil else \
            torch.zeros(0, 3, self.input_size, self.input_size)

    def logits(self, batch: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Preprocessed images (N, 3, H, W) float32 (:meth:`preprocess`) -> logits (N, C) float32
        (CPU tensor) of :attr:`logit_kind`, columns in :attr:`classes` order."""
        x = torch.as_tensor(batch)
        S = self.input_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, S, S):
            raise ValueError(f"logits(batch): expected a (N, 3, {S}, {S}) batch, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return torch.zeros(0, len(self.classes))
        out = self._run(x.float())
        return out if self._columns is None else out[:, self._columns]

    def predict(self, images: ImageLike | Sequence[ImageLike], top_k: int = 5,
                batch_size: int = 32) -> list[list[tuple[str, float]]]:
        """The ``top_k`` most probable classes of each image (softmax over the logits).

        Args:
            images: an image file path, a PIL image, or a list of them.
            top_k: classes per image (at most C).
            batch_size: images per forward pass.
        Returns:
            one list per image of ``(class name, probability)``, most probable first.
        """
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k={shown(top_k)}; expected an integer >= 1")
        items = _as_list(images)
        k = min(top_k, len(self.classes))
        names = self.classes
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(items), batch_size):
            prob = self.logits(self.preprocess(items[start:start + batch_size])).softmax(-1)
            p, i = prob.topk(k, dim=-1)
            out.extend([(names[int(j)], float(q)) for q, j in zip(pr, ir)] for pr, ir in zip(p, i))
        return out

    # ------------------------------------------------------------------ other class sets, files
    def with_classes(self, classes: Sequence[str], logits: str = "auto") -> "Classifier":
        """The same adapted model on another class set.

        From a run: the class texts are encoded anew (same template); ``logits='auto'`` gives class-token
        logits (fused only when ``classes`` are exactly the run's training classes, in order,
        as ``mmrl predict`` decides). From a loaded file (its text features are baked in): only
        a subset of its classes, and only for a file of class-token logits (each class's
        column does not depend on the others).
        """
        if self._model is not None:
            return self._for_classes(self._model, self._cfg, self._run_dir, classes=list(classes),
                                     logits=logits, template=self.template, precision=self._precision)
        names = self._meta["classes"]
        missing = [c for c in classes if c not in names]
        if missing or self.logit_kind != "class" or logits == "fused" or not classes:
            raise ValueError(f"an exported file has its class texts baked in: with_classes can only pick a "
                             f"subset of its classes {names} from a file of class-token logits (this one: "
                             f"{self.logit_kind}; unknown classes: {missing}); build the classifier from the run "
                             "(Classifier.from_run) for a new class set")
        return Classifier(self._run, self._meta, columns=[names.index(c) for c in classes])

    def export(self, path: str | Path, format: str | None = None, precision: str | None = None) -> Path:
        """Write this classifier as one self-contained file: ``onnx`` or ``torch`` (``.pt2``),
        told from the suffix when ``format`` is None. Returns the path.

        ``precision``: ``fp32`` or ``bf16`` (``.pt2`` only: weights and computation in bf16 inside the
        file, about 2/3 its size; inputs and logits stay float32); default: the precision this classifier runs at
        (:meth:`from_run`'s ``precision``). A classifier built at bf16 holds bf16 weights and exports
        only bf16: build it with ``precision='fp32'`` for an fp32 file (``mmrl export`` does by default).

        The file maps ``images`` (N, 3, H, W) float32 to ``logits`` (N, C) float32, with the
        class text features, the representation tokens after every aligner and the logit
        choice baked in, and this classifier's :attr:`metadata`. ONNX needs the packages onnx
        and onnxscript (``pip install 'mmrl[export]'``).
        """
        if self._frozen is None:
            raise ValueError("this classifier was loaded from an exported file; export from the run "
                             "(Classifier.from_run(...).export(path))")
        fmt = format_for(path, format)
        precision = precision or ("bf16" if self._precision == "bf16" else "fp32")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision={shown(precision)}; expected fp32 or bf16")
        if precision == "bf16" and fmt == "onnx":
            # onnxruntime's CPU kernels have no bf16 MatMul/LayerNorm: it refuses such a file when loading it
            raise ValueError("bf16 export is for the torch format (.pt2): onnxruntime cannot run a bf16 ONNX "
                             "graph on the CPU; export ONNX in fp32")
        if precision == "fp32" and self._precision != "fp32":
            raise ValueError(f"this classifier runs at {self._precision} (its frozen weights were cast): build it "
                             "with Classifier.from_run(..., precision='fp32') to export an fp32 file")
        frozen = self._frozen
        if frozen.text.device.type != "cpu":  # an exported graph is for the CPU; keep the model where it is
            frozen = copy.deepcopy(frozen).cpu()
        if precision == "bf16":
            frozen = amp.Bf16Module(frozen)
        program = export_program(frozen, self.input_size)
        return write_exported(program, {**self._meta, "precision": precision}, path, fmt)


def _cast_for(model, precision: str) -> str:
    """The precision a just-loaded model runs at (auto resolved), its frozen weights cast to bf16 once
    on a CPU when that is it."""
    device = model.rep_tokens.device
    precision = amp.eval_precision(precision, device, amp.tower_width(model))[0]
    amp.cast_frozen(model, precision)
    return precision


def _as_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    return list(images)
