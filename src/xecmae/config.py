"""Validated configuration: pydantic sections, YAML loading, legacy keys and command-line overrides.

A configuration is built in four steps, each of which can fail with a message that names the
offending key: read the YAML (never written back), migrate deprecated flat keys to their
nested homes, apply command-line overrides, validate against the schema.
"""

from __future__ import annotations

import argparse
import difflib
import types
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from xecmae.data.spec import NOT_CONFIGURED, StreamSpec
from xecmae.detector.geometry import outer_grid_shape
from xecmae.detector.normalize import Normalizer, NphoThreshold
from xecmae.detector.specs import spec_fields
from xecmae.errors import UserError
from xecmae.models.priors import PRIOR_FIT_ITERATIONS
from xecmae.sizes import MODEL_SIZES, size_conflicts

Channel = Literal["npho", "time"]
PathSpec = str | list[str] | None
LossName = Literal["smooth_l1", "mse", "l1", "huber"]
RegressionLossName = Literal["smooth_l1", "mse", "l1", "huber", "gaussian_nll"]
"""gaussian_nll: the head predicts a mean and a log-variance per component (a per-event sigma)."""


class ConfigError(UserError, ValueError):
    """A configuration problem, worded for the person who wrote the file."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --- sections --------------------------------------------------------------------------------
class _DataInputs(Section):
    train_path: PathSpec = None
    """ROOT file, glob, directory, list, text file of paths, or a ``sim://`` source."""
    val_path: PathSpec = None

    @field_validator("train_path", "val_path")
    @classmethod
    def _single_path_as_string(cls, value: PathSpec) -> PathSpec:
        return value[0] if isinstance(value, list) and len(value) == 1 else value


class DataConfig(create_model("_DataStream", __base__=_DataInputs, __module__=__name__,
                              **spec_fields(StreamSpec, exclude=NOT_CONFIGURED))):
    """The ``data`` section: the inputs, the fields of :class:`~xecmae.data.spec.StreamSpec` (their
    defaults and checks, documented there) and the keys of validation and of the loaders."""

    persistent_workers: bool = True
    """Training DataLoader workers live for the whole run instead of being started every epoch
    (each epoch's order stays the same); false = new workers every epoch."""
    val_max_events: Annotated[int, Field(gt=0)] | None = None

    def stream_spec(self, split: str) -> StreamSpec:
        """The spec of a split: "train" as configured, "val" :meth:`~StreamSpec.for_validation`."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        spec = StreamSpec(**self.model_dump(include=set(spec_fields(StreamSpec, exclude=NOT_CONFIGURED))))
        return spec if split == "train" else spec.for_validation(self.val_max_events)


NormalizationConfig = create_model("NormalizationConfig", __base__=Section, __module__=__name__,
                                   **spec_fields(Normalizer, exclude=("npho_threshold",)))
"""The ``normalization`` section: the fields, defaults and checks of :class:`Normalizer` (less
``npho_threshold``, whose key is ``training.time.npho_threshold``)."""


class EncoderConfig(Section):
    size: Literal["tiny", "small", "base"] = "base"
    """Named size; any of the dimensions below given explicitly overrides it."""
    encoder_dim: int | None = None
    dim_feedforward: int | None = None
    num_fusion_layers: Annotated[int, Field(gt=0)] | None = None
    num_heads: Annotated[int, Field(gt=0)] | None = None
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    outer_mode: Literal["finegrid", "split"] = "finegrid"
    outer_fine_pool: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] | None = None

    @field_validator("encoder_dim")
    @classmethod
    def _multiple_of_32(cls, value: int | None) -> int | None:
        if value is not None and (value <= 0 or value % 32):
            raise ValueError(f"must be a positive multiple of 32 (the ConvNeXt width is encoder_dim / 32), got {value}")
        return value

    @field_validator("outer_fine_pool")
    @classmethod
    def _pool_divides(cls, value):
        if value is not None:
            outer_grid_shape(tuple(value))
        return value

    @model_validator(mode="after")
    def _resolve_size(self):
        for key, value in MODEL_SIZES[self.size].items():
            if key in type(self).model_fields and getattr(self, key) is None:
                object.__setattr__(self, key, value)
        if self.encoder_dim % self.num_heads:
            raise ValueError(f"encoder_dim {self.encoder_dim} is not divisible by num_heads {self.num_heads}")
        return self


class MAEModelConfig(EncoderConfig):
    decoder_dim: Annotated[int, Field(gt=0)] | None = None
    mask_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.6
    predict_channels: list[Channel] = ["npho", "time"]

    @field_validator("predict_channels")
    @classmethod
    def _channels(cls, value: list[str]) -> list[str]:
        if "npho" not in value or len(set(value)) != len(value):
            raise ValueError('must be ["npho"] or ["npho", "time"]')
        return [c for c in ("npho", "time") if c in value]


class TimeConfig(Section):
    weight: Annotated[float, Field(ge=0)] = 1.0
    mask_ratio_scale: Annotated[float, Field(gt=0)] = 1.0
    """> 1 makes sensors with a valid time proportionally more likely to be hidden."""
    use_npho_weight: bool = True
    """Weight the time loss by sqrt(npho): bright sensors have better timing."""
    npho_threshold: NphoThreshold = Normalizer.npho_threshold
    """Photons below which a sensor's time is invalid (not input, not scored)."""


