"""Training configuration: a validated, serialisable record of one training run."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

# the distillation defaults live in compress (train -> compress; never the reverse)
from binsense.compress.distill import DEFAULT_ALPHA, DEFAULT_TEMPERATURE
from binsense.compress.prune import PruningSchedule
from binsense.errors import BinsenseError, did_you_mean, pydantic_problem
from binsense.noise import NoiseAugment, get_noise_type
from binsense.resources import MAX_THREADS, resolve_device

#: Largest seed: what a SQLite INTEGER (the study store) and ``torch.manual_seed`` hold.
SEED_MAX = 2**63 - 1

#: Validation context that also checks that ``device`` exists on this machine:
#: ``TrainConfig.model_validate(fields, context=CHECK_DEVICE)`` (the CLI's ``train``).
#: Without it only the device's syntax is checked, so a checkpoint or a study trained on
#: a GPU can still be read, evaluated or reported on a machine without one.
CHECK_DEVICE = {"check_device": True}


def _full_scale_level(value: float) -> float:
    """A noise level (sigma, fraction of full scale): finite, >= 0 and at most 1."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"level must be a finite number >= 0, got {value}")
    if value > 1:
        raise ValueError(
            f"level {value:g} is {value * 100:g} % of full scale (level is sigma as a fraction "
            f"of full scale: 0.05 = 5 %); levels above 1 are refused — did you mean "
            f"{value / 100:g}?"
        )
    return value


