"""Typed run configuration whose defaults are the paper's values (Sections 2, 4 and 5).

A config is five frozen dataclasses read from a TOML preset (`paper`, `demo`, `cifar10`, shipped in
`alexnet/configs/`) or any TOML file, overridden from the command line with `--set section.key=value`
and saved, resolved, into the run folder as `config.toml`. Unknown keys and wrongly typed values are
errors that list what is valid.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from alexnet.fsutil import atomic_write

# How input pixels are normalised: the paper's mean image, torchvision's per-channel statistics, or nothing.
NORMALIZE = ("mean_image", "channel", "none")
PRESET_DIR = Path(__file__).parent / "configs"


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} = {value!r} is not one of {', '.join(map(repr, allowed))}")


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero) or not math.isfinite(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} = {value!r} must be a finite number {bound}")


@dataclass(frozen=True)
class ModelConfig:
    """Which network (a name of `alexnet.models.list_models()`) and its construction overrides (Section 3).

    `num_classes` left unset is taken from the store the run trains on; set, it must match it.
    `name` and `init` are checked against the model registry when the network is built
    (`alexnet.models.build.check_model_config`), which this torch-free module does not import.

    `dropout_form` and `lrn_alpha` choose between the printed paper and the code that trained it
    ("auto": the model's own, which for the paper's network is the paper's dropout, kept units unscaled and
    x0.5 at test, and cuda-convnet's alpha / n; see `alexnet.models.registry`).
    """

    name: str = "alexnet"
    num_classes: int | None = None
    input_size: int = 224
    init: str = "paper"
    dropout: float = 0.5
    dropout_form: str = "auto"  # "paper" | "inverted" | "auto"
    lrn_alpha: str = "auto"  # "over-n" | "printed" | "auto"

    def __post_init__(self) -> None:
        if self.num_classes is not None:
            _positive("model.num_classes", self.num_classes)
        _positive("model.input_size", self.input_size)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout = {self.dropout!r} must be in [0, 1)")
        _choice("model.dropout_form", self.dropout_form, ("auto", "paper", "inverted"))
        _choice("model.lrn_alpha", self.lrn_alpha, ("auto", "over-n", "printed"))


@dataclass(frozen=True)
class AugmentConfig:
    """How training images are augmented and every image is normalised (Section 4.1); the paper's values.

    The fields are keys of the `[data]` section (`DataConfig` extends this class), and
    `alexnet.data.augment.Augmenter` takes either.
    """

    crop: int = 224
    random_crop: bool = True
    flip: bool = True
    lighting_std: float = 0.1
    normalize: str = "mean_image"
    input_scale: float = 1.0

    def __post_init__(self) -> None:
        _positive("data.crop", self.crop)
        _positive("data.lighting_std", self.lighting_std, allow_zero=True)
        _positive("data.input_scale", self.input_scale)
        _choice("data.normalize", self.normalize, NORMALIZE)


@dataclass(frozen=True)
class DataConfig(AugmentConfig):
    """The prepared store, the batches drawn from it and their augmentation (Sections 2 and 4.1).

    `store` is a path to a prepared store or a name under `$ALEXNET_CACHE/stores` (default
    `~/.cache/alexnet/stores`). `batch_is_global` says whether `batch_size` is the whole step's batch
    (split over torchrun processes; the paper's 128 spans its two GPUs) or each process's own.
    """

    store: str = "imagenet"
    batch_size: int = 128
    batch_is_global: bool = True
    eval_batch_size: int = 128
    in_memory: bool = False
    workers: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("data.batch_size", self.batch_size)
        _positive("data.eval_batch_size", self.eval_batch_size)
        _positive("data.workers", self.workers, allow_zero=True)


@dataclass(frozen=True)
class OptimConfig:
    """Section 5: SGD with the paper's update rule ("paper") or torch.optim.SGD ("sgd").

    `decay_biases`: whether weight decay also applies to the biases. cuda-convnet applied its `wc` to
    weights only, so every preset sets it false; a config without the key decays them (as this package did
    before it had the choice). `bias_lr_scale` multiplies the biases' learning rate: the paper gives every
    layer one rate (1.0); cuda-convnet2's layer files give biases twice the weights' (2.0).
    `label_smoothing` is not the paper's (0 keeps its plain cross-entropy).
    """

    kind: str = "paper"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0005
    decay_biases: bool = True
    bias_lr_scale: float = 1.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        _choice("optim.kind", self.kind, ("paper", "sgd"))
        _positive("optim.lr", self.lr)
        _positive("optim.weight_decay", self.weight_decay, allow_zero=True)
        _positive("optim.bias_lr_scale", self.bias_lr_scale)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"optim.momentum = {self.momentum!r} must be in [0, 1)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"optim.label_smoothing = {self.label_smoothing!r} must be in [0, 1)")


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule. "plateau" is the paper's (Section 5): divide by 1/`factor` when the
    validation error has not improved for `patience` epochs, at most `max_drops` times. "step" divides
    at fixed `milestones` (epochs). "linear" decays to zero at the last step (not the paper's; suited
    to short, budgeted runs). `warmup_epochs` ramps the rate up linearly from zero (not the paper's).
    """

    kind: str = "plateau"
    factor: float = 0.1
    patience: int = 5
    max_drops: int = 3
    milestones: tuple[int, ...] = (30, 60, 80)
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        _choice("schedule.kind", self.kind, ("plateau", "step", "linear"))
        if not 0.0 < self.factor < 1.0:
            raise ValueError(f"schedule.factor = {self.factor!r} must be in (0, 1)")
        _positive("schedule.patience", self.patience)
        _positive("schedule.max_drops", self.max_drops, allow_zero=True)
        _positive("schedule.warmup_epochs", self.warmup_epochs, allow_zero=True)
        if list(self.milestones) != sorted(set(self.milestones)) or any(m <= 0 for m in self.milestones):
            raise ValueError(
                f"schedule.milestones = {list(self.milestones)} must be increasing positive epochs"
            )


@dataclass(frozen=True)
class RunConfig:
    """How long, how precisely, where, and how often to checkpoint.

    The paper trains 90 epochs in fp32; budgets of 0 mean "no limit". `plan_budget` turns
    `budget_minutes` into a number of steps once, from speeds measured early in the run, and ends the
    linear schedule there (see `alexnet.budget`); `epochs` is then only an upper bound.
    `reserve_ten_crop` keeps, out of the budget, the measured time of a ten-crop evaluation after training.
    `eval_every_epochs` validates every that many epochs and always at the end (0: only at the end);
    the paper's plateau schedule needs every epoch.
    `model_parallel = 2` places the two towers on two devices as the paper's Figure 2.
    `channels_last` lays the maps out channels-last (NHWC); unset, the run chooses
    (`alexnet.info.channels_last_by_default`: on a CPU with AVX-512, both precisions) and records its choice in
    config.toml.
    """

    epochs: int = 90
    budget_steps: int = 0
    budget_minutes: float = 0.0
    plan_budget: bool = False
    reserve_ten_crop: bool = False
    seed: int = 0
    precision: str = "fp32"
    channels_last: bool | None = None
    compile: bool = False
    device: str = "auto"
    threads: int = 0
    model_parallel: int = 1
    checkpoint_every_minutes: float = 30.0
    checkpoint_every_epochs: int = 1
    checkpoint_every_steps: int = 0
    eval_every_epochs: int = 1

    def __post_init__(self) -> None:
        _positive("run.epochs", self.epochs)
        _positive("run.eval_every_epochs", self.eval_every_epochs, allow_zero=True)
        _positive("run.budget_steps", self.budget_steps, allow_zero=True)
        _positive("run.budget_minutes", self.budget_minutes, allow_zero=True)
        _positive("run.threads", self.threads, allow_zero=True)
        _positive("run.checkpoint_every_minutes", self.checkpoint_every_minutes, allow_zero=True)
        _positive("run.checkpoint_every_epochs", self.checkpoint_every_epochs, allow_zero=True)
        _positive("run.checkpoint_every_steps", self.checkpoint_every_steps, allow_zero=True)
        _choice("run.precision", self.precision, ("fp32", "bf16"))
        if (self.plan_budget or self.reserve_ten_crop) and not self.budget_minutes:
            raise ValueError("run.plan_budget and run.reserve_ten_crop need a time budget: set run.budget_minutes")
        if self.model_parallel not in (1, 2):
            raise ValueError(
                f"run.model_parallel = {self.model_parallel!r} must be 1 or 2 (the paper's towers)"
            )


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.schedule.kind == "plateau" and self.run.eval_every_epochs != 1:
            raise ValueError(
                f"schedule.kind = 'plateau' needs the validation error of every epoch, but run.eval_every_epochs "
                f"= {self.run.eval_every_epochs}; set it to 1 or use another schedule"
            )
        if self.model.input_size != self.data.crop:
            raise ValueError(
                f"model.input_size = {self.model.input_size} but data.crop = {self.data.crop}: the network "
                f"takes the crops as they are; set both to the same value "
                f"(--set model.input_size={self.data.crop} or --set data.crop={self.model.input_size})"
            )

    def with_num_classes(self, num_classes: int, source: str) -> Config:
        """This config with `model.num_classes` taken from the data (`source` names it for errors)."""
        set_to = self.model.num_classes
        if set_to is not None and set_to != num_classes:
            raise ValueError(
                f"model.num_classes = {set_to} but {source} has {num_classes} classes; leave "
                f"model.num_classes unset to take it from the data, or set it to {num_classes}"
            )
        return dataclasses.replace(self, model=dataclasses.replace(self.model, num_classes=num_classes))


def _section_class(f: dataclasses.Field[typing.Any]) -> type:
    """The class of one of Config's sections: each field is built by its default factory."""
    if f.default_factory is dataclasses.MISSING:
        raise TypeError(f"Config.{f.name} has no default factory")
    cls: type = f.default_factory().__class__
    return cls


SECTIONS: dict[str, type] = {f.name: _section_class(f) for f in dataclasses.fields(Config)}


def _coerce(where: str, value: object, annotation: typing.Any) -> object:
    """Check a TOML value against a field's annotation; ints are accepted where floats are."""
    if isinstance(annotation, types.UnionType) and type(None) in typing.get_args(annotation):
        if value is None:
            return None
        (annotation,) = (a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok and isinstance(value, int | float) else value
    elif annotation is str:
        ok = isinstance(value, str)
    elif typing.get_origin(annotation) is tuple:
        ok = isinstance(value, list | tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
        value = tuple(value) if ok and isinstance(value, list | tuple) else value
    else:  # a field type this module does not know how to read is a bug here, not in the user's file
        raise TypeError(f"{where}: unsupported field type {annotation!r}")
    if not ok:
        name = getattr(annotation, "__name__", str(annotation))
        raise ValueError(f"{where} = {value!r} has the wrong type: expected {name}")
    return value


def _valid_keys(section: str) -> str:
    return ", ".join(f.name for f in dataclasses.fields(SECTIONS[section]))


def config_from_dict(data: Mapping[str, typing.Any], source: str = "config") -> Config:
    """Build a Config from nested dicts ({section: {key: value}}), checking every key and type."""
    sections: dict[str, typing.Any] = {}  # section name -> an instance of its dataclass
    for section, values in data.items():
        if section not in SECTIONS:
            raise ValueError(f"{source}: unknown section [{section}]; valid sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ValueError(f"{source}: [{section}] must be a table of keys, got {values!r}")
        field_types = typing.get_type_hints(SECTIONS[section])
        kwargs: dict[str, object] = {}
        for key, value in values.items():
            if key not in field_types:
                raise ValueError(
                    f"{source}: unknown key {section}.{key}; valid keys in [{section}]: "
                    + _valid_keys(section)
                )
            kwargs[key] = _coerce(f"{source}: {section}.{key}", value, field_types[key])
        sections[section] = SECTIONS[section](**kwargs)
    return Config(**sections)


def config_to_dict(config: Config) -> dict[str, dict[str, typing.Any]]:
    """The config as nested plain dicts (tuples become lists), for TOML, JSON and checkpoints."""
    return {
        section: {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(getattr(config, section)).items()
        }
        for section in SECTIONS
    }


def parse_override(item: str) -> tuple[str, str, object]:
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ValueError(f"override {item!r} is not section.key=value (for example run.epochs=10)")
    dotted, raw = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    if section not in SECTIONS:
        raise ValueError(
            f"override {item!r}: unknown section {section!r}; valid sections: {', '.join(SECTIONS)}"
        )
    field_types = typing.get_type_hints(SECTIONS[section])
    if key not in field_types:
        raise ValueError(
            f"override {item!r}: unknown key {section}.{key}; valid keys: {_valid_keys(section)}"
        )
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        if field_types[key] is not str:
            raise ValueError(f"override {item!r}: {raw!r} is not a valid value for {section}.{key}") from None
        value = raw.strip()  # bare strings need no quotes on the command line
    if field_types[key] is str and not isinstance(value, str):
        value = raw.strip()  # e.g. --set data.store=123 names a store "123"
    return section, key, value


def resolve_preset(name_or_path: str | os.PathLike[str]) -> Path:
    """A preset name (`paper`, `demo`, `cifar10`) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml" and (PRESET_DIR / f"{path.name}.toml").is_file() and not path.exists():
        return PRESET_DIR / f"{path.name}.toml"
    if not path.is_file():
        raise FileNotFoundError(
            f"config {str(name_or_path)!r} is neither a file nor a preset; "
            f"presets: {', '.join(list_presets())}"
        )
    return path


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a preset or TOML file (None: the paper's defaults), then apply `section.key=value` overrides."""
    data: dict[str, typing.Any] = {}
    source = "defaults"
    if path is not None:
        resolved = resolve_preset(path)
        source = str(resolved)
        with open(resolved, "rb") as f:
            try:
                data = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{resolved}: not valid TOML: {e}") from None
    for item in overrides:
        section, key, value = parse_override(item)
        data.setdefault(section, {})[key] = value
    return config_from_dict(data, source)


def to_toml(config: Config) -> str:
    """The resolved config as TOML that `load_config` reads back to an equal Config."""
    # TOML has no null: an unset value (model.num_classes) is left out, which reads back as unset
    tables = {
        section: {k: v for k, v in values.items() if v is not None}
        for section, values in config_to_dict(config).items()
    }
    return tomli_w.dumps(tables)


def save_config(config: Config, path: str | os.PathLike[str]) -> None:
    """Write `config` as TOML atomically: a crash leaves the old file or the new one, never a mixture."""
    text = to_toml(config)
    atomic_write(path, lambda f: f.write(text.encode()))