class NphoLossWeightConfig(Section):
    enabled: bool = False
    alpha: Annotated[float, Field(ge=0)] = 0.5


class IntensityReweightingConfig(Section):
    enabled: bool = False
    nbins: Annotated[int, Field(ge=2)] = 10
    target: Literal["uniform"] = "uniform"


class OptimConfig(Section):
    """What every kind of run shares: the optimizer, the schedule, the step."""

    epochs: Annotated[int, Field(gt=0)] = 20
    lr: Annotated[float, Field(gt=0)] = 2e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.05
    lr_scheduler: Literal["none", "cosine"] = "cosine"
    warmup_epochs: Annotated[float, Field(ge=0)] = 1.0
    lr_min: Annotated[float, Field(ge=0)] = 1e-6
    grad_clip: Annotated[float, Field(ge=0)] = 1.0
    """Max gradient norm; 0 disables clipping."""
    grad_accum_steps: Annotated[int, Field(gt=0)] = 1
    ema_decay: Annotated[float, Field(ge=0, lt=1)] | None = None
    amp: bool = True
    """bf16 autocast on GPU; ignored on CPU unless ``cpu_amp`` is set."""
    cpu_amp: bool = False
    """With ``amp``, bf16 autocast on the CPU too: the GPU's mixed-precision code path, run where
    no GPU is (slow on CPUs without bf16 arithmetic; for checks, not for speed)."""
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = "none"
    seed: int = 42
    log_interval: Annotated[int, Field(gt=0)] = 50
    """Optimizer steps between progress updates (the only host reads of the metrics)."""
    max_bad_steps: Annotated[int, Field(gt=0)] = 5
    """Consecutive non-finite losses tolerated (each skips its step) before the run stops."""
    max_steps: Annotated[int, Field(gt=0)] | None = None
    """Stop after this many optimizer steps in total (the last checkpoint is written, so the run
    can be resumed); null = run every epoch."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = False
    """Deterministic kernels wherever PyTorch has them (slower on a GPU). Bit-exact resume holds on
    the CPU only: on CUDA, adaptive_avg_pool2d and bilinear interpolation backward use atomics."""


class TrainingConfig(OptimConfig):
    """Pre-training: the optimizer and the MAE objective."""

    loss_fn: LossName = "smooth_l1"
    loss_beta: Annotated[float, Field(gt=0)] = 1.0
    npho_weight: Annotated[float, Field(ge=0)] = 1.0
    time: TimeConfig = TimeConfig()
    auto_channel_weight: bool = False
    track_mae_rmse: bool = False
    track_metrics: bool = False
    npho_loss_weight: NphoLossWeightConfig = NphoLossWeightConfig()
    intensity_reweighting: IntensityReweightingConfig = IntensityReweightingConfig()


class CheckpointConfig(Section):
    save_dir: str = "artifacts"
    run_name: str | None = None
    """Run directory name under save_dir; null = a timestamp."""
    save_path: str | None = None
    """Legacy: a run directory, or a ``.pth`` file that receives a copy of the best checkpoint."""
    resume_from: str | None = None
    overwrite: bool = False
    """Start over in a run directory that already holds checkpoints (they are removed); else refused."""
    reset_epoch: bool = False
    refresh_lr: bool = False
    new_mlflow_run: bool = False
    save_interval: Annotated[int, Field(ge=0)] = 0
    """Keep ``mae_checkpoint_epoch_N.pth`` every N epochs; 0 = never."""
    save_every_steps: Annotated[int, Field(ge=0)] = 500
    """Refresh the last checkpoint every N optimizer steps, bounding what a crash loses; 0 = epoch end only."""
    save_predictions: bool = True
    root_save_interval: Annotated[int, Field(gt=0)] = 10
    predictions_max_events: Annotated[int, Field(gt=0)] = 1000


class DistributedConfig(Section):
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    timeout_minutes: Annotated[int, Field(gt=0)] = 30


class MlflowConfig(Section):
    enabled: bool = True
    tracking_uri: str | None = None
    """null = $MLFLOW_TRACKING_URI, else a SQLite store inside the run directory."""
    experiment: str = "xecmae-mae"
    run_name: str | None = None


class RunConfig(Section):
    """The sections every run has; subclasses choose the model and training sections."""

    data: DataConfig = DataConfig()
    normalization: NormalizationConfig = NormalizationConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    distributed: DistributedConfig = DistributedConfig()
    mlflow: MlflowConfig = MlflowConfig()

    def normalizer(self) -> Normalizer:
        return make_normalizer(self.normalization, self.training.time.npho_threshold)

    def to_yaml(self) -> str:
        tree = self.model_dump(mode="json")
        ordered = {k: tree[k] for k in SECTION_ORDER if k in tree} | tree
        return yaml.safe_dump(ordered, sort_keys=False)


SECTION_ORDER = ("data", "normalization", "model", "training", "validation", "checkpoint", "distributed", "mlflow")


class MAEConfig(RunConfig):
    """Everything a pre-training run needs."""

    model: MAEModelConfig = MAEModelConfig()
    training: TrainingConfig = TrainingConfig()


# --- the inpainter: the MAE's architecture, fine-tuned to fill a few missing sensors ----------------
class InpainterModelConfig(MAEModelConfig):
    mask_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.05
    freeze_encoder: bool = False
    refine: bool = True
    """Predict a learned correction to a classical estimate from the visible sensors (``prior``),
    from the decoders' output, the visible neighbourhood and the estimate; false = the plain MAE
    decoders."""
    prior: Literal["neighbour", "solid_angle"] = "neighbour"
    """The estimate the refiners correct (needs refine): the neighbour average, or the solid-angle
    weighted neighbour average around a point source fitted to the visible sensors."""
    prior_fit_iterations: Annotated[int, Field(ge=0, le=30)] = PRIOR_FIT_ITERATIONS
    """Levenberg-Marquardt steps of the solid-angle prior's source from the light centroid."""

    @model_validator(mode="after")
    def _prior_needs_refine(self):
        if self.prior != "neighbour" and not self.refine:
            raise ValueError(f"prior {self.prior!r} needs refine: true (the plain decoders use no prior)")
        return self


