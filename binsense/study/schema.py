"""Study files: the TOML schema, scale presets and grid expansion.

A study file describes a grid of trainings and a grid of evaluation conditions::

    [study]                  # name, description, default_preset
    [train]                  # base TrainConfig fields (recipe = "NAME": a recipe's
                             # fields under them, binsense.train.recipes)
    [train.grid]             # TrainConfig field -> list of values (cartesian product)
                             # variant = [{name = ..., <fields>}, ...]: linked settings
                             # ([[train.grid]] blocks: several grids, their union)
    [[condition]]            # one test condition: kind + parameters; list values expand
    [evaluation]             # how conditions are evaluated (batch size, test subset, draw cap)
    [report]                 # what the report shows: notes, heatmap, facets (never what runs)
    [presets.NAME]           # tables deep-merged over the file (scale: smoke, cpu, paper)

Loading is strict: every key is checked against the schema of its section (TrainConfig
for ``[train]``, the registered condition class for a ``[[condition]]`` block), names of
data sets, models and condition kinds against their registries, and every problem
becomes one :class:`StudyFileError` line that names the file, the place in it (section,
block number, preset) and — for a misspelt name — the nearest valid one. The base file
and *every* preset are validated, so a typo in the ``paper`` preset is found by a
``smoke`` run.

Presets merge recursively into tables; any other value (including the ``condition``
array) is replaced. Expansion turns the merged document into a :class:`Study`: one
:class:`Training` per distinct training config (its ``run_id`` is the config's content
hash, so the same config always maps to the same run folder and store rows) and one
:class:`Evaluation` per distinct condition (its ``condition_id`` hashes the kind, the
parameters and the choice of test images, so changing any of them re-evaluates).

A training that distils from a teacher described by a config (``distill = { teacher =
{...} }``, :class:`binsense.train.config.TrainDistill`) depends on that teacher's
training, and a fine-tuning that starts from a training described by a config (``init =
{ training = {...} }``, :class:`binsense.train.config.TrainInit`) on that starting
training: its run id is the config's hash. One that is not itself a point of the grid
becomes a *hidden* training (:attr:`Study.hidden`): trained and stored like the others,
but not evaluated under the conditions nor listed as a grid point.
:meth:`Study.training_order` puts every teacher and start before the trainings that
need them.

**Size.** A grid is counted before it is expanded — the product of its list lengths,
summed over the ``[[train.grid]]`` blocks (and, apart, over the ``[[condition]]``
blocks) — and a file asking for more than :data:`MAX_GRID_POINTS` trainings (or
conditions) is refused with one line giving the count, instead of expanding for hours
(1,000 seeds x 1,000 learning rates is a 16 kB file). Expansion is linear in the number
of points: each distinct model (data set, model, options) is built on the meta device
once, not once per seed or learning rate.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import re
import types
import typing
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from binsense import tomlfile
from binsense.data.registry import IMAGEFOLDER_PREFIX
from binsense.errors import BinsenseError, nearest, pydantic_problem
from binsense.errors import did_you_mean as _did_you_mean
from binsense.evaluate.conditions import Condition, condition_class, condition_kinds
from binsense.io import safe_child
from binsense.study.claim_spec import Expectation, check_claims
from binsense.study.selector import check_comparisons
from binsense.train import TrainConfig

_SECTIONS = ("study", "train", "condition", "evaluation", "report", "executor", "presets")
_PRESET_SECTIONS = ("study", "train", "condition", "evaluation", "report", "executor")
#: Names changed for one vocabulary; a file using them gets a line saying what to write.
_RENAMED_SECTIONS = {
    "eval": "the [eval] table is now [evaluation]",
    "evaluate": "the [[evaluate]] blocks are now [[condition]] blocks",
}
#: Condition parameters renamed: one word, "draws", for one Monte-Carlo draw.
_RENAMED_PARAMETERS = {"instances": "draws", "trials": "draws"}
_GRID = "grid"
#: ``[train]`` key naming a training recipe whose fields the file's build on.
_RECIPE = "recipe"

#: Grid key whose values are tables of linked TrainConfig fields (one named variant each).
_VARIANT = "variant"
#: Most trainings a study file may ask for (grid points summed over its ``[[train.grid]]``
#: blocks), and most evaluation conditions (summed over its ``[[condition]]`` blocks).
#: The runner trains one model after the other, minutes each, and evaluates every
#: training under every condition: 100,000 is far beyond any study that can finish,
#: and small enough that counting, expanding and validating it takes seconds, not hours.
MAX_GRID_POINTS = 100_000


class StudyFileError(BinsenseError):
    """A study file that cannot be read or does not follow the schema (one line)."""


class StudyInfo(BaseModel):
    """The ``[study]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    name: str | None = Field(None, description="study name (default: the file name)")
    description: str = ""
    default_preset: str | None = Field(None, description="preset used when none is given")


