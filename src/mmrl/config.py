"""Typed run configuration, YAML presets and how they are layered.

A run is described by one :class:`RunConfig` (dataclasses all the way down). It is built
by :func:`resolve_config` from, in this order (later wins):

1. the dataclass defaults below;
2. the preset ``presets/<method>-<protocol>.yaml`` shipped in the package;
3. the per-dataset overrides of ``presets/datasets.yaml`` (per method, per protocol, per
   dataset: lambda, beta, d_r, ImageNet's batch/epochs; MMRL++ cross-dataset target betas);
4. the user's ``--config FILE.yaml`` (nested mapping or dotted keys);
5. the user's ``--set key=value`` items (dotted keys, YAML-parsed values) -- and the CLI
   flags such as ``--shots``, which are applied as typed overrides just before them.

Every key and value is checked against the dataclasses BEFORE any work: an unknown key
names the closest valid keys (difflib), a wrong type or a bad value names the key, the
value, where it came from and what was expected (:class:`ConfigError`).

The resolved config is stored in each run directory as ``config.yaml``
(:func:`dump_config`) and read back with :func:`load_config`.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import yaml

from mmrl import methods
from mmrl.errors import UserError, clip, shown
from mmrl.methods import MethodConfig, MMRLConfig
from mmrl.vocab import PROTOCOLS, SUBSAMPLES, dataset_slug, doc

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
EVAL_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOSSES = ("ce", "gce")                 # optim.loss (mmrl.models.losses)
BALANCES = ("none", "logit_adjust")    # optim.balance
PRESET_DIR = Path(__file__).resolve().parent / "presets"
DATASET_OVERRIDES_FILE = PRESET_DIR / "datasets.yaml"
TOY_PRESET_FILE = PRESET_DIR / "toy.yaml"


class ConfigError(UserError, ValueError):
    """A configuration key or value is invalid (raised before any work starts)."""


# --------------------------------------------------------------------------- dataclasses
# the names mmrl.data.noise / mmrl.data.imbalance take (kept here so that reading a config imports no data code)
NOISE_TYPES = ("none", "symflip", "pairflip")
IMBALANCE_TYPES = ("none", "exp", "step")
IMBALANCE_ORDERS = ("label", "shuffled")


def _check_choice(source: str, key: str, value: Any, options: Iterable[str], note: str = "") -> None:
    options = tuple(options)
    if value not in options:
        close = difflib.get_close_matches(str(value), options, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{source}: {key} = {shown(value)}: expected one of {', '.join(options)}{note}{hint}")


@dataclass(frozen=True)
class NoiseConfig:
    """Wrong labels among the training shots, JoAPR's protocol (the ``data.noise`` section)."""

    type: str = doc(
        "label noise of the training shots (JoAPR's protocol): none / symflip (wrong shots are images of any "
        "other class) / pairflip (images of the next class)", "none")
    shots: int = doc("wrong shots per class: how many of data.shots are another class's image given this "
                     "class's label (JoAPR's NUM_FP; 0 with a noise type = JoAPR's clean sampling)", 0)