class InpainterTrainingConfig(TrainingConfig):
    encoder_lr: Annotated[float, Field(ge=0)] | None = None
    """Learning rate of the encoder (null = training.lr); ignored when the encoder is frozen."""


class InpainterConfig(RunConfig):
    """Dead-channel inpainting: the MAE objective at a low mask ratio, usually from an MAE checkpoint."""

    model: InpainterModelConfig = InpainterModelConfig()
    training: InpainterTrainingConfig = InpainterTrainingConfig()
    mlflow: MlflowConfig = MlflowConfig(experiment="xecmae-inpainter")


# --- the regressor ----------------------------------------------------------------------------------
TASKS = ("angle", "energy", "timing", "position")
Task = Literal["angle", "energy", "timing", "position"]


class RegressorModelConfig(EncoderConfig):
    tasks: list[Task] = ["position", "energy"]
    head_hidden: Annotated[int, Field(gt=0)] = 256
    freeze_encoder: bool = False
    head: Literal["tokens", "maps"] = "tokens"
    """tokens: an MLP on the six fused face tokens (the specification's head); maps: attention pooling over
    every face's feature map before pooling, and a soft-argmax on the inner face for u, v."""
    map_dim: Annotated[int, Field(gt=0, multiple_of=16)] = 64
    """Width of the maps head's keys and queries (head: maps), in attention heads of 16."""
    classical_input: Literal["none", "centroid"] = "none"
    """centroid: the light-weighted centroid of the brightest sensors and log total npho as extra head inputs."""

    @field_validator("classical_input", mode="before")
    @classmethod
    def _none_spelled_out(cls, value):
        return "none" if value is None else value  # --classical_input none arrives as null

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"give one or more distinct tasks of {', '.join(TASKS)}")
        return value