class TrainNoise(BaseModel):
    """Noise-aware training: sensor fixed-pattern noise drawn fresh for each batch/sample.

    ``type`` is one FPN type or a list (picked with equal probability); ``level`` is the
    sigma as a fraction of full scale, fixed (``0.05``) or drawn uniformly from a range
    (``[0.05, 0.10]``, binsense's reading of S0's "training with 5-10 % noise");
    ``p_clean`` is the probability that an instance stays clean. See
    :class:`binsense.noise.NoiseAugment`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    type: str | list[str]
    level: float | tuple[float, float] = Field(..., description="sigma, fraction of full scale")
    per: Literal["batch", "sample"] = "batch"
    p_clean: float = Field(0.0, ge=0, le=1)
    per_channel: bool = False
    adc_bits: int | None = 8

    @field_validator("type")
    @classmethod
    def _known_types(cls, v: str | list[str]) -> str | list[str]:
        for name in [v] if isinstance(v, str) else v:
            get_noise_type(name)  # raises a clear error naming the closest type
        return v

    @field_validator("level", mode="before")
    @classmethod
    def _range_as_tuple(cls, v: Any) -> Any:
        """A TOML/JSON range ``[lo, hi]`` is a list; strict mode wants the tuple."""
        return tuple(v) if isinstance(v, list) else v

    @field_validator("level")
    @classmethod
    def _level_in_full_scale(cls, v: float | tuple[float, float]) -> float | tuple[float, float]:
        if isinstance(v, tuple):
            lo, hi = (_full_scale_level(x) for x in v)
            if hi < lo:
                raise ValueError(f"level range [{lo:g}, {hi:g}] must have low <= high")
            return v
        return _full_scale_level(v)

    def augment(self, seed: int) -> NoiseAugment:
        """The :class:`NoiseAugment` that applies this spec, seeded with ``seed``."""
        types = [self.type] if isinstance(self.type, str) else self.type
        level = tuple(self.level) if isinstance(self.level, (tuple, list)) else self.level
        return NoiseAugment(
            [(t, level, 1.0) for t in types],
            per=self.per,
            p_clean=self.p_clean,
            seed=seed,
            per_channel=self.per_channel,
            adc_bits=self.adc_bits,
        )


#: How the training step runs (:mod:`binsense.train.accel`) -> the default, left out of
#: the run id.
_STEP_DEFAULTS = {"precision": "fp32", "channels_last": False, "compile": False}

#: TrainConfig fields a teacher or a starting point never inherits from the training that
#: needs it: that training's own compression and start (their tables may set their own).
_STUDENT_ONLY = ("distill", "prune", "init")


class TrainDistill(BaseModel):
    """Knowledge distillation (``[train] distill = {...}``): the training loss becomes
    :class:`binsense.compress.distill.Distillation` from a frozen teacher.

    The teacher is given one of two ways (exactly one):

    - ``teacher = { <TrainConfig fields> }``: another training, described by the fields
      in which it differs from the student (e.g. ``{ model = "compact_bnn_float",
      model_options = { width = 2 } }``). They are laid over the student's own fields
      (minus ``distill`` and ``prune``), each key replacing the student's value —
      ``model_options`` too, as a whole, since another model takes other options. The
      result is the teacher's full :class:`TrainConfig`
      (:meth:`TrainConfig.teacher_config`) and so its run id. It inherits the student's
      ``seed`` (a teacher per student seed) unless the table sets one (``seed = 0``:
      one teacher shared by every seed). A study trains it first
      (:mod:`binsense.study.runner`); :func:`binsense.train.train` needs its checkpoint
      (``teacher=PATH``);
    - ``teacher_checkpoint = "PATH"``: the ``checkpoint.pt`` of a finished training
      (``binsense train`` from the command line). The *path* is part of the student's run
      id, not the file's content.

    ``alpha`` weighs the cross-entropy on the labels, ``1 - alpha`` the KD term;
    ``temperature`` is the softmax temperature. Defaults: ReActNet's pure distillation,
    ``alpha = 0, temperature = 1`` (:mod:`binsense.compress.distill` gives the sources).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    teacher: dict[str, Any] | None = Field(
        None, description="TrainConfig fields in which the teacher differs from the student"
    )
    teacher_checkpoint: str | None = Field(None, description="a finished run's checkpoint.pt")
    alpha: float = Field(DEFAULT_ALPHA, ge=0, le=1, description="weight of the cross-entropy")
    temperature: float = Field(DEFAULT_TEMPERATURE, gt=0, description="softmax temperature")

    @field_validator("teacher")
    @classmethod
    def _known_fields(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _training_table(v)

    @model_validator(mode="after")
    def _one_teacher(self) -> TrainDistill:
        _one_of(self.teacher, "teacher", self.teacher_checkpoint, "teacher_checkpoint")
        return self


def _training_table(v: dict[str, Any] | None, refused: tuple[str, ...] = ()) -> Any:
    """A table of TrainConfig fields describing another training (a teacher's, a
    start's): every key a field, none of ``refused``."""
    if v is not None:
        fields = TrainConfig.model_fields
        for key in v:
            if key not in fields:
                raise ValueError(f"unknown key {key!r}{did_you_mean(key, fields)}")
            if key in refused:
                raise ValueError(
                    f"{key!r} cannot be set for the starting training (a start is "
                    "trained plainly; give it as a finished run's checkpoint instead)"
                )
    return v


def _one_of(table: Any, table_key: str, path: str | None, path_key: str) -> None:
    """Exactly one of a training described by a table and a checkpoint path."""
    if (table is None) == (path is None):
        raise ValueError(
            f"give exactly one of {table_key} = {{ <fields of that training> }} and "
            f'{path_key} = "PATH"'
        )
    if path is not None and not path.strip():
        raise ValueError(f"{path_key} must be a path, got an empty string")


class TrainInit(BaseModel):
    """Start from another training's final weights (fine-tuning; ``[train] init = {...}``):
    the model's parameters and batch-norm statistics are loaded from a finished training
    before the first epoch, and the optimizer and schedule start afresh. A resumed run
    continues from its own checkpoint instead.

    The starting point is given one of two ways (exactly one), as a teacher is
    (:class:`TrainDistill`):

    - ``training = { <TrainConfig fields> }``: another training, described by the fields
      in which it differs from this one (e.g. ``{ train_noise = "none", epochs = 40 }``),
      laid over this training's own fields minus ``distill``, ``prune`` and ``init``;
      its full config is :meth:`TrainConfig.init_config`, so its run id. A study trains
      it first (a grid point, or a hidden training) and passes its checkpoint;
      :func:`binsense.train.train` needs it (``init=PATH``);
    - ``checkpoint = "PATH"``: the ``checkpoint.pt`` of a finished training. The *path*
      is part of the run id, not the file's content.

    Either way the checkpoint must be of a finished training of the same data set, whose
    model has this model's tensor names and shapes (loaded strictly: a missing or
    misshapen tensor is one error line). It may be another model of that shape: the float
    twin (``cnv_float`` for ``cnv``) makes Bi-Real Net's real-valued initialisation.
    Fine-tuning is how noise-aware and pruned models are often made from a clean one
    (S0's ``full`` preset says where it does so).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    training: dict[str, Any] | None = Field(
        None, description="TrainConfig fields in which the starting training differs"
    )
    checkpoint: str | None = Field(None, description="a finished run's checkpoint.pt")

    @field_validator("training")
    @classmethod
    def _known_fields(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _training_table(v, refused=_STUDENT_ONLY)

    @model_validator(mode="after")
    def _one_start(self) -> TrainInit:
        _one_of(self.training, "training", self.checkpoint, "checkpoint")
        return self


def _described(table: dict[str, Any] | None, info: ValidationInfo, what: str) -> Any:
    """The full config of a training described by ``table`` (a teacher's, a start's):
    the fields validated so far minus ``distill`` / ``prune`` / ``init``, with the table
    over them; ``None`` without a table, or while another field is invalid (that error
    is the one to report). A bad table is one ``ValueError`` line prefixed ``what``."""
    if table is None:
        return None
    own = {k: x for k, x in info.data.items() if k not in _STUDENT_ONLY}
    if len(own) < len(TrainConfig.model_fields) - len(_STUDENT_ONLY):
        return None
    try:
        return TrainConfig(**{**own, **table})
    except ValidationError as e:
        raise ValueError(f"{what}: {pydantic_problem(e, TrainConfig.model_fields)}") from None


def check_teacher_data(teacher: str, student: str) -> None:
    """A distillation teacher sees the student's images and predicts its classes: it
    must be trained on the student's data set (else the KD term compares logits of
    other classes, or fails on a shape after the whole training)."""
    if teacher != student:
        raise ValueError(
            f"the teacher is trained on {teacher!r} but the student on {student!r}; "
            "distillation needs a teacher of the same data set (drop dataset from the "
            "teacher table)"
        )


class TrainPrune(BaseModel):
    """Gradual block pruning (``[train] prune = {...}``), binsense's choices documented in
    :mod:`binsense.compress.prune`.

    ``target`` is the final fraction of each prunable block's units removed; ``score``
    ranks the units (``"bn"`` or ``"weight"``); ``block_size`` is the unit's channel
    count (a multiple of 8). The sparsity follows Zhu & Gupta's cubic ramp from step
    ``begin x total`` to step ``end x total`` (fractions of all optimizer steps), updated
    every ``every`` steps (:class:`~binsense.compress.prune.PruningSchedule`, run by the
    trainer's :class:`~binsense.train.callbacks.PruneCallback`); the masks are then
    held to the end. The checkpoint of every unfinished epoch keeps the full-shape model
    and its masks (the callback's state, so a resumed run is exact); after the last
    epoch's training pass the masked units are removed for real
    (:func:`~binsense.compress.prune.remove_pruned`) before the final evaluation and
    checkpoint, which therefore holds the smaller tensors and their ``prune_plan``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    target: float = Field(..., gt=0, lt=1, description="final fraction of units pruned")
    score: Literal["bn", "weight"] = "bn"
    block_size: int = Field(32, ge=8, multiple_of=8, description="channels per unit")
    begin: float = Field(0.2, ge=0, le=1, description="ramp start, fraction of all steps")
    end: float = Field(0.8, ge=0, le=1, description="ramp end, fraction of all steps")
    every: int = Field(50, ge=1, description="steps between sparsity updates")

    @model_validator(mode="after")
    def _ordered(self) -> TrainPrune:
        if self.end < self.begin:
            raise ValueError(f"begin ({self.begin:g}) must be <= end ({self.end:g})")
        return self

    def schedule(self, total_steps: int) -> PruningSchedule:
        """The pruning schedule of a training of ``total_steps`` optimizer steps."""
        begin = round(self.begin * total_steps)
        end = max(begin, round(self.end * total_steps))
        return PruningSchedule(
            target=self.target, begin_step=begin, end_step=end, every=self.every,
            block_size=self.block_size, score=self.score,
        )  # fmt: skip


class TrainConfig(BaseModel):
    """Everything that determines a training run (same config + seed = same model).

    ``model_options`` are passed to the model builder (e.g. ``{"width": 0.25}``);
    ``train_noise`` turns on noise-aware training (:class:`TrainNoise`; ``"none"`` or
    ``None`` is clean training);
    ``train_subset`` / ``test_subset`` keep the first *n* images per class (after a seeded
    shuffle) for quick runs; ``threads`` sets ``torch.set_num_threads`` (``None`` keeps
    PyTorch's default; at most :data:`~binsense.resources.MAX_THREADS`).

    Validation is strict: values are never coerced (``epochs = true``, ``batch_size =
    "32"`` and ``lr = "0.1"`` are errors; an integer is accepted where a number is
    expected, ``lr = 1``); numbers must be finite. ``seed`` is in ``[0, 2**63 - 1]``.
    ``device`` must name a device binsense runs on (``cpu``, ``cuda``, ``cuda:N``,
    ``mps``); whether it exists on this machine is checked only with the
    :data:`CHECK_DEVICE` validation context (see
    :func:`binsense.resources.resolve_device`).

    ``precision``, ``channels_last`` and ``compile`` say how the training step runs
    (:mod:`binsense.train.accel`: bf16 autocast, NHWC layout, ``torch.compile``); every
    recorded number is still computed in fp32. They change the trained weights, so each
    is part of the run id when it is not its default (``"fp32"``, ``false``,
    ``false``: ids of runs from before them stay). ``precision = "auto"`` is bf16 on
    hardware with native bf16 and fp32 elsewhere: the choice is recorded in the run's
    provenance and a run continues only on the precision it started with.

    ``eval_engine`` says how each epoch's test accuracy is computed: ``"pytorch"`` (the
    fp32, uncompiled model) or ``"binsense"`` (on the CPU, the packed engine wherever the
    model deploys exactly, :func:`binsense.deploy.exact_program`: the deployed model's
    own numbers, several times faster; PyTorch otherwise, with a notice). It does not
    change the weights, so it is not part of the run id; each metrics row says which.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    dataset: str = "mnist"
    model: str = "mnist_bnn"
    model_options: dict[str, Any] = Field(default_factory=dict)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine", "onecycle"] = "onecycle"
    warmup: float = Field(0.25, ge=0, lt=1, description="onecycle: fraction of steps warming up")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    crop_padding: int = Field(0, ge=0)
    flip: bool = False
    train_noise: TrainNoise | None = None
    train_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    threads: int | None = Field(None, ge=1, le=MAX_THREADS)
    device: str = "cpu"
    precision: Literal["auto", "bf16", "fp32"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    eval_engine: Literal["pytorch", "binsense"] = Field(
        "pytorch", description="per-epoch test evaluation: fp32 PyTorch or the packed engine"
    )
    # last: their validators see every field above (the teacher inherits them)
    distill: TrainDistill | None = None
    prune: TrainPrune | None = None
    init: TrainInit | None = None

    @field_validator("train_noise", "distill", "prune", "init", mode="before")
    @classmethod
    def _none_is_clean(cls, v: Any) -> Any:
        """``"none"`` turns it off: clean training, no distillation, no pruning (TOML has
        no null, so a grid can list it)."""
        return None if v == "none" else v

    @field_validator("distill")
    @classmethod
    def _teacher_is_valid(cls, v: TrainDistill | None, info: ValidationInfo) -> Any:
        """The teacher's config (student fields + teacher table) must itself be valid."""
        teacher = _described(None if v is None else v.teacher, info, "teacher")
        if teacher is not None:
            check_teacher_data(teacher.dataset, info.data["dataset"])
        return v

    @field_validator("init")
    @classmethod
    def _start_is_valid(cls, v: TrainInit | None, info: ValidationInfo) -> Any:
        """The starting training's config (these fields + its table) must be valid and of
        the same data set (its model may differ where its tensors have the same names and
        shapes, e.g. the float twin: the study schema checks that when a file loads, the
        load itself always)."""
        start = _described(None if v is None else v.training, info, "init")
        if start is not None and start.dataset != info.data["dataset"]:
            raise ValueError(
                f"init: the starting training is on {start.dataset!r}, this one on "
                f"{info.data['dataset']!r}; a start must be trained on the same data set "
                "(drop dataset from the init table)"
            )
        return v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str, info: ValidationInfo) -> str:
        check = bool(info.context and info.context.get("check_device"))
        try:
            resolve_device(v, check_available=check)
        except BinsenseError as e:
            raise ValueError(str(e)) from None
        return v

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def teacher_config(self) -> TrainConfig | None:
        """The teacher's full config (:class:`TrainDistill`: the student's fields minus
        ``distill`` / ``prune``, with the ``teacher`` table over them), or ``None`` when
        the student does not distil from a teacher training."""
        if self.distill is None or self.distill.teacher is None:
            return None
        student = {k: v for k, v in self.to_dict().items() if k not in _STUDENT_ONLY}
        return TrainConfig(**{**student, **self.distill.teacher})

    def init_config(self) -> TrainConfig | None:
        """The starting training's full config (:class:`TrainInit`: these fields minus
        ``distill`` / ``prune`` / ``init``, with the ``training`` table over them), or
        ``None`` when this training does not start from a training described here."""
        if self.init is None or self.init.training is None:
            return None
        own = {k: v for k, v in self.to_dict().items() if k not in _STUDENT_ONLY}
        return TrainConfig(**{**own, **self.init.training})

    def config_hash(self) -> str:
        """Content hash of the fields that change the trained model (not device/threads).

        The teacher's table is a field, so changing the teacher changes the student's id.
        """
        d = self.to_dict()
        for k in ("device", "threads", "eval_engine"):  # where and how: not the weights
            d.pop(k)
        for k in ("train_noise", "distill", "prune", "init"):
            if d[k] is None:  # off: leave out, so ids of runs from before it stay
                d.pop(k)
        for k, default in _STEP_DEFAULTS.items():
            if d[k] == default:  # today's step: ids of runs from before these fields stay
                d.pop(k)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