class EvalOptions(BaseModel):
    """The ``[evaluation]`` table: how every condition is evaluated.

    ``engine`` chooses what computes the logits: ``"pytorch"`` (default) runs the trained
    model; ``"binsense"`` runs its deployed integer program (:func:`binsense.deploy.convert`,
    the XNOR-popcount kernels) on the CPU, converted after the condition is applied, so a
    ``bn_bits`` condition deploys the quantized batch norm and sensor noise is applied to
    the images before the program. The program's logits are those of the model bit for
    bit, so the rows (accuracy, loss, n) are the same; a draw whose model cannot be
    deployed (a float model, weight noise on binarised weights, a non-CPU device) is
    evaluated by PyTorch. Each row records the engine that computed it
    (``versions.engine``; ``versions.engine_fallback`` says why PyTorch stood in). The
    engine is not part of the condition ids: switching it reuses the stored rows.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    batch_size: int = Field(500, ge=1, description="images per evaluation batch")
    test_subset: int | None = Field(None, ge=1, description="test images per class (all)")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed of the test-subset selection")
    max_draws: int | None = Field(
        None, ge=1, description="evaluate at most this many draws of each condition"
    )
    device: str | None = Field(None, description="device (default: the training device)")
    engine: typing.Literal["pytorch", "binsense"] = Field(
        "pytorch", description="what computes the logits: the PyTorch model or its deployed program"
    )


class ExecutorOptions(BaseModel):
    """The ``[executor]`` table: where the study's trainings and evaluations run.

    ``kind = "local"`` (default) runs them one after another in this process; ``"ray"``
    runs each training, and each trained run's batch of evaluations, as a Ray task
    (:mod:`binsense.study.ray_executor`, ``docs/scale-out.md``) on the cluster at
    ``address`` (``"auto"``: the one ``ray start`` made on this machine; none: a local
    Ray with this machine's cores). ``cpus`` and ``gpus`` are each task's resource
    request (default: the training's ``threads`` CPUs; one GPU for a training on a
    CUDA device, so that one machine's GPUs train one grid point each); ``retries`` how often a
    task whose worker died is run again (it resumes from its last epoch checkpoint).
    ``checkpoints``: ``"shared"`` (every node sees the study folder), ``"object-store"``
    (run folders travel through Ray's object store), ``"auto"`` (shared where every node
    sees the folder, else the object store). Where the study runs does not change its
    rows: the executor is not part of any id.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    kind: typing.Literal["local", "ray"] = Field("local", description="local or ray")
    address: str | None = Field(None, description="Ray cluster address (auto or HOST:PORT)")
    cpus: float | None = Field(None, gt=0, description="CPUs per task (default: threads)")
    gpus: float | None = Field(
        None, ge=0, description="GPUs per task (default: 1 for a CUDA training, else 0)"
    )
    retries: int = Field(3, ge=0, le=100, description="retries of a task whose worker died")
    checkpoints: typing.Literal["auto", "shared", "object-store"] = Field(
        "auto", description="how run folders reach the workers (Ray)"
    )


#: Keys of one ``[[report.compare]]`` block.
_COMPARE_KEYS = ("name", "a", "b", "relative_to")


class CompareSpec(BaseModel):
    """One ``[[report.compare]]`` block: the paired comparison B − A of two training
    groups, each chosen by a selector table of training-grid keys (or TrainConfig fields)
    to values, e.g. ``a = { variant = "NBC-8" }``, ``b = { variant = "GLT-8" }``;
    ``name`` titles it in the report; ``relative_to`` (a condition label, e.g.
    ``"clean"``) compares changes from that condition instead of accuracies (robustness).
    See :mod:`binsense.study.compare`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    name: str | None = Field(None, description="title in the report (default: 'B vs A')")
    a: dict[str, Any] = Field(description="selector of the reference group A")
    b: dict[str, Any] = Field(description="selector of the group B (B − A is reported)")
    relative_to: str | None = Field(
        None, description="condition label: compare each training's change from it"
    )


#: Keys of one ``[[report.claim]]`` block.
_CLAIM_KEYS = ("name", "paper", "a", "b", "relative_to", "where", "expect")


class ClaimSpec(BaseModel):
    """One ``[[report.claim]]`` block: a paper's statement judged from the store —
    ``b`` (and optionally ``a``) select training groups, ``where`` the conditions,
    ``relative_to`` a reference condition (required without ``a``), ``expect`` the
    bound in accuracy points (``"> X"``, ``"< X"``, ``"within X"``). See
    :mod:`binsense.study.claims`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    name: str = Field(description="the claim, as the report states it")
    paper: str | None = Field(None, description="what the paper reports")
    a: dict[str, Any] | None = Field(None, description="selector of the group A (B − A)")
    b: dict[str, Any] = Field(description="selector of the training group the claim is about")
    relative_to: str | None = Field(None, description="reference condition label")
    where: dict[str, Any] = Field(description="the conditions it is judged on")
    expect: str = Field(description="'> X', '< X' or 'within X' (accuracy points)")

    @field_validator("expect")
    @classmethod
    def _expect(cls, text: str) -> str:
        Expectation.parse(text)
        return text


def _report_blocks(
    blocks: Any, kind: str, keys: Sequence[str]
) -> list[tuple[str, Mapping[str, Any]]]:
    """``[[report.KIND]]`` blocks as ``(where, table)``: a list of tables of known keys
    (a ``ValueError`` line otherwise)."""
    if not isinstance(blocks, list):
        raise ValueError(f"must be [[report.{kind}]] blocks (a list of tables), got {blocks!r}")
    out = []
    for i, block in enumerate(blocks, 1):
        where = f"[[report.{kind}]] #{i}"
        if not isinstance(block, Mapping):
            raise ValueError(f"{where} must be a table, got {block!r}")
        for key in block:
            if key not in keys:
                raise ValueError(f"{where} unknown key {key!r}{_did_you_mean(key, keys)}")
        out.append((where, block))
    return out


class ReportOptions(BaseModel):
    """The ``[report]`` table: how the report presents results (never what is run).

    ``heatmap`` keeps, in the training x condition heatmap, only the conditions whose
    parameters match — ``{bn_bits = 32, level = [0.05, 0.1]}``; the key ``kind`` matches
    the condition kind; a condition without the parameter (e.g. ``clean``) is kept.
    ``facet`` maps a condition kind to one of its parameters: that kind's sweep figures
    get one panel per value of it (e.g. ``{sensor_noise = "type"}``). ``sweep`` limits,
    per kind, the numeric parameters that get an accuracy-vs-parameter figure (default:
    every parameter that takes several values). ``compare`` (``[[report.compare]]``
    blocks, :class:`CompareSpec`) adds a "Paired comparisons" section; its selectors are
    checked against the training grid when the file is loaded. ``notes`` are sentences
    the report prints under its title, as they are: what the study leaves out and why
    (a data set that is not on the machine, a shortened schedule).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    notes: list[str] = Field(default_factory=list, description="sentences under the title")
    heatmap: dict[str, Any] = Field(default_factory=dict, description="condition filter")
    facet: dict[str, str] = Field(default_factory=dict, description="kind -> parameter")
    sweep: dict[str, list[str]] = Field(
        default_factory=dict, description="kind -> the parameters that get sweep figures"
    )
    compare: list[CompareSpec] = Field(
        default_factory=list, description="paired comparisons ([[report.compare]] blocks)"
    )
    claim: list[ClaimSpec] = Field(
        default_factory=list, description="a paper's claims with verdicts ([[report.claim]])"
    )

    @field_validator("compare", mode="before")
    @classmethod
    def _compare_blocks(cls, blocks: Any) -> Any:
        """Each block a table of ``name``, ``a``, ``b``; a and b non-empty tables."""
        for where, block in _report_blocks(blocks, "compare", _COMPARE_KEYS):
            for side in ("a", "b"):
                value = block.get(side)
                if not isinstance(value, Mapping) or not value:
                    raise ValueError(
                        f"{where} needs {side!r}, a non-empty table of training keys to values "
                        f'(e.g. {side} = {{ variant = "NBC-8" }}), got {value!r}'
                    )
        return blocks

    @field_validator("claim", mode="before")
    @classmethod
    def _claim_blocks(cls, blocks: Any) -> Any:
        """Each block a table of known keys; b and where non-empty tables, a a non-empty
        table when given, relative_to given when a is not."""
        for where, block in _report_blocks(blocks, "claim", _CLAIM_KEYS):
            for key, example in (("b", '{ variant = "DeSign-2D" }'), ("a", None),
                                 ("where", '{ kind = "bn_bits", bits = 4 }')):  # fmt: skip
                value = block.get(key)
                if (key != "a" or value is not None) and (
                    not isinstance(value, Mapping) or not value
                ):
                    raise ValueError(
                        f"{where} needs {key!r}, a non-empty table (e.g. {key} = "
                        f"{example or block.get('b') or '{ variant = ... }'}), got {value!r}"
                    )
            if block.get("a") is None and block.get("relative_to") is None:
                raise ValueError(
                    f"{where} has no 'a', so it is about one training group's change under "
                    "its conditions: give relative_to, the reference condition's label (e.g. "
                    'relative_to = "clean"), or a = {...} to compare two groups'
                )
        return blocks

    def in_heatmap(self, kind: str, params: Mapping[str, Any]) -> bool:
        """Whether a condition passes the ``heatmap`` filter."""
        for key, wanted in self.heatmap.items():
            value = kind if key == "kind" else params.get(key, _MISSING)
            if value is _MISSING:
                continue
            if value not in (wanted if isinstance(wanted, list) else [wanted]):
                return False
        return True


_MISSING = object()


@dataclass(frozen=True)
class Training:
    """One model to train: its config, its grid coordinates and its content-derived id.

    ``hidden_for`` is set on a hidden training (not a grid point: a teacher or a start):
    the label of the first training that needs it, as its ``role`` (``"teacher"`` or
    ``"start"``).
    """

    run_id: str
    config: TrainConfig
    grid: dict[str, Any]
    hidden_for: str | None = None
    role: str = ""

    def label(self, keys: Iterable[str] | None = None) -> str:
        """``seed=0, lr=0.001`` (the grid values, optionally only ``keys``); ``base`` if none;
        ``teacher of <student>`` / ``start of <fine-tuning>`` for a hidden training."""
        if self.hidden_for is not None:
            return f"{self.role} of {self.hidden_for}"
        items = [(k, v) for k, v in self.grid.items() if keys is None or k in keys]
        return ", ".join(f"{k}={v}" for k, v in items) or "base"

    @property
    def teacher_id(self) -> str | None:
        """The run id of the teacher training it distils from (``None``: no teacher, or
        a teacher given as a checkpoint path)."""
        teacher = self.config.teacher_config()
        return None if teacher is None else run_id_for(teacher)

    @property
    def start_id(self) -> str | None:
        """The run id of the training it starts from (``None``: no ``init``, or a start
        given as a checkpoint path)."""
        start = self.config.init_config()
        return None if start is None else run_id_for(start)

    @property
    def needs(self) -> tuple[str, ...]:
        """The run ids of the trainings that must finish before this one: its teacher and
        its start, where described by a config."""
        return tuple(r for r in (self.teacher_id, self.start_id) if r is not None)


@dataclass(frozen=True)
class Evaluation:
    """One evaluation condition and how many of its draws the study evaluates."""

    condition_id: str
    condition: Condition
    draws: int

    @property
    def kind(self) -> str:
        return self.condition.kind

    def label(self) -> str:
        return self.condition.label()


@dataclass(frozen=True)
class Study:
    """A validated, expanded study: what to train, what to evaluate, where to store it."""

    path: Path
    name: str
    description: str
    preset: str | None
    presets: tuple[str, ...]
    trainings: tuple[Training, ...]
    evaluations: tuple[Evaluation, ...]
    eval: EvalOptions
    out_dir: Path
    report: ReportOptions = ReportOptions()
    hidden: tuple[Training, ...] = ()
    executor: ExecutorOptions = ExecutorOptions()

    def training(self, run_id: str) -> Training | None:
        """The training (grid point or hidden training) with this run id."""
        return self._by_run_id.get(run_id)

    @functools.cached_property
    def _by_run_id(self) -> dict[str, Training]:
        """run id -> training, built once: :meth:`training_order` looks up every
        training's teacher and start, which a scan of the trainings made quadratic."""
        return {t.run_id: t for t in (*self.hidden, *self.trainings)}

    def training_order(self) -> list[Training]:
        """Every training to run, grid points and hidden trainings, each teacher and start
        before the trainings that need them (otherwise in grid order)."""
        order: dict[str, Training] = {}

        def visit(t: Training) -> None:
            if t.run_id in order:
                return
            for run_id in t.needs:
                needed = self.training(run_id)
                if needed is not None:
                    visit(needed)
            order[t.run_id] = t

        for t in self.trainings:
            visit(t)
        return list(order.values())

    @property
    def store_path(self) -> Path:
        """The study's SQLite results store."""
        return self.out_dir / "results.sqlite"

    def run_dir(self, run_id: str) -> Path:
        """The run folder (config, metrics, checkpoint) of one training:
        ``<study folder>/runs/<run_id>``.

        Raises:
            BinsenseError: the run id is not one plain folder name
                (:func:`binsense.io.safe_child`), so it cannot point outside the study folder.
        """
        return safe_child(self.out_dir / "runs", run_id, what="run id")

    @property
    def report_dir(self) -> Path:
        """Where ``study report`` writes: ``<study folder>/report[-<preset>]`` (one folder
        per preset).

        Raises:
            BinsenseError: the preset name cannot be a folder name (it would escape).
        """
        name = "report" if self.preset is None else f"report-{self.preset}"
        return safe_child(self.out_dir, name, what=f"preset name {self.preset!r} (folder name)")

    @property
    def varied(self) -> tuple[str, ...]:
        """Training-grid keys that take more than one value."""
        keys: dict[str, set[str]] = {}
        for t in self.trainings:
            for k, v in t.grid.items():
                keys.setdefault(k, set()).add(json.dumps(v, sort_keys=True))
        return tuple(k for k, vals in keys.items() if len(vals) > 1)

    @property
    def draws_per_run(self) -> int:
        return sum(e.draws for e in self.evaluations)


def run_id_for(config: TrainConfig) -> str:
    """The run id of a training config: its content hash (device and threads excluded).

    Everything that changes the trained model is a :class:`TrainConfig` field, so the hash
    covers it; two study files that ask for the same training share its run id.
    """
    return config.config_hash()


def condition_id_for(condition: Condition, options: EvalOptions) -> str:
    """Content hash of a condition and the test images it is evaluated on."""
    blob = {
        "kind": condition.kind,
        "params": condition.params(),
        "test_subset": options.test_subset,
        "subset_seed": options.seed,
    }
    text = json.dumps(blob, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def condition_labels(evaluations: Sequence[Evaluation]) -> dict[str, str]:
    """Short labels: the kind and only the parameters that vary within that kind."""
    by_kind: dict[str, list[Evaluation]] = defaultdict(list)
    for ev in evaluations:
        by_kind[ev.kind].append(ev)
    labels = {}
    for kind, evs in by_kind.items():
        varying = varying_keys([ev.condition.params() for ev in evs])
        for ev in evs:
            params = ev.condition.params()
            inner = " ".join(f"{k}={params[k]}" for k in varying)
            labels[ev.condition_id] = f"{kind} {inner}".strip()
    return labels


def varying_keys(dicts: Sequence[dict[str, Any]], skip: Sequence[str] = ()) -> list[str]:
    """Keys (in first-seen order, minus ``skip``) whose value differs between ``dicts``."""
    keys = dict.fromkeys(k for d in dicts for k in d if k not in skip)
    return [k for k in keys if len({repr(d.get(k)) for d in dicts}) > 1]


# ---------------------------------------------------------------- messages


@dataclass(frozen=True)
class _Place:
    """Where in the file a table lives, for messages (``[train]``, ``[presets.smoke.eval]``)."""

    file: str
    preset: str | None = None

    def table(self, name: str) -> str:
        return f"[presets.{self.preset}.{name}]" if self.preset else f"[{name}]"

    def block(self, index: int, kind: Any = None) -> str:
        base = f"[[presets.{self.preset}.condition]]" if self.preset else "[[condition]]"
        return f"{base} #{index + 1}" + (f" (kind {json.dumps(kind)})" if kind else "")

    def error(self, where: str, problem: str) -> StudyFileError:
        return StudyFileError(f"{self.file}: {where} {problem}")


# ---------------------------------------------------------------- loading


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a syntax error becomes one line with file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StudyFileError(f"study file {str(path)!r} does not exist.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise StudyFileError(f"cannot read study file {str(path)!r}: {e}.") from None
    try:
        return tomlfile.loads(text)
    except tomlfile.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)", msg)
        if m:
            what = msg[: m.start()] + msg[m.end() :]
            raise StudyFileError(
                f"{path}:{m.group(1)}:{m.group(2)}: invalid TOML: {what}."
            ) from None
        raise StudyFileError(f"{path}: invalid TOML: {msg}.") from None


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` merged into ``base``: tables merge recursively, other values replace."""
    out = dict(base)
    for k, v in overlay.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _has(overlay: Mapping[str, Any], *keys: str) -> bool:
    node: Any = overlay
    for k in keys:
        if not isinstance(node, Mapping) or k not in node:
            return False
        node = node[k]
    return True


def _table(doc: Mapping[str, Any], name: str, place: _Place, where: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, Mapping):
        raise place.error(where, f"must be a table, got {value!r}")
    return dict(value)


def _validated(cls: type[BaseModel], data: Mapping[str, Any], place: _Place, where: str) -> Any:
    try:
        return cls(**data)
    except ValidationError as e:
        raise place.error(where, pydantic_problem(e, cls.model_fields)) from None
    except BinsenseError as e:  # a validator that checks a name against its registry
        raise place.error(where, str(e)) from None
    except TypeError as e:  # non-string keys and the like
        raise place.error(where, str(e)) from None


def _check_training(config: TrainConfig, place: _Place, where: Mapping[str, str]) -> None:
    """Registry checks pydantic cannot do, by value: the data set through the data
    registry (every spelling ``load_dataset`` accepts), the model, and its options —
    built on the meta device, so ``design = "2x3"`` or ``width = "wide"`` fails here,
    before any training starts."""
    from binsense.data import dataset_info, resolve_dataset_name
    from binsense.models import check_model, model_spec

    try:
        dataset = resolve_dataset_name(config.dataset)
    except BinsenseError as e:
        raise place.error(where["dataset"], str(e)) from None
    try:
        model_spec(config.model)
    except BinsenseError as e:
        raise place.error(where["model"], str(e)) from None
    try:
        if dataset.lower().startswith(IMAGEFOLDER_PREFIX):  # its shape is known only on disk
            model_spec(config.model).validate(**config.model_options)
        else:
            check_model(config.model, dataset_info(dataset), **config.model_options)
    except BinsenseError as e:
        raise place.error(where["model_options"], str(e)) from None


def _expand_trainings(
    section: Mapping[str, Any], place: _Place, overlay: Mapping[str, Any]
) -> tuple[list[Training], list[Training]]:
    """The grid's trainings and the hidden ones they need (:func:`_hidden_trainings`).

    ``grid`` is one table, or a list of tables (``[[train.grid]]`` blocks): then the plan
    is the union of each grid's expansion (a training in two grids is trained once), so a
    study can run, say, an encoder comparison over three seeds and a pruning sweep over
    one.
    """
    fields = list(TrainConfig.model_fields)
    base = _with_recipe(dict(section), place, overlay)
    grids = base.pop(_GRID, {})
    many = isinstance(grids, list)
    if many and (not grids or not all(isinstance(g, Mapping) for g in grids)):
        raise place.error(
            _where(place, overlay, ("train", _GRID), "train"),
            f"'grid' must be a table or a list of tables ([[train.grid]]), got {grids!r}",
        )
    if not many and not isinstance(grids, Mapping):
        raise place.error(place.table("train"), f"'grid' must be a table, got {grids!r}")
    for key in base:
        if key not in TrainConfig.model_fields:
            raise place.error(
                _where(place, overlay, ("train", key), "train"),
                f"unknown key {key!r}{_did_you_mean(key, [*fields, _GRID])}",
            )
    blocks = grids if many else [grids]
    for index, grid in enumerate(blocks):
        _check_grid(grid, index if many else None, place, overlay, fields)
    points = sum(math.prod(len(v) for v in grid.values()) for grid in blocks)
    if points > MAX_GRID_POINTS:
        summed = f", summed over its {len(blocks)} blocks" if many else ""
        raise place.error(
            _where(place, overlay, ("train", _GRID), "train.grid"),
            f"asks for {points:,} trainings (the product of its list lengths{summed}), "
            f"more than the {MAX_GRID_POINTS:,} a study may hold; use fewer values or "
            "split the grid into several studies",
        )
    trainings: dict[str, Training] = {}
    checked: set[str] = set()
    for index, grid in enumerate(blocks):
        _expand_grid(
            base, grid, index if many else None, place, overlay, fields, trainings, checked
        )
    hidden = _hidden_trainings(trainings, place, overlay, checked)
    _check_starts(trainings, place, _where(place, overlay, ("train", "init"), "train"))
    return list(trainings.values()), hidden


def _with_recipe(base: dict[str, Any], place: _Place, overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``[train] recipe = "NAME"``: the recipe's fields (:mod:`binsense.train.recipes`)
    under the file's own, which override them key by key (``model_options`` as a whole),
    so a study trains exactly what ``binsense train --recipe NAME`` trains (same run ids).

    A preset that names the recipe (``[presets.full] train = { recipe = ... }``) puts it
    over the file's ``[train]`` table, which was written for the other presets: the file's
    keys, then the recipe's, then the preset's own keys (a ``full`` preset trains the
    recipe, whatever model or epochs the file's table gives)."""
    if _RECIPE not in base:
        return base
    from binsense.train.recipes import get_recipe

    name = base.pop(_RECIPE)
    try:
        recipe = get_recipe(name)
    except BinsenseError as e:
        raise place.error(_where(place, overlay, ("train", _RECIPE), "train"), str(e)) from None
    preset = overlay.get("train", {}) if place.preset else {}
    if _RECIPE in preset:
        own = {k: base[k] for k in preset if k in base}
        return {**base, **recipe.config_fields(), **own}
    return {**recipe.config_fields(), **base}


def _grid_where(
    place: _Place, overlay: Mapping[str, Any], key: str | None, index: int | None
) -> str:
    """Where a grid key is read: ``[train.grid]``, or ``[[train.grid]] #2`` for the second
    of a list of grids (the preset's table if the preset sets it)."""
    if index is None:
        return _where(place, overlay, ("train", _GRID, *([key] if key else [])), "train.grid")
    return f"[{_where(place, overlay, ('train', _GRID), 'train.grid')}] #{index + 1}"


def _check_grid(
    grid: Mapping[str, Any],
    index: int | None,
    place: _Place,
    overlay: Mapping[str, Any],
    fields: list[str],
) -> None:
    """A grid's keys are TrainConfig fields (or ``variant``), its values non-empty lists:
    what counting its points (the product of the list lengths) needs."""
    for key, values in grid.items():
        where = _grid_where(place, overlay, key, index)
        if key not in TrainConfig.model_fields and key != _VARIANT:
            hint = _did_you_mean(key, [*fields, _VARIANT])
            raise place.error(where, f"unknown key {key!r}{hint}")
        if not isinstance(values, list) or not values:
            raise place.error(where, f"{key!r} must be a non-empty list of values, got {values!r}")


def _check_starts(trainings: Mapping[str, Training], place: _Place, where: str) -> None:
    """Each fine-tuning's start (``init.training``) builds a model with the same tensor
    names and shapes as its own, when the model or its options differ (both built on the
    meta device), so a start that cannot be loaded is refused before hours of training."""
    from binsense.data import dataset_info, resolve_dataset_name
    from binsense.models import check_model

    seen: set[str] = set()
    for t in trainings.values():
        start = t.config.init_config()
        if start is None or _model_key(start) == _model_key(t.config):
            continue
        key = _model_key(start) + _model_key(t.config)
        dataset = resolve_dataset_name(t.config.dataset)
        if key in seen or dataset.lower().startswith(IMAGEFOLDER_PREFIX):
            continue  # (an image folder's shape is known only on disk: the load checks)
        seen.add(key)
        shapes = [
            {k: tuple(v.shape) for k, v in check_model(c.model, dataset_info(dataset),
                                                        **c.model_options).state_dict().items()}
            for c in (start, t.config)
        ]  # fmt: skip
        if shapes[0] != shapes[1]:
            diff = sorted(set(shapes[0].items()) ^ set(shapes[1].items()))[0][0]
            lost = {k: v for k, v in t.config.model_options.items() if k not in start.model_options}
            hint = (
                "; the init table's model_options replaces this training's whole table (it "
                f"does not merge): repeat the options they share ({tomlfile.key_values(lost)})"
                if lost and "model_options" in (t.config.init.training or {}) else ""
            )  # fmt: skip
            raise place.error(
                where,
                f"init of {t.label()}: the starting model {start.model!r} and this model "
                f"{t.config.model!r} do not have the same tensors (first difference: {diff!r}); "
                f"a start must have this model's tensor names and shapes{hint}",
            )


def _model_key(config: TrainConfig) -> str:
    """What :func:`_check_training` depends on: data set, model and model options."""
    return json.dumps([config.dataset, config.model, config.model_options], sort_keys=True,
                      default=repr)  # fmt: skip


def _expand_grid(
    base: Mapping[str, Any],
    grid: Mapping[str, Any],
    index: int | None,
    place: _Place,
    overlay: Mapping[str, Any],
    fields: list[str],
    trainings: dict[str, Training],
    checked: set[str],
) -> None:
    """One grid's trainings over ``base`` (checked by :func:`_check_grid`), added to
    ``trainings`` (by run id). ``checked``: the :func:`_model_key` of every model already
    built on the meta device; a seed or learning-rate axis adds no model build."""
    variants = _variants(grid, place, _grid_where(place, overlay, _VARIANT, index), fields)

    def origin(key: str) -> str:
        if key in grid:
            return _grid_where(place, overlay, key, index)
        return _where(place, overlay, ("train", key), "train")

    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, combo, strict=True))
        values = {**base, **point}
        if _VARIANT in point:
            point[_VARIANT] = point[_VARIANT]["name"]
            values = _merge_variant(values, variants[point[_VARIANT]])
        try:
            config = TrainConfig(**values)
        except ValidationError as e:
            key = str(e.errors()[0]["loc"][0]) if e.errors()[0]["loc"] else "train"
            raise place.error(origin(key), pydantic_problem(e, fields, TrainConfig)) from None
        key = _model_key(config)
        if key not in checked:
            _check_training(
                config, place, {k: origin(k) for k in ("dataset", "model", "model_options")}
            )
            checked.add(key)
        run_id = run_id_for(config)
        trainings.setdefault(run_id, Training(run_id=run_id, config=config, grid=point))


def _hidden_trainings(
    trainings: Mapping[str, Training],
    place: _Place,
    overlay: Mapping[str, Any],
    checked: set[str],
) -> list[Training]:
    """The teachers and starts (and theirs in turn) that are not grid points, checked like
    them (``checked``: as in :func:`_expand_grid`)."""
    hidden: dict[str, Training] = {}
    todo = list(trainings.values())
    while todo:
        needer = todo.pop(0)
        for role, key, config in (
            ("teacher", ("distill", "teacher"), needer.config.teacher_config()),
            ("start", ("init", "training"), needer.config.init_config()),
        ):
            if config is None:
                continue
            run_id = run_id_for(config)
            if run_id in trainings or run_id in hidden:
                continue
            table = _where(place, overlay, ("train", key[0]), "train")
            what = f"{table} {'.'.join(key)} (of {needer.label()}):"
            if _model_key(config) not in checked:
                _check_training(
                    config, place, dict.fromkeys(("dataset", "model", "model_options"), what)
                )
                checked.add(_model_key(config))
            hidden[run_id] = Training(run_id, config, {}, hidden_for=needer.label(), role=role)
            todo.append(hidden[run_id])
    return list(hidden.values())


def _variants(
    grid: Mapping[str, Any], place: _Place, where: str, fields: list[str]
) -> dict[str, dict[str, Any]]:
    """``grid.variant``: named tables of linked TrainConfig fields, checked; name -> fields
    (``where``: the grid table, for messages)."""
    if _VARIANT not in grid:
        return {}
    variants: dict[str, dict[str, Any]] = {}
    for i, table in enumerate(grid[_VARIANT], 1):
        if not isinstance(table, Mapping) or not isinstance(table.get("name"), str):
            raise place.error(
                where, f"variant {i} must be a table with a 'name' string, got {table!r}"
            )
        name, values = table["name"], {k: v for k, v in table.items() if k != "name"}
        for key in values:
            if key not in TrainConfig.model_fields:
                hint = _did_you_mean(key, [*fields, "name"])
                raise place.error(where, f"variant {name!r}: unknown key {key!r}{hint}")
            if key in grid:
                raise place.error(
                    where, f"variant {name!r} sets {key!r}, which the grid also varies"
                )
        if name in variants:
            raise place.error(where, f"two variants are named {name!r}")
        variants[name] = values
    return variants


def _merge_variant(values: dict[str, Any], variant: Mapping[str, Any]) -> dict[str, Any]:
    """The base values with a variant's fields over them (``model_options`` merged by key)."""
    merged = {k: v for k, v in values.items() if k != _VARIANT}
    for key, value in variant.items():
        if key == "model_options" and isinstance(merged.get(key), Mapping):
            value = {**merged[key], **value}
        merged[key] = value
    return merged


def _where(place: _Place, overlay: Mapping[str, Any], keys: tuple[str, ...], table: str) -> str:
    """The table a key was read from: the preset's if the preset sets it, else the file's."""
    if place.preset and _has(overlay, *keys):
        return place.table(table)
    return f"[{table}]"


def _is_sequence_field(cls: type[Condition], name: str) -> bool:
    """Whether a condition field itself holds a list (then lists do not expand)."""
    field = cls.model_fields.get(name)
    if field is None:
        return False
    options = typing.get_args(field.annotation) if _is_union(field.annotation) else ()
    return any(
        t in (list, tuple) or typing.get_origin(t) in (list, tuple)
        for t in (field.annotation, *options)
    )


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _axes(cls: type[Condition], params: Mapping[str, Any]) -> dict[str, list]:
    """The parameters of a ``[[condition]]`` block that expand: list values, except a
    single list given to a field that itself holds a list."""
    return {
        k: v
        for k, v in params.items()
        if isinstance(v, list)
        and (not _is_sequence_field(cls, k) or (v and isinstance(v[0], list)))
    }


def _condition_points(block: Any) -> int:
    """How many conditions a ``[[condition]]`` block expands into (the product of its
    axes' lengths), counted without expanding; 1 for a block :func:`_expand_block`
    refuses anyway (no table, unknown kind)."""
    if not isinstance(block, Mapping) or block.get("kind") not in condition_kinds():
        return 1
    cls = condition_class(block["kind"])
    params = {k: v for k, v in block.items() if k != "kind"}
    return math.prod(len(v) for v in _axes(cls, params).values())


def _expand_block(block: Any, index: int, place: _Place, options: EvalOptions) -> list[Evaluation]:
    if not isinstance(block, Mapping):
        raise place.error(place.block(index), f"must be a table, got {block!r}")
    kind = block.get("kind")
    if kind is None:
        raise place.error(
            place.block(index), f"needs a 'kind' (one of: {', '.join(condition_kinds())})"
        )
    if not isinstance(kind, str) or kind not in condition_kinds():
        raise place.error(
            place.block(index),
            f"unknown condition kind {kind!r}{_did_you_mean(str(kind), condition_kinds())}",
        )
    cls = condition_class(kind)
    where = place.block(index, kind)
    params = {k: v for k, v in block.items() if k != "kind"}
    for key in params:
        if key not in cls.model_fields:
            if _RENAMED_PARAMETERS.get(key) in cls.model_fields:
                raise place.error(
                    where, f"{key!r} is now {_RENAMED_PARAMETERS[key]!r} (one Monte-Carlo draw)"
                )
            hint = _did_you_mean(key, cls.model_fields) if cls.model_fields else " (it has none)"
            raise place.error(where, f"unknown parameter {key!r}{hint}")
    axes = _axes(cls, params)
    for key, values in axes.items():
        if not values:
            raise place.error(where, f"{key!r} is an empty list; give at least one value")
    out = []
    for combo in itertools.product(*axes.values()):
        condition = _validated(cls, {**params, **dict(zip(axes, combo, strict=True))}, place, where)
        draws = condition.draw_count()
        if options.max_draws is not None:
            draws = min(draws, options.max_draws)
        cid = condition_id_for(condition, options)
        out.append(Evaluation(condition_id=cid, condition=condition, draws=draws))
    return out


def _expand(
    doc: Mapping[str, Any], place: _Place, overlay: Mapping[str, Any]
) -> tuple[
    StudyInfo, list[Training], list[Evaluation], EvalOptions, ReportOptions, list[Training],
    ExecutorOptions,
]:  # fmt: skip
    for key in doc:
        if key in _RENAMED_SECTIONS:
            raise StudyFileError(f"{place.file}: {_RENAMED_SECTIONS[key]}; rename it")
        if key not in _SECTIONS:
            close = nearest(key, _SECTIONS)
            hint = (
                f" — did you mean [{close}]?" if close else f" (sections: {', '.join(_SECTIONS)})"
            )
            raise StudyFileError(f"{place.file}: unknown section [{key}]{hint}")
    info = _validated(
        StudyInfo, _table(doc, "study", place, "[study]"), place,
        _where(place, overlay, ("study",), "study"),
    )  # fmt: skip
    options = _validated(
        EvalOptions, _table(doc, "evaluation", place, "[evaluation]"), place,
        _where(place, overlay, ("evaluation",), "evaluation"),
    )  # fmt: skip
    report = _validated(
        ReportOptions, _table(doc, "report", place, "[report]"), place,
        _where(place, overlay, ("report",), "report"),
    )  # fmt: skip
    executor = _validated(
        ExecutorOptions, _table(doc, "executor", place, "[executor]"), place,
        _where(place, overlay, ("executor",), "executor"),
    )  # fmt: skip
    trainings, hidden = _expand_trainings(_table(doc, "train", place, "[train]"), place, overlay)
    blocks = doc.get("condition", [{"kind": "clean"}])
    if not isinstance(blocks, list):
        raise place.error("[[condition]]", "must be an array of tables ([[condition]] blocks)")
    block_place = place if _has(overlay, "condition") else _Place(place.file)
    points = sum(_condition_points(block) for block in blocks)
    if points > MAX_GRID_POINTS:
        summed = f", summed over its {len(blocks)} blocks" if len(blocks) > 1 else ""
        preset = block_place.preset
        raise block_place.error(
            f"[[presets.{preset}.condition]]" if preset else "[[condition]]",
            f"asks for {points:,} conditions (the product of the list lengths{summed}), "
            f"more than the {MAX_GRID_POINTS:,} a study may hold; use fewer values or "
            "split it into several studies",
        )
    evaluations: dict[str, Evaluation] = {}
    for i, block in enumerate(blocks):
        for ev in _expand_block(block, i, block_place, options):
            evaluations.setdefault(ev.condition_id, ev)
    kinds = {ev.kind for ev in evaluations.values()}
    for kind in {**report.facet, **report.sweep}:
        if kind not in kinds:
            raise place.error(
                _where(place, overlay, ("report",), "report"),
                f"no [[condition]] block of kind {kind!r}{_did_you_mean(kind, kinds)}",
            )
    if report.compare:  # selectors that pick one training group each, paired by seed
        try:
            check_comparisons(
                report.compare, trainings, condition_labels(list(evaluations.values())).values()
            )
        except BinsenseError as e:
            raise place.error(_where(place, overlay, ("report",), "report"), str(e)) from None
    if report.claim:  # selectors, reference label and conditions of each claim
        labels = condition_labels(list(evaluations.values()))
        try:
            check_claims(
                report.claim,
                trainings,
                [(labels[cid], ev.kind, ev.condition.params()) for cid, ev in evaluations.items()],
            )
        except BinsenseError as e:
            raise place.error(_where(place, overlay, ("report",), "report"), str(e)) from None
    return info, trainings, list(evaluations.values()), options, report, hidden, executor


def load_study(
    path: str | os.PathLike, preset: str | None = None, *, out: str | os.PathLike | None = None
) -> Study:
    """Read, validate and expand a study file.

    Args:
        path: the TOML study file.
        preset: a ``[presets.NAME]`` to merge over the file (default: the file's
            ``study.default_preset``, else none).
        out: the study folder (default: next to the file, named after it — e.g.
            ``studies/quickstart/`` for ``studies/quickstart.toml``).

    Raises:
        StudyFileError: one line naming the file, the place and the problem.
    """
    path = Path(path)
    doc = read_toml(path)
    file = str(path)
    if not doc:  # not a silent default run of 3 epochs
        raise StudyFileError(
            f"{file}: the study file is empty; give at least a [train] table (see "
            "studies/quickstart.toml for a complete example)."
        )
    presets = doc.get("presets", {})
    if not isinstance(presets, Mapping):
        raise StudyFileError(f"{file}: [presets] must be a table of [presets.NAME] tables")
    info, trainings, evaluations, options, report, hidden, executor = _expand(doc, _Place(file), {})
    for name, overlay in presets.items():
        try:  # a preset names the report folder (report-NAME): one plain path component
            safe_child(path.parent, f"report-{name}", what=f"preset name {name!r} (report folder)")
        except BinsenseError as e:
            raise StudyFileError(f"{file}: [presets.{name}] {e}") from None
        if not isinstance(overlay, Mapping):
            raise StudyFileError(f"{file}: [presets.{name}] must be a table, got {overlay!r}")
        for key in overlay:
            if key in _RENAMED_SECTIONS:
                raise StudyFileError(
                    f"{file}: [presets.{name}]: {_RENAMED_SECTIONS[key]}; rename it"
                )
            if key not in _PRESET_SECTIONS:
                raise StudyFileError(
                    f"{file}: [presets.{name}] unknown section {key!r}"
                    f"{_did_you_mean(key, _PRESET_SECTIONS)}"
                )
        _expand(deep_merge(doc, overlay), _Place(file, name), overlay)

    chosen = preset if preset is not None else info.default_preset
    if chosen is not None:
        if chosen not in presets:
            listed = ", ".join(presets) or "none defined"
            source = "" if preset is not None else " (its study.default_preset)"
            close = nearest(chosen, presets)
            hint = f" — did you mean {close!r}?" if close else ""
            raise StudyFileError(
                f"{file}: unknown preset {chosen!r}{source} (presets: {listed}){hint}"
            )
        info, trainings, evaluations, options, report, hidden, executor = _expand(
            deep_merge(doc, presets[chosen]), _Place(file, chosen), presets[chosen]
        )
    return Study(
        path=path,
        name=info.name or path.stem,
        description=info.description,
        preset=chosen,
        presets=tuple(presets),
        trainings=tuple(trainings),
        evaluations=tuple(evaluations),
        eval=options,
        out_dir=Path(out) if out is not None else path.with_suffix(""),
        report=report,
        hidden=tuple(hidden),
        executor=executor,
    )


__all__ = [
    "MAX_GRID_POINTS",
    "CompareSpec",
    "EvalOptions",
    "Evaluation",
    "ExecutorOptions",
    "ReportOptions",
    "Study",
    "StudyFileError",
    "StudyInfo",
    "Training",
    "condition_id_for",
    "condition_labels",
    "deep_merge",
    "load_study",
    "read_toml",
    "run_id_for",
    "varying_keys",
]