class TimeInputConfig(Section):
    npho_threshold: NphoThreshold = Normalizer.npho_threshold
    """Photons below which a sensor's time is invalid input."""


class DeadChannelTrainingConfig(Section):
    """Random dead channels hidden from the regressor in every training batch (:mod:`xecmae.train.deadtraining`)."""

    fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Fraction of the 4,760 sensors dead in each training event, drawn anew per event; 0 = off."""
    clustered: bool = True
    """About half of them in whole readout boards, as in the realistic generator's maps; false = scattered."""
    varying: bool = False
    """Each event's fraction uniform in [0, fraction] rather than exactly fraction."""


class RegressionTrainingConfig(OptimConfig):
    loss_fn: RegressionLossName = "smooth_l1"
    loss_beta: Annotated[float, Field(gt=0)] = 1.0
    task_loss_fn: dict[Task, RegressionLossName] = {}
    """Per-task loss overriding loss_fn, e.g. {angle: l1} or {position: gaussian_nll}."""
    nll_beta: Annotated[float, Field(ge=0, le=1)] = 0.0
    """beta-NLL: gaussian_nll terms weighted by the detached sigma^(2 beta); 0 = plain NLL, 0.5 often trains better."""
    task_weights: dict[Task, Annotated[float, Field(ge=0)]] = {}
    """Per-task weight of the loss (default 1)."""
    encoder_lr: Annotated[float, Field(ge=0)] | None = None
    """Learning rate of the encoder (null = training.lr); ignored when the encoder is frozen."""
    time: TimeInputConfig = TimeInputConfig()
    dead_channels: DeadChannelTrainingConfig = DeadChannelTrainingConfig()


class FiducialConfig(Section):
    """The fiducial volume of a resolution report, on the true first interaction (cm)."""

    u_max: Annotated[float, Field(gt=0)] = 23.9
    """|u| < u_max"""
    v_max: Annotated[float, Field(gt=0)] = 67.9
    """|v| < v_max"""
    w_min: float = 0.0
    """w >= w_min"""


class ValidationConfig(Section):
    """``xecmae validate``: the events kept and how figures are binned."""

    fiducial: FiducialConfig = FiducialConfig()
    bins: Annotated[int, Field(ge=1)] = 6
    """Bins (of about equal events) of the resolution against true u, v, w and energy."""


class RegressorConfig(RunConfig):
    """Fine-tuning the encoder with one regression head per task."""

    model: RegressorModelConfig = RegressorModelConfig()
    training: RegressionTrainingConfig = RegressionTrainingConfig()
    validation: ValidationConfig = ValidationConfig()
    mlflow: MlflowConfig = MlflowConfig(experiment="xecmae-regressor")

    def task_loss(self, task: str) -> str:
        """The loss of one task: ``training.task_loss_fn`` when it names the task, else ``training.loss_fn``."""
        return self.training.task_loss_fn.get(task, self.training.loss_fn)

    def gaussian_tasks(self) -> tuple[str, ...]:
        """The tasks whose heads predict a log-variance beside the mean (loss gaussian_nll)."""
        return tuple(t for t in self.model.tasks if self.task_loss(t) == "gaussian_nll")


SCHEMAS: dict[str, type[RunConfig]] = {"mae": MAEConfig, "inpainter": InpainterConfig, "regressor": RegressorConfig}


