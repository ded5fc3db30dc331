"""The typed configuration: one pydantic section per concept, each default and check written once.

Building a configuration from a YAML file (legacy keys, errors worded for people) is
:mod:`xecmae.configload`; the command-line flags for every key are :mod:`xecmae.flags`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, Field, create_model, field_validator

from xecmae.data.spec import NOT_CONFIGURED, StreamSpec
from xecmae.detector.normalize import Normalizer, NphoThreshold
from xecmae.detector.specs import spec_fields
from xecmae.errors import UserError
from xecmae.models.spec import (
    InpainterModelConfig,
    MAEModelConfig,
    RegressorModelConfig,
    Spec,
    Task,
    TimeMaskRatioScale,
)

PathSpec = str | list[str] | None
LossName = Literal["smooth_l1", "mse", "l1", "huber"]
RegressionLossName = Literal["smooth_l1", "mse", "l1", "huber", "gaussian_nll"]
"""gaussian_nll: the head predicts a mean and a log-variance per component (a per-event sigma)."""


class ConfigError(UserError, ValueError):
    """A configuration problem, worded for the person who wrote the file."""


class Section(BaseModel):
    model_config = Spec.model_config  # the models' rules: unknown keys refused, assignments validated


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


class TimeConfig(Section):
    weight: Annotated[float, Field(ge=0)] = 1.0
    mask_ratio_scale: TimeMaskRatioScale = 1.0
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
class InpainterTrainingConfig(TrainingConfig):
    encoder_lr: Annotated[float, Field(ge=0)] | None = None
    """Learning rate of the encoder (null = training.lr); ignored when the encoder is frozen."""


class InpainterConfig(RunConfig):
    """Dead-channel inpainting: the MAE objective at a low mask ratio, usually from an MAE checkpoint."""

    model: InpainterModelConfig = InpainterModelConfig()
    training: InpainterTrainingConfig = InpainterTrainingConfig()
    mlflow: MlflowConfig = MlflowConfig(experiment="xecmae-inpainter")


# --- the regressor ----------------------------------------------------------------------------------
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
    filler: str | None = None
    """An inpainter (or MAE) checkpoint that fills the hidden channels before the regressor sees them, as
    ``validate --inpainter`` fills dead channels at inference; null = they stay sentinels."""


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
