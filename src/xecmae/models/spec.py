"""What each model is made of: its typed spec, with every default and every check written once.

These are the YAML ``model`` sections (:mod:`xecmae.config` composes them with the training
sections) and what the models take whole: :class:`EncoderConfig` for the shared encoder,
:class:`MAEModelConfig` (or :class:`InpainterModelConfig`) with a :class:`MaskingSpec` for the
MAE and the inpainter, :class:`RegressorModelConfig` for the regressor.

A field marked :data:`SHAPE` changes the model's state dict (another tensor shape or another
set of tensors); :func:`shape_keys` lists them, and is what a checkpoint is compared by
(:mod:`xecmae.train.architecture`). ``size`` is a shortcut that resolves into the dimensions;
``dropout`` and ``freeze_encoder`` change training, not the weights.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from xecmae.detector.geometry import outer_grid_shape
from xecmae.models.priors import PRIOR_FIT_ITERATIONS
from xecmae.sizes import MODEL_SIZES

SHAPE = "shape"
"""``Annotated`` marker of a spec field that changes the state dict."""


class Spec(BaseModel):
    """A typed section: unknown keys are refused, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def shape_keys(spec: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``spec`` marked :data:`SHAPE`, in declaration order."""
    return tuple(name for name, field in spec.model_fields.items() if SHAPE in field.metadata)


# --- the encoder --------------------------------------------------------------------------------
class EncoderConfig(Spec):
    """The shared encoder (:class:`xecmae.models.encoder.XECEncoder`)."""

    size: Literal["tiny", "small", "base"] = "base"
    """Named size (:data:`xecmae.sizes.MODEL_SIZES`); any of the dimensions below given explicitly overrides it."""
    encoder_dim: Annotated[int | None, SHAPE] = None
    """Width of a face token; a positive multiple of 32 (the ConvNeXt width is encoder_dim / 32)."""
    dim_feedforward: Annotated[int | None, SHAPE] = None
    num_fusion_layers: Annotated[Annotated[int, Field(gt=0)] | None, SHAPE] = None
    num_heads: Annotated[Annotated[int, Field(gt=0)] | None, SHAPE] = None
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    outer_mode: Annotated[Literal["finegrid", "split"], SHAPE] = "finegrid"
    outer_fine_pool: Annotated[tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] | None, SHAPE] = None

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


# --- masking: what the MAE hides ------------------------------------------------------------------
MaskRatio = Annotated[float, Field(gt=0, lt=1)]
"""Fraction of the sensors with a valid npho hidden in each event."""
TimeMaskRatioScale = Annotated[float, Field(gt=0)]
"""> 1 makes sensors with a valid time proportionally more likely to be hidden."""
Channel = Literal["npho", "time"]


def _npho_first(value: list[str]) -> list[str]:
    if "npho" not in value or len(set(value)) != len(value):
        raise ValueError('must be ["npho"] or ["npho", "time"]')
    return [c for c in ("npho", "time") if c in value]


PredictChannels = Annotated[list[Channel], AfterValidator(_npho_first)]
"""The channels the MAE reconstructs: ``["npho"]`` or ``["npho", "time"]`` (always in that order)."""


class MaskingSpec(Spec):
    """How many sensors, and which, the MAE hides: ``model.mask_ratio`` and ``training.time.mask_ratio_scale``.

    No defaults here: those belong to the YAML sections (pre-training 0.6, the inpainter 0.05),
    whose values :func:`xecmae.models.mae.build_mae` passes in. Assignments are validated, so
    ``model.masking.mask_ratio = 0.05`` re-masks a trained MAE at another ratio.
    """

    mask_ratio: MaskRatio
    time_mask_ratio_scale: TimeMaskRatioScale


# --- the MAE and the inpainter ----------------------------------------------------------------------
class MAEModelConfig(EncoderConfig):
    """The MAE: the encoder, one light decoder per face, and its mask ratio."""

    decoder_dim: Annotated[Annotated[int, Field(gt=0)] | None, SHAPE] = None
    mask_ratio: MaskRatio = 0.6
    predict_channels: Annotated[PredictChannels, SHAPE] = ["npho", "time"]


class InpainterModelConfig(MAEModelConfig):
    """The inpainter: the MAE's architecture at a low mask ratio, with refiners over a classical prior."""

    mask_ratio: MaskRatio = 0.05
    freeze_encoder: bool = False
    refine: Annotated[bool, SHAPE] = True
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


# --- the regressor ----------------------------------------------------------------------------------
Task = Literal["angle", "energy", "timing", "position"]
TASKS: tuple[str, ...] = get_args(Task)


class RegressorModelConfig(EncoderConfig):
    """The regressor: the encoder and one head per task."""

    tasks: Annotated[list[Task], SHAPE] = ["position", "energy"]
    head_hidden: Annotated[Annotated[int, Field(gt=0)], SHAPE] = 256
    freeze_encoder: bool = False
    head: Annotated[Literal["tokens", "maps"], SHAPE] = "tokens"
    """tokens: an MLP on the six fused face tokens (the specification's head); maps: attention pooling over
    every face's feature map before pooling, and a soft-argmax on the inner face for u, v."""
    map_dim: Annotated[Annotated[int, Field(gt=0, multiple_of=16)], SHAPE] = 64
    """Width of the maps head's keys and queries (head: maps), in attention heads of 16."""
    classical_input: Annotated[Literal["none", "centroid", "pointfit", "pointfit_time"], SHAPE] = "none"
    """centroid: the light-weighted centroid of the brightest sensors and log total npho as extra head inputs;
    pointfit: the point-source fit (position, light, fit quality) as inputs, and the position predicted as the
    fit plus a learned correction (:class:`xecmae.models.heads.PointFitEstimate`); pointfit_time: that, and the
    bright sensors' time at the fitted point as a 7th input, the timing predicted as it plus a learned
    correction (:class:`xecmae.models.heads.PointFitTimeEstimate`)."""

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