def make_normalizer(norm: NormalizationConfig, npho_threshold: float) -> Normalizer:
    """The normaliser of a ``normalization`` section and ``training.time.npho_threshold`` (photons)."""
    return Normalizer(**norm.model_dump(), npho_threshold=npho_threshold)


# --- legacy keys -----------------------------------------------------------------------------
LEGACY_KEYS: dict[str, str] = {
    "training.time_weight": "training.time.weight",
    "training.use_npho_time_weight": "training.time.use_npho_weight",
    "training.npho_threshold": "training.time.npho_threshold",
    "training.time_mask_ratio_scale": "training.time.mask_ratio_scale",
    "model.time_mask_ratio_scale": "training.time.mask_ratio_scale",
    "time_mask_ratio_scale": "training.time.mask_ratio_scale",
    "npho_threshold": "training.time.npho_threshold",
    "use_npho_time_weight": "training.time.use_npho_weight",
}


_MISSING = object()


def _pop(tree: dict, dotted: str) -> Any:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.get(key)
        if not isinstance(tree, dict):
            return _MISSING
    return tree.pop(leaf, _MISSING)


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = tree.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: expected a section (mapping), got {child!r}")
        tree = child
    tree[leaf] = value


def _get(tree: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return _MISSING
        tree = tree[key]
    return tree


def migrate_legacy(raw: dict) -> dict:
    """Move deprecated flat keys to their nested paths (in place), warning once per key."""
    for old, new in LEGACY_KEYS.items():
        value = _pop(raw, old)
        if value is _MISSING:
            continue
        existing = _get(raw, new)
        if existing is not _MISSING and existing != value:
            raise ConfigError(f"{old} (deprecated) and {new} are both set, to {value!r} and {existing!r}; "
                              f"keep only {new}")
        warnings.warn(f"config key '{old}' is deprecated; use '{new}'", FutureWarning, stacklevel=3)
        _set(raw, new, value)
    return raw


# --- errors worded for people ---------------------------------------------------------------
def _section_class(schema: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    cls = schema
    for key in loc:
        field = cls.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            return None
        cls = _model_in(field.annotation)
        if cls is None:
            return None
    return cls


def _model_in(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _describe(schema: type[BaseModel], error: dict) -> str:
    loc = tuple(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        parent = _section_class(schema, loc[:-1])
        known = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]}?)" if close else f" (valid keys: {', '.join(known)})"
        return f"{'.'.join(loc)}: unknown key{hint}"
    where = ".".join(p for p in loc if not p.startswith(("function-", "constrained-", "tuple[", "list[")))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("model_type", "dict_type"):
        return f"{where}: expected a section (mapping), got {error['input']!r}"
    quiet = error["type"] == "value_error" or isinstance(error.get("input"), dict)
    shown = "" if quiet else f" (got {error.get('input')!r})"
    return f"{where or '<top>'}: {message}{shown}"


def validate(raw: dict, schema: type[Section] = MAEConfig) -> Section:
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        lines = sorted({_describe(schema, e) for e in exc.errors()})
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


# --- loading -------------------------------------------------------------------------------
def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                schema: type[Section] = MAEConfig) -> Section:
    """YAML file (optional) + dotted overrides -> validated configuration."""
    raw = read_yaml(path) if path is not None else {}
    raw = migrate_legacy(raw)
    _refuse_size_hybrid(raw, overrides or {}, path)
    for dotted, value in (overrides or {}).items():
        _set(raw, dotted, value)
    return validate(raw, schema)


def _refuse_size_hybrid(raw: dict, overrides: dict[str, Any], path: str | Path | None) -> None:
    """``--size`` against dimensions of the YAML that the flags leave alone: refused, never merged."""
    size, model = overrides.get("model.size"), raw.get("model")
    if size is None or not isinstance(model, dict):
        return
    left = {k: v for k, v in model.items() if f"model.{k}" not in overrides}
    problems = size_conflicts(str(size), left, str(path))
    if problems:
        raise ConfigError(f"--size {size} contradicts the YAML ({'; '.join(problems)}); give the dimensions "
                          "as flags too, or remove them (or model.size) from the YAML")