@dataclass(frozen=True)
class ImbalanceConfig:
    """A long-tailed profile over the training classes (the ``data.imbalance`` section)."""

    type: str = doc(
        "class imbalance of the training shots: none / exp (class c of C keeps max(1, floor(shots * "
        "ratio^(c/(C-1))))) / step (the first half of the classes keeps all, the rest max(1, floor(shots * ratio)))",
        "none")
    ratio: float = doc("rho = n_min / n_max of the imbalance, in (0, 1]", 0.02)
    order: str = doc("which classes are rare: label (the last labels) / shuffled (a seeded permutation)", "label")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = doc(
        "dataset: Dassl name or alias (dtd, eurosat, ...), or folder:PATH / manifest:FILE / dataset:PATH",
        "")
    root: str = doc("folder holding the datasets in CoOp's layout (DATASETS.md)", "data")
    shots: int = doc("training images per class (few-shot K)", 16)
    seed: Optional[int] = doc("few-shot sampling seed; null = the run seed (CoOp uses one seed for both)", None)
    subsample: str = doc("training classes: all / base / new (base2novel trains on base)", "all")
    split_file: Optional[str] = doc(
        "split file (split-file format, e.g. a run's split.json) used verbatim: no few-shot, no base/novel; null = the dataset's",
        None)
    template: Optional[str] = doc("prompt template with one {}; null = the dataset's hand-written template", None)
    num_workers: Optional[int] = doc(
        "data-loading worker processes (0 = load in the main process); null = as many as the CPUs this process may use, at most 4",
        None)
    skip_bad_images: bool = doc("skip unreadable images (logged) instead of failing", False)
    cache_dir: Optional[str] = doc(
        "cache for splits built from raw data; null = $MMRL_CACHE_DIR or ~/.cache/mmrl",
        None)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    imbalance: ImbalanceConfig = field(default_factory=ImbalanceConfig)

    def validate(self, source: str = "config") -> None:
        """The noise and imbalance keys, alone and against data.shots; ConfigError naming the key."""
        noise, imb = self.noise, self.imbalance
        _check_choice(source, "data.noise.type", noise.type, NOISE_TYPES)
        if noise.shots < 0:
            raise ConfigError(f"{source}: data.noise.shots = {shown(noise.shots)}: expected an integer >= 0")
        if noise.type == "none" and noise.shots > 0:
            raise ConfigError(f"{source}: data.noise.shots = {noise.shots} with data.noise.type none: expected "
                              "data.noise.type symflip or pairflip (or data.noise.shots 0)")
        if noise.type != "none" and self.shots < 1:
            raise ConfigError(f"{source}: data.noise.type = {noise.type} needs a few-shot sample: expected "
                              f"data.shots >= 1, got {self.shots}")
        if noise.shots > self.shots >= 1:
            raise ConfigError(f"{source}: data.noise.shots = {noise.shots}: expected at most data.shots "
                              f"({self.shots}): the wrong shots are among each class's shots")
        _check_choice(source, "data.imbalance.type", imb.type, IMBALANCE_TYPES)
        if not 0.0 < imb.ratio <= 1.0:
            raise ConfigError(f"{source}: data.imbalance.ratio = {shown(imb.ratio)}: expected rho = n_min / n_max "
                              "in (0, 1]")
        _check_choice(source, "data.imbalance.order", imb.order, IMBALANCE_ORDERS)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = doc("peak learning rate (cosine schedule)", 1e-3)
    weight_decay: float = doc("AdamW weight decay, applied to every trainable tensor", 5e-4)
    betas: tuple[float, float] = doc("AdamW betas", (0.9, 0.999))
    epochs: int = doc("E: number of epochs, warm-up included", 10)
    warmup_epochs: int = doc("epochs at the constant warmup_lr before the cosine (0 = none)", 1)
    warmup_lr: float = doc("learning rate of the warm-up epochs", 1e-5)
    batch_size: int = doc("global training batch size (the loss is the mean over it)", 4)
    loss: str = doc("classification loss of both terms: ce (cross-entropy) / gce (generalised cross-entropy, "
                    "robust to wrong labels)", "ce")
    gce_q: float = doc("q of gce: (1 - p_y^q) / q; q -> 0 is cross-entropy, 1 the mean absolute error", 0.7)
    balance: str = doc("class imbalance remedy: none / logit_adjust (logit-adjusted loss from the training "
                       "class counts)", "none")
    balance_tau: float = doc("tau of logit_adjust: the loss sees logits + tau * log(class frequency)", 1.0)


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = doc("evaluation batch size", 250)
    precision: str = doc(
        "evaluation, predict and Classifier precision: auto (bf16 on a CPU with native bf16, the frozen weights "
        "cast once; fp32 elsewhere) / fp32 / bf16 / fp16", "auto")
    compile: Optional[bool] = doc(
        "torch.compile the image tower for evaluation on a CPU (the first batch compiles, 0.5-1.5 min for "
        "ViT-B/16): null = at bf16 when the test list has at least 4000 images, true, false", None)
    target_beta: dict[str, float] = doc(
        "MMRL++: beta used when evaluating on each listed dataset (cross-dataset targets)",
        factory=dict)


REPORT_TO = ("tensorboard", "wandb", "csv")


@dataclass(frozen=True)
class LoggingConfig:
    """Where the metrics go besides metrics.jsonl (the ``logging`` section; mmrl.engine.sinks)."""

    report_to: tuple[str, ...] = doc(
        "extra metric writers, any of tensorboard (RUN_DIR/tensorboard, Dassl's tags) / wandb (W&B run; "
        "project $WANDB_PROJECT or mmrl) / csv (RUN_DIR/csv); --report-to tensorboard,wandb", ())
    run_name: Optional[str] = doc("W&B run name; null = <method>-<protocol>-<dataset>-<shots>shot-seed<seed>", None)
    tags: tuple[str, ...] = doc("W&B tags besides the method, protocol, dataset and backbone", ())