# --- command-line flags ----------------------------------------------------------------------
# Flags of the specification's Quick Start and of the deprecated flat keys.
FLAG_ALIASES: dict[str, str] = {
    "train_root": "data.train_path",
    "val_root": "data.val_path",
    "time_weight": "training.time.weight",
    "use_npho_time_weight": "training.time.use_npho_weight",
    "time_mask_ratio_scale": "training.time.mask_ratio_scale",
    "run_name": "checkpoint.run_name",
}


def _leaves(schema: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for name, field in schema.model_fields.items():
        sub = _model_in(field.annotation)
        if sub is not None and not _is_scalar_or_list(field.annotation):
            out += _leaves(sub, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", field.annotation))
    return out


def _is_scalar_or_list(annotation) -> bool:
    return _model_in(annotation) is None


def _is_sequence(annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return True
    if origin in (Union, types.UnionType):
        return any(_is_sequence(a) for a in typing.get_args(annotation) if a is not type(None))
    return False


def _is_bool(annotation) -> bool:
    return annotation is bool


def flag_table(schema: type[Section] = MAEConfig) -> dict[str, str]:
    """Every command-line flag name (without dashes) -> dotted config key."""
    leaves = _leaves(schema)
    leaf_counts: dict[str, int] = {}
    for dotted, _ in leaves:
        leaf_counts[dotted.rsplit(".", 1)[-1]] = leaf_counts.get(dotted.rsplit(".", 1)[-1], 0) + 1
    table = {}
    for dotted, _ in leaves:
        table[dotted] = dotted
        leaf = dotted.rsplit(".", 1)[-1]
        if leaf_counts[leaf] == 1:
            table[leaf] = dotted
    known = {d for d, _ in leaves}
    table.update({flag: dotted for flag, dotted in FLAG_ALIASES.items() if dotted in known})
    return table


def add_config_flags(parser: argparse.ArgumentParser, *schemas: type[Section]) -> None:
    """One flag per configuration key (``--lr`` and ``--training.lr``); unset flags stay unset.

    With several schemas, the flags of all of them (validation later names a key the chosen
    schema does not have).
    """
    schemas = schemas or (MAEConfig,)
    parser.add_argument("--config", default=None, help="YAML configuration file")
    annotations: dict[str, Any] = {}
    table: dict[str, str] = {}
    for schema in schemas:
        annotations |= dict(_leaves(schema))
        for flag, dotted in flag_table(schema).items():
            if table.setdefault(flag, dotted) != dotted:  # the same short flag for two keys: dotted only
                table[flag] = ""
    by_key: dict[str, list[str]] = {}
    for flag, dotted in table.items():
        if dotted:
            by_key.setdefault(dotted, []).append(flag)
    group = parser.add_argument_group("configuration overrides (any key of the YAML)")
    for dotted, flags in sorted(by_key.items()):
        annotation = annotations[dotted]
        names = [f"--{f}" for f in sorted(flags, key=lambda f: ("." in f, f))]
        kwargs: dict[str, Any] = {"dest": f"cfg:{dotted}", "default": argparse.SUPPRESS, "help": dotted}
        if _is_bool(annotation):
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif _is_sequence(annotation):
            kwargs.update(nargs="+", metavar="V")
        else:
            kwargs.update(metavar="V")
        group.add_argument(*names, **kwargs)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted overrides for exactly the flags that were given (an explicit 0 or false included)."""
    out = {}
    for dest, value in vars(args).items():
        if dest.startswith("cfg:"):
            out[dest[4:]] = _parse_flag_value(value)
    return out


def _parse_flag_value(value):
    if isinstance(value, str) and value.lstrip().startswith("{"):  # a mapping, e.g. --task_weights "{energy: 2}"
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot read {value!r} as a mapping: {exc}") from None
    if isinstance(value, list):
        if len(value) == 1 and value[0].lower() in ("null", "none"):
            return None
        return value
    if isinstance(value, str) and value.lower() in ("null", "none"):
        return None
    return value


def config_from_args(args: argparse.Namespace, schema: type[Section] = MAEConfig) -> Section:
    return load_config(args.config, overrides_from_args(args), schema)