@dataclass(frozen=True)
class RunConfig:
    protocol: str = doc("evaluation protocol: base2novel / fewshot / crossdataset", "fewshot")
    seed: int = doc("run seed: model init, data order, augmentation (and few-shot sampling unless data.seed)", 1)
    backbone: str = doc(
        "backbone spec: open_clip NAME[:TAG] (ViT-B-16 = OpenAI weights), an OpenAI-format file, toy-clip",
        "ViT-B-16")
    precision: str = doc(
        "training precision: auto (bf16 on GPUs with bf16, else fp16 on GPU; on a CPU bf16 where it is native "
        "(AVX512-BF16 / AMX), the frozen weights cast once, else fp32) / bf16 / fp16 / fp32",
        "auto")
    device: str = doc("auto (CUDA when available) / cpu / cuda / cuda:N", "auto")
    output: Optional[str] = doc("run directory; null = runs/<protocol>/<method>/<dataset>/shots_<k>/seed_<s>", None)
    vary: tuple[str, ...] = doc(
        "keys this run varies in an ablation (mmrl reproduce --vary sets it); run.json records their values "
        "and mmrl report groups the runs by them", ())
    method: MethodConfig = field(default_factory=MMRLConfig)  # the class of method.name (mmrl.methods)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    # ------------------------------------------------------------ derived
    @property
    def data_seed(self) -> int:
        """The few-shot sampling seed (``data.seed``, else the run seed)."""
        return self.seed if self.data.seed is None else self.data.seed

    def run_dir(self) -> Path:
        """``output`` or the default ``runs/<protocol>/<method>/<dataset>/shots_<k>/seed_<s>``."""
        if self.output:
            return Path(self.output)
        return (Path("runs") / self.protocol / self.method.name / dataset_slug(self.data.dataset)
                / f"shots_{self.data.shots}" / f"seed_{self.seed}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["optim"]["betas"] = list(self.optim.betas)
        d["vary"] = list(self.vary)
        d["logging"]["report_to"] = list(self.logging.report_to)
        d["logging"]["tags"] = list(self.logging.tags)
        return d

    def value(self, key: str) -> Any:
        """The value of a dotted key (``method.n_rep_tokens``; ``eval.target_beta.Food101`` -> an entry
        of the mapping, None when absent)."""
        obj: Any = self
        parts = key.split(".")
        for i, name in enumerate(parts):
            if isinstance(obj, dict):
                return obj.get(".".join(parts[i:]))
            obj = getattr(obj, name)
        return list(obj) if isinstance(obj, tuple) else obj

    def ablation(self) -> dict[str, Any]:
        """``{key: value}`` of the keys this run varies (``vary``): what run.json records as "ablation"."""
        return {k: self.value(k) for k in self.vary}


def leaves(cfg: Any, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """Every key of a config (sections excluded): ``(dotted key, its field, its value)``."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            yield from leaves(v, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, v


def every_leaf() -> list[tuple[str, dataclasses.Field, Any]]:
    """Every key of every registered method's config, in the config's order (the ``method`` section
    lists the first method's keys, then the keys only later methods have), with its default."""
    out = []
    for key, f, v in leaves(RunConfig()):
        if not key.startswith("method."):
            out.append((key, f, v))
        elif key == "method.name":
            seen: dict[str, tuple[str, dataclasses.Field, Any]] = {}
            for name in methods.names():
                for k, mf, mv in leaves(methods.get(name).config(), "method."):
                    seen.setdefault(k, (k, mf, mv))
            out.extend(seen.values())
    return out


def key_docs() -> dict[str, str]:
    """Every key's one-line meaning, read from the fields' documentation (each key is documented
    once, where it is declared): the comments of config.yaml, --help, and the README's key table."""
    return {key: f.metadata["doc"] for key, f, _ in every_leaf()}


def key_help(key: str) -> str:
    """A command-line flag's help text: the key's documentation and the key itself."""
    return f"{key_docs()[key]} (config key {key})"


def key_table() -> str:
    """The Markdown table of every key, its default and its meaning (the README's)."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{key}` | `{_scalar(v)}` | {f.metadata['doc']} |" for key, f, v in every_leaf()]
    return "\n".join(rows) + "\n"


def _scalar(v: Any) -> str:
    v = list(v) if isinstance(v, tuple) else v
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


# --------------------------------------------------------------------------- type checking
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def all_keys(cfg: Any = None, prefix: str = "") -> list[str]:
    """Every valid dotted key of ``cfg`` (sections excluded); with no ``cfg``, of a RunConfig of any
    registered method."""
    if cfg is None:
        return [key for key, _, _ in every_leaf()]
    return [key for key, _, _ in leaves(cfg, prefix)]


def methods_with_key(key: str) -> list[str]:
    """The registered methods whose settings have the dotted key ``key`` (``method.beta`` -> mmrl++)."""
    return [n for n in methods.names() if key in all_keys(methods.get(n).config(), "method.")]


def _unknown_key(cfg: RunConfig, key: str, source: str) -> ConfigError:
    """An unknown key, with the closest valid ones -- or the methods it belongs to."""
    owners = [n for n in methods_with_key(key) if n != cfg.method.name]
    if owners:
        return ConfigError(f"{source}: {shown(key)} is a setting of {' / '.join(owners)}, not of method "
                           f"{cfg.method.name} (method.name); {cfg.method.name}'s keys: "
                           + ", ".join(all_keys(cfg.method, "method.")))
    return ConfigError(f"{source}: unknown config key {shown(key)}; {_suggest(key, all_keys(cfg))}")


def _suggest(key: str, valid: Iterable[str]) -> str:
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    leaf = key.rsplit(".", 1)[-1]
    leaves = {k: k.rsplit(".", 1)[-1] for k in valid}
    for k in difflib.get_close_matches(leaf, list(set(leaves.values())), n=3, cutoff=0.75):
        close.extend(v for v, lf in leaves.items() if lf == k and v not in close)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close[:4]) + "?"
    return "valid keys: " + ", ".join(valid)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return "a list of " + ", ".join(_type_name(a) for a in args)
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"a mapping {_type_name(k)} -> {_type_name(v)}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints become floats where a float is
    expected, numeric strings too (YAML reads ``1e-3`` as a string)."""
    def fail() -> typing.NoReturn:
        raise ConfigError(f"{source}: {clip(key)} = {shown(value)} ({type(value).__name__}): expected {_type_name(tp)}")

    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, source)
            except ConfigError:
                pass
        fail()
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            if not isinstance(value, (list, tuple)):
                fail()
            return tuple(_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            fail()
        return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            fail()
        return {_coerce(k, kt, f"{key} (key)", source): _coerce(v, vt, f"{key}.{k}", source)
                for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return value
    if tp is float:
        if isinstance(value, bool):
            fail()
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                fail()
        if not isinstance(value, (int, float)):
            fail()
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{source}: {clip(key)} = {shown(value)}: expected a finite number")
        return value
    if tp is str:
        if not isinstance(value, str):
            fail()
        return value
    raise TypeError(f"config type {tp} of {key} is not supported")  # a bug in this file


# --------------------------------------------------------------------------- setting keys
_FIXED_BY_ARGUMENTS = {"method.name": "--method", "protocol": "--protocol", "data.dataset": "--dataset"}


def set_key(cfg: RunConfig, key: str, value: Any, source: str = "--set") -> None:
    """Set one dotted key (``optim.lr``, ``eval.target_beta.Food101``) with type checking, while a
    config is being RESOLVED (:func:`resolve_config`, :func:`resume_config`, :func:`config_from_dict`
    build a fresh config this way). A resolved config is frozen: derive another one with
    :func:`dataclasses.replace`, never change it.

    A mapping given for a section sets its keys one by one.
    """
    parts = key.split(".")
    obj: Any = cfg
    for i, name in enumerate(parts):
        here = ".".join(parts[: i + 1])
        names = [f.name for f in dataclasses.fields(obj)]
        if name not in names:
            raise _unknown_key(cfg, key, source)
        current = getattr(obj, name)
        tp = _hints(type(obj))[name]
        if _is_section(current):
            if i == len(parts) - 1:
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: {key} is a section; expected a mapping of its keys "
                                      f"({', '.join(all_keys(current, key + '.'))}), got {shown(value)}")
                # the method's name first: it decides which of the section's keys exist
                for k, v in sorted(value.items(), key=lambda kv: kv[0] != "name" or key != "method"):
                    set_key(cfg, f"{key}.{k}", v, source)
                return
            obj = current
            continue
        if typing.get_origin(tp) is dict and i < len(parts) - 1:
            # eval.target_beta.<Dataset>: one entry of a mapping
            entry = ".".join(parts[i + 1:])
            _, vt = typing.get_args(tp)
            current[entry] = _coerce(value, vt, key, source)
            return
        if i < len(parts) - 1:
            raise ConfigError(f"{source}: unknown config key {shown(key)}: {clip(here)} is a value, not a section; "
                              f"{_suggest(key, all_keys(cfg))}")
        if here == "method.name":  # the method decides which method.* keys exist: its settings' class
            name = _coerce(value, tp, here, source)
            try:
                object.__setattr__(cfg, "method", methods.convert_config(cfg.method, name))
            except ValueError as e:
                raise ConfigError(f"{source}: method.name: {e}") from None
        elif typing.get_origin(tp) is dict:
            current.update(_coerce(value, tp, here, source))  # mappings merge across layers
        else:
            object.__setattr__(obj, name, _coerce(value, tp, here, source))  # the builder's one write
        return


def file_overrides(path: str | Path) -> list[str]:
    """A ``--config`` YAML file (nested mapping or dotted keys) as ``key=value`` items (JSON values), in
    the file's order: what a sweep passes to each run (``mmrl reproduce --config``), checked there
    like ``--set`` items."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    import json

    items = flat(data)
    for k, v in items.items():
        typed_value(k, v, str(path))  # an unknown key or a wrong type names the file
    return [f"{k}={json.dumps(v)}" for k, v in items.items()]


def typed_value(key: str, value: Any, source: str = "--set") -> Any:
    """``value`` checked and typed as ``key`` holds it (``("optim.lr", 1)`` -> ``1.0``; lists of a
    tuple key as lists); ConfigError naming the key otherwise."""
    cfg = RunConfig()
    owners = methods_with_key(key)
    if owners and cfg.method.name not in owners:  # a key of another method than the default one
        set_key(cfg, "method.name", owners[0], source)
    set_key(cfg, key, value, source)
    return cfg.value(key)


def apply_mapping(cfg: RunConfig, mapping: Any, source: str) -> None:
    """Apply a (nested or dotted-key) mapping, e.g. the content of a YAML file."""
    if mapping is None:
        return
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(mapping).__name__}")
    for k, v in mapping.items():
        if not isinstance(k, str):
            raise ConfigError(f"{source}: config key {shown(k)} is not a string")
        set_key(cfg, k, v, source)


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=2e-3"`` -> ``("optim.lr", 0.002)`` (value parsed as YAML; text that is not
    valid YAML, such as ``{} photo.``, or that uses YAML anchors / aliases, is taken as a string)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {shown(item)}: expected KEY=VALUE, e.g. optim.lr=2e-3")
    try:
        value = parse_yaml(raw, f"--set {key}") if raw.strip() else ""
    except ConfigError:
        value = raw  # not YAML (e.g. a template "{} photo."): the text itself; types are checked later
    return key, value


# --------------------------------------------------------------------------- reading YAML
# Every YAML file mmrl reads -- a --config file, a run folder's config.yaml (which arrives with a
# run folder from someone else), the presets -- and every --set value goes through parse_yaml.
YAML_MAX_BYTES = 1_000_000  # config files are a few KB; a larger one is refused before it is parsed


class _AliasRefused(yaml.composer.ComposerError):
    """An anchor or alias met by :class:`_NoAliasLoader`."""


class _NoAliasLoader(yaml.SafeLoader):
    """yaml's SafeLoader that refuses anchors and aliases (``&name``, ``*name``).

    An alias makes a value share a node, so a few hundred bytes of nested aliases ("billion
    laughs") stand for gigabytes once anything walks or prints the value. No config needs them
    (the config.yaml files mmrl writes have none), so the first anchor or alias is refused while
    the document is composed, before any value exists.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)  # an alias event carries the name it refers to
        if anchor is not None:
            name = clip(("*" if isinstance(event, yaml.AliasEvent) else "&") + anchor, 40)
            raise _AliasRefused(None, None, f"YAML anchors and aliases such as {name} are refused (a few of them can "
                                "stand for gigabytes); expected every value written out", event.start_mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str, source: str) -> Any:
    """``text`` parsed as YAML safely: plain data (yaml's safe types), no anchors or aliases, at most
    YAML_MAX_BYTES characters. ConfigError naming ``source`` (the file, or the --set item) and
    what is wrong, on one short line, otherwise."""
    if len(text) > YAML_MAX_BYTES:
        raise ConfigError(f"{source}: {len(text)} characters; expected a config of at most "
                          f"{YAML_MAX_BYTES // 1_000_000} MB")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = clip(e.problem or e.context or type(e).__name__, 200)  # it may quote a tag of any length
        refused = "" if isinstance(e, _AliasRefused) else " not valid YAML:"
        raise ConfigError(f"{source}{where}:{refused} {what}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({clip(str(e))})") from e
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply; expected a config of a few levels") from None
    except ValueError as e:  # a value yaml's constructor cannot build, e.g. an integer of 5000 digits
        raise ConfigError(f"{source}: not valid YAML ({clip(str(e))})") from e


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The YAML file ``path`` parsed by :func:`parse_yaml` (read only when it is a regular file of at
    most YAML_MAX_BYTES bytes, UTF-8); ConfigError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        with open(path, "rb") as f:
            data = f.read(YAML_MAX_BYTES + 1)  # never more: the size check must not read a huge file
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e.strerror or type(e).__name__})") from None
    if len(data) > YAML_MAX_BYTES:
        raise ConfigError(f"{path}: more than {YAML_MAX_BYTES // 1_000_000} MB; expected a {what} "
                          "(a few KB of YAML)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); expected a {what} in YAML") from None
    return parse_yaml(text, str(path))


@functools.lru_cache(maxsize=None)
def _package_yaml_cached(path: Path, what: str) -> Any:
    return read_yaml(path, what)


def _package_yaml(path: Path, what: str) -> Any:
    """A YAML file shipped in the package (presets), read once per process: a sweep resolves the
    config of every grid point before it starts. A deep copy, so no caller changes the cache."""
    return copy.deepcopy(_package_yaml_cached(path, what))


# --------------------------------------------------------------------------- validation of values
def validate(cfg: RunConfig, source: str = "config") -> None:
    """Check values (types are checked when set); raise ConfigError naming the key."""
    def bad(key: str, value: Any, expected: str) -> typing.NoReturn:
        raise ConfigError(f"{source}: {clip(key)} = {shown(value)}: expected {expected}")

    def choice(key: str, value: Any, options: Iterable[str], note: str = "") -> None:
        options = tuple(options)
        if value not in options:
            close = difflib.get_close_matches(str(value), options, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            bad(key, value, f"one of {', '.join(options)}{note}{hint}")

    choice("protocol", cfg.protocol, PROTOCOLS)
    choice("precision", cfg.precision, PRECISIONS)
    choice("eval.precision", cfg.eval.precision, EVAL_PRECISIONS)
    choice("data.subsample", cfg.data.subsample, SUBSAMPLES, " (new = the novel classes)")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        bad("device", cfg.device, "auto, cpu, cuda or cuda:N")
    if not cfg.backbone:
        bad("backbone", cfg.backbone, "a backbone spec such as ViT-B-16")
    if not cfg.data.dataset:
        bad("data.dataset", cfg.data.dataset, "a dataset name (--dataset)")
    for key, v, lo in (("data.shots", cfg.data.shots, 1), ("optim.epochs", cfg.optim.epochs, 1),
                       ("optim.batch_size", cfg.optim.batch_size, 1), ("eval.batch_size", cfg.eval.batch_size, 1),
                       ("optim.warmup_epochs", cfg.optim.warmup_epochs, 0),
                       ("seed", cfg.seed, 0)):
        if v < lo:
            bad(key, v, f"an integer >= {lo}")
    if cfg.data.num_workers is not None and cfg.data.num_workers < 0:
        bad("data.num_workers", cfg.data.num_workers, "an integer >= 0 or null (as many as the CPUs, at most 4)")
    if cfg.data.seed is not None and cfg.data.seed < 0:
        bad("data.seed", cfg.data.seed, "an integer >= 0 or null")
    if cfg.optim.warmup_epochs >= cfg.optim.epochs and cfg.optim.warmup_epochs > 0:
        bad("optim.warmup_epochs", cfg.optim.warmup_epochs, f"fewer than optim.epochs ({cfg.optim.epochs})")
    for key, v in (("optim.lr", cfg.optim.lr), ("optim.warmup_lr", cfg.optim.warmup_lr)):
        if not v > 0:
            bad(key, v, "a positive learning rate")
    choice("optim.loss", cfg.optim.loss, LOSSES)
    choice("optim.balance", cfg.optim.balance, BALANCES)
    if not 0.0 < cfg.optim.gce_q <= 1.0:
        bad("optim.gce_q", cfg.optim.gce_q, "a value in (0, 1]")
    if cfg.optim.balance_tau < 0:
        bad("optim.balance_tau", cfg.optim.balance_tau, "a value >= 0")
    if cfg.optim.weight_decay < 0:
        bad("optim.weight_decay", cfg.optim.weight_decay, "a value >= 0")
    if not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        bad("optim.betas", list(cfg.optim.betas), "two values in [0, 1)")
    if cfg.protocol == "base2novel" and cfg.data.subsample == "all":
        raise ConfigError(f"{source}: protocol base2novel trains on base (or new) classes: data.subsample must be "
                          "'base' or 'new', not 'all'")
    if cfg.data.template is not None and cfg.data.template.count("{}") != 1:
        bad("data.template", cfg.data.template, "a template containing '{}' exactly once")
    cfg.data.validate(source)
    for name in cfg.logging.report_to:
        choice("logging.report_to", name, REPORT_TO)
    validate_vary(cfg.vary, source)
    for k, b in cfg.eval.target_beta.items():
        if not 0.0 <= b <= 1.0:
            bad(f"eval.target_beta.{k}", b, "a value in [0, 1]")
    try:
        cfg.method.validate()
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from e


# Keys an ablation cannot vary, and why: they name the run (its arguments), its grid (--seeds,
# --shots) or where and how it runs, not what it learns (RESUME_IGNORED_PREFIXES).
NOT_VARIABLE: dict[str, str] = {
    "method.name": "it is --method", "protocol": "it is the protocol argument", "data.dataset": "it is --datasets",
    "seed": "use --seeds", "data.shots": "use --shots", "output": "run folders are placed by the sweep",
    "vary": "it lists the varied keys", "data.root": "it says where the data is, not how to learn",
    "data.num_workers": "it does not change results", "data.cache_dir": "it does not change results",
    "data.skip_bad_images": "it does not change results", "device": "it does not change results",
    "eval.batch_size": "it does not change results",
    "logging.report_to": "it does not change results", "logging.run_name": "it does not change results",
    "logging.tags": "it does not change results",
}


def validate_vary(keys: Iterable[str], source: str) -> None:
    """ConfigError unless every key is a config key an ablation may vary, each listed once."""
    seen: set[str] = set()
    valid = all_keys()
    for k in keys:
        top = k if k in valid else next((v for v in valid if k.startswith(v + ".")), None)
        if top is None or (top != k and top != "eval.target_beta"):
            raise ConfigError(f"{source}: {shown(k)} is not a config key; {_suggest(k, valid)}")
        if k in NOT_VARIABLE:
            raise ConfigError(f"{source}: an ablation cannot vary {shown(k)} ({NOT_VARIABLE[k]})")
        if k in seen:
            raise ConfigError(f"{source}: {shown(k)} listed twice")
        seen.add(k)


# --------------------------------------------------------------------------- differences between configs
# Keys that may differ between a stored run and a re-run of it (they do not change the
# trained weights): where the data lives, worker count, caches, device, evaluation.
RESUME_IGNORED_PREFIXES = ("output", "data.root", "data.num_workers", "data.cache_dir", "data.skip_bad_images",
                           "device", "eval.", "logging.")


def flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config mapping as ``{dotted key: value}`` (eval.target_beta stays one mapping)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "target_beta":
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(stored: RunConfig, new: RunConfig) -> list[str]:
    """Keys (outside RESUME_IGNORED_PREFIXES) whose values differ: ``key: old -> new``."""
    a, b = flat(stored.to_dict()), flat(new.to_dict())
    out = []
    for k in sorted(set(a) | set(b)):
        if k.startswith(RESUME_IGNORED_PREFIXES):
            continue
        if a.get(k) != b.get(k):
            out.append(f"{k}: {shown(a.get(k))} -> {shown(b.get(k))}")
    return out


# --------------------------------------------------------------------------- presets
def canonical_dataset(name: str) -> str:
    """The canonical dataset name (``dtd`` -> ``DescribableTextures``); user specs
    (``folder:PATH`` ...) are kept as given. Unknown names raise ConfigError."""
    from mmrl import data

    try:
        return data.canonical_name(name)
    except (KeyError, ValueError) as e:
        msg = e.args[0] if e.args else str(e)
        raise ConfigError(f"--dataset {shown(name)}: {msg}") from e


def preset_path(method: str, protocol: str) -> Path:
    return PRESET_DIR / f"{method}-{protocol}.yaml"


def dataset_overrides(method: str, protocol: str, dataset: str) -> dict[str, Any]:
    """The per-dataset overrides of ``presets/datasets.yaml`` for this method/protocol/dataset
    (dotted keys -> values), MMRL++ cross-dataset target betas included."""
    table = _package_yaml(DATASET_OVERRIDES_FILE, "dataset overrides") or {}
    out: dict[str, Any] = {}
    per_protocol = (table.get("overrides", {}).get(method, {}) or {}).get(protocol, {}) or {}
    out.update(per_protocol.get(dataset, {}) or {})
    betas = (table.get("target_beta", {}).get(method, {}) or {}).get(protocol)
    if betas:
        out["eval.target_beta"] = dict(betas)
    return out


def toy_settings(method: str) -> dict[str, Any]:
    """The toy world's preset (presets/toy.yaml: what `mmrl demo` trains with) for ``method`` as
    ``{dotted key: value}``: its common settings, then the method's own (or those of the method
    whose presets it uses)."""
    preset = _package_yaml(TOY_PRESET_FILE, "toy preset")
    own = preset.get(method, preset.get(methods.get(method).preset_name, {}))
    return {**flat(preset.get("common", {})), **flat(own)}


Override = Union[str, tuple[str, Any]]


def _apply_command_line(cfg: RunConfig, flags: dict[str, Any] | None, overrides: Iterable[Override]) -> None:
    """The command's flags (typed, None = not given), then its ``--set`` items."""
    for k, v in (flags or {}).items():
        if v is not None:
            set_key(cfg, k, v, f"--{k.rsplit('.', 1)[-1].replace('_', '-')}")
    for item in overrides:
        k, v = parse_override(item) if isinstance(item, str) else item
        set_key(cfg, k, v, f"--set {k}")


def resolve_config(method: str, protocol: str, dataset: str, config_file: str | Path | None = None,
                   overrides: Iterable[Override] = (), *, flags: dict[str, Any] | None = None) -> RunConfig:
    """Build the RunConfig of a run: preset -> per-dataset -> config file -> flags -> --set.

    Args:
        method: ``mmrl`` or ``mmrl++``.
        protocol: ``base2novel``, ``fewshot`` or ``crossdataset``.
        dataset: dataset name or alias (stored as its canonical name).
        config_file: optional user YAML (nested mapping or dotted keys).
        overrides: ``"key=value"`` strings (YAML values) or ``(key, value)`` pairs.
        flags: typed ``{dotted key: value}`` from CLI flags (``--shots`` ...), applied
            before ``overrides``; None values are skipped.
    Raises:
        ConfigError: unknown key (with the closest valid keys), wrong type, bad value.
    """
    try:
        spec = methods.get(method)
    except ValueError as e:
        raise ConfigError(f"--method: {e}") from None
    if protocol not in PROTOCOLS:
        close = difflib.get_close_matches(protocol, PROTOCOLS, n=1)
        raise ConfigError(f"--protocol {shown(protocol)}: expected one of {', '.join(PROTOCOLS)}"
                          + (f" (did you mean {close[0]!r}?)" if close else ""))
    canonical = canonical_dataset(dataset)
    cfg = RunConfig()
    preset = preset_path(spec.preset_name, protocol)
    apply_mapping(cfg, _package_yaml(preset, "preset"), f"preset {preset.name}")
    set_key(cfg, "method.name", method, "--method")  # a method may use another method's presets
    set_key(cfg, "data.dataset", canonical, "--dataset")
    apply_mapping(cfg, dataset_overrides(spec.preset_name, protocol, canonical),
                  f"{DATASET_OVERRIDES_FILE.name} [{canonical}]")
    if config_file is not None:
        apply_mapping(cfg, read_yaml(config_file), str(config_file))
    _apply_command_line(cfg, flags, overrides)
    wanted = {"method.name": method, "protocol": protocol, "data.dataset": canonical}
    got = {"method.name": cfg.method.name, "protocol": cfg.protocol,
           "data.dataset": canonical_dataset(cfg.data.dataset) if cfg.data.dataset != canonical else canonical}
    for key, want in wanted.items():
        if got[key] != want:
            raise ConfigError(f"{key} = {shown(got[key])} in the config file or --set, but {_FIXED_BY_ARGUMENTS[key]} "
                              f"says {shown(want)}; set it with {_FIXED_BY_ARGUMENTS[key]} only")
    set_key(cfg, "data.dataset", canonical, "--dataset")
    validate(cfg)
    return cfg


def with_overrides(cfg: RunConfig, overrides: Iterable[Override] = (), *,
                   flags: dict[str, Any] | None = None) -> RunConfig:
    """A new config: ``cfg`` with typed ``flags`` (None = not given) and ``overrides`` applied and
    checked like any resolution (e.g. a stored run's config with the evaluation settings of
    ``mmrl eval``'s flags: ``{"eval.batch_size": 64, "device": "cpu"}``)."""
    new = copy.deepcopy(cfg)
    _apply_command_line(new, flags, overrides)
    validate(new)
    return new


def resume_config(stored: RunConfig, run_dir: str | Path, overrides: Iterable[Override] = (), *,
                  flags: dict[str, Any] | None = None) -> RunConfig:
    """The config of ``mmrl train --resume RUN_DIR``: the run's stored config with the flags and
    ``--set`` items that may change on resume (paths, device, ...), ``output`` = RUN_DIR; checked."""
    return with_overrides(stored, [*overrides, ("output", str(run_dir))], flags=flags)


# --------------------------------------------------------------------------- files
def config_from_dict(d: Any, source: str) -> RunConfig:
    """A RunConfig from a full mapping (e.g. a run's config.yaml), checked. Method keys that an older
    mmrl wrote for a method that ignores them (its spec's ``retired_keys``) are dropped."""
    cfg = RunConfig()
    section = d.get("method") if isinstance(d, dict) else None
    if isinstance(section, dict) and isinstance(section.get("name"), str) and section["name"] in methods.names():
        retired = methods.get(section["name"]).retired_keys
        d = {**d, "method": {k: v for k, v in section.items() if k not in retired}}
    apply_mapping(cfg, d, source)
    validate(cfg, source)
    return cfg


def load_config(path: str | Path) -> RunConfig:
    """Read a resolved ``config.yaml`` (as written by :func:`dump_config`)."""
    return config_from_dict(read_yaml(path), str(path))


def dump_config(cfg: RunConfig, header: str | None = None) -> str:
    """The resolved config as YAML, every key commented with its meaning."""
    lines = [f"# {ln}" for ln in (header or "").splitlines()] if header else []

    def emit(obj: Any, prefix: str, indent: str) -> None:
        for f in dataclasses.fields(obj):
            key = f"{prefix}{f.name}"
            v = getattr(obj, f.name)
            doc = f.metadata.get("doc", "")
            if _is_section(v):
                lines.append(f"{indent}{f.name}:")
                emit(v, key + ".", indent + "  ")
                continue
            text = f"{indent}{f.name}: {_scalar(v)}"
            lines.append(f"{text}  # {doc}" if doc else text)

    emit(cfg, "", "")
    return "\n".join(lines) + "\n"


__all__ = ["ConfigError", "DataConfig", "OptimConfig", "EvalConfig", "RunConfig", "MethodConfig", "key_docs",
           "key_help", "key_table", "every_leaf",
           "PROTOCOLS", "resolve_config", "load_config", "dump_config", "config_from_dict", "set_key",
           "parse_override", "parse_yaml", "read_yaml", "YAML_MAX_BYTES", "resume_config", "with_overrides", "validate", "all_keys", "dataset_overrides", "dataset_slug"]


if __name__ == "__main__":  # python -m mmrl.config: the README's key table
    print(key_table(), end="")
