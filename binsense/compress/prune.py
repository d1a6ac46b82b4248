r"""Block pruning of binary networks, with masks during training and real removal after.

Study S3 (Nguyen & Guicquero, arXiv 2505.13462) trains its compact BNNs "with block
pruning"; only the abstract is public, so the unit, the score and the schedules below are
**binsense's choices**, documented here, never the paper's.

**Site and unit.** A *site* is a :class:`~binsense.layers.BinaryBlock` (conv -> [pool] ->
norm -> act) of a sequential recipe whose output channels reach exactly one next layer
(the next block's conv, or the classifier) through channel-wise modules only: max/average
or global pools, flatten, dropout, identity, and channel permutations (a
:class:`~binsense.layers.ChannelShuffle` or ``nn.ChannelShuffle``). A *unit* (the
"block" that is pruned) is a set of ``block_size`` output channels (a multiple of 8,
default 32, so a pruned layer keeps a channel count that suits bit-packing), balanced
over groups: every channel ``c`` falls in one *cell* ``(P(c), Q(c))``, with ``P`` its
group in the block's (grouped) conv and ``Q`` the group of the next conv that reads it
(after the shuffles); a unit takes the same ranks of every cell, ``block_size / cells``
channels from each. Removing any set of units therefore leaves every group of both convs
with the same channel count, so a grouped conv stays a grouped conv with the same
``groups``, and a channel shuffle stays the same shuffle of fewer channels. Examples: a
dense conv into a dense conv: 32 consecutive channels; a 4-group conv into a 4-group
conv without shuffle: 8 channels at the same offsets of each group; with a shuffle between
them (16 cells): 2 channels of each cell. A whole *group* is not a unit: removing one
changes ``groups`` and, through the shuffle, every group of the next conv. A site whose
channels do not split into at least two units at this ``block_size`` is not pruned
(:func:`find_sites` says why). Residual units, norms or other layers between a block and
its reader make a block no site (removal there would not be exact).

**Score** (``score``; a unit's score is the sum over its channels, the lowest are pruned
first, per site):

- ``"bn"`` (default): from the block's batch norm, whose output is
  :math:`z = \gamma \hat x + \beta` with :math:`\hat x` the standardised conv output (so
  :math:`\sigma` cancels). A sign is invariant to the scale of its input, so
  :math:`|\gamma|` alone (Network Slimming, Liu et al. ICCV 2017) says nothing about a
  BN -> sign channel; what matters is how often the sign changes. With
  :math:`\hat x \sim N(0, 1)` (a popcount of many ±1 terms), the channel's output
  differs from its usual value with probability
  :math:`s_c = \Phi(-|\beta_c| / |\gamma_c|)` (0: a constant channel, which carries no
  information; 0.5: a fair coin); for DeSign, :math:`s_c` is averaged over the kernel's
  thresholds, :math:`\Phi(-|\beta_c - g_c T_{c,p}| / |\gamma_c|)`. After ReLU, the
  identity or another activation, :math:`s_c = |\gamma_c|` (Network Slimming). Needs a
  batch norm with learned :math:`\gamma, \beta` (``bn_affine = true``);
- ``"weight"``: the mean absolute *latent* weight of the channel's filter (the filter
  L1 norm of Li et al., "Pruning filters for efficient ConvNets", ICLR 2017; for a binary
  conv, whose binary weights all have magnitude 1, how settled its signs are).

**Masks.** Pruning first masks: a masked channel's block output is forced to **zero**
(a forward hook on the block; the model keeps its shape, the masked channel's conv and
norm get no gradient). Zero, not the constant ``sign(beta)`` that a BN -> sign block with
:math:`\gamma = 0` would give: a constant ±1 channel through a zero-padded 3x3 conv adds
a different amount at the image border than inside, which no per-channel bias of the next
layer can absorb, while a zero channel adds nothing anywhere. The next layer reads the
masked channel only through a linear conv / linear layer (a binary layer that binarises
its own input, ``input_quantizer``, or scales its weights by mean |W|, ``scale``, is
refused), so removing the channel is the same function. A mask is a non-persistent
buffer ``prune_mask`` on its block (the state dict does not change): a checkpoint stores
``masks_to_state(masks_of(model))`` and a resumed run re-attaches it with
:func:`apply_masks` before its first step (in a training, the trainer's pruning callback,
:class:`binsense.train.callbacks.PruneCallback`, does both).

**Schedules.** One-shot then fine-tune: :func:`prune` masks a target sparsity (fraction
of each site's units) at once; train on with the masks held (they stay attached), or
:func:`remove_pruned` first and train the smaller model. Gradual:
:class:`PruningSchedule` is an after-step hook ``(model, step)`` that raises
the sparsity along the cubic ramp of Zhu & Gupta ("To prune, or not to prune", 2017),
:math:`s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(t_1 - t_0))^3`, every ``every`` steps
between ``begin_step`` and ``end_step``. Pruned units stay pruned (each update adds the
lowest-scoring kept units), so the masks only grow (keep one ``block_size`` per model:
a unit counts as pruned when all its channels are masked). In a training it runs in
:class:`binsense.train.callbacks.PruneCallback` (the config's ``prune``, or
``Hooks(callbacks=[PruneCallback(schedule)])``), which also saves the masks in each
checkpoint, restores them on resume and removes the pruned units at the end.

**Real removal.** :func:`remove_pruned` returns a copy with smaller tensors: the
block's conv rows (and bias), its norm's parameters and statistics, and the next layer's
input channels (through shuffles, and through flatten / global pooling into a linear
layer). DeSign needs no change for a 2-D kernel; a 3-D kernel (``F`` slices, channel
``c`` uses slice ``c mod F``) keeps every channel's slice only if the removed channels
come in aligned runs of ``F``, so a site where a unit is not such a union is not pruned
(:func:`find_sites` gives the reason; :func:`remove_pruned` refuses such a mask). In eval
mode the removed model's outputs equal the masked model's **exactly**
(``torch.equal``) wherever the next layer is binary (±1 weights on ±1 / 0 inputs: integer
sums, whatever the order) — every site of ``compact_bnn`` with ``head = "binary"``.
Where a removed channel fed a *float* layer (a float head, a float twin) the result is the
same function, but the float sum over fewer terms may round differently in the last bit.

**Checkpoints.** The removed model carries ``model.prune_plan``: site name -> the kept
channel indices of the *unpruned* model (JSON-friendly; pruning a pruned model composes
the plans). Store it next to the state dict; :func:`build_pruned` rebuilds the smaller
shape from the model name, options and plan, and the state dict loads into it.

**Why not torch-pruning.** ``torch-pruning`` 1.6.1 was tried on ``compact_bnn`` (width
0.5, 25 % of channels by L1 magnitude; its removed model compared, in eval mode, with the
original whose removed channels were zeroed). It is exact for dense and for grouped
binary convs without a shuffle, but with a channel shuffle (view / transpose / reshape)
it removes the wrong input channels of the next conv (logits off by up to ~1000), and it
keeps a 3-D DeSign kernel's channel-to-slice map unchanged (logits off by ~200). It also
has no zero-mask training mode and does not know the binary layers' limits (input
quantizers, XNOR scales). So binsense does the removal itself, here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from binsense.errors import BinsenseError
from binsense.layers.binary import is_binary_layer
from binsense.layers.block import BinaryBlock
from binsense.layers.design import DeSign
from binsense.layers.norm import ChannelAffine
from binsense.quant.sign import SignQuantizer

Score = Literal["bn", "weight"]
#: A pruning plan: site name -> kept channel indices of the unpruned model.
PrunePlan = dict[str, list[int]]

SCORES: tuple[str, ...] = ("bn", "weight")
_PASSTHROUGH = (
    nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Flatten,
)  # fmt: skip
_ELEMENTWISE_ACTS = (
    SignQuantizer, DeSign, nn.Identity, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.Tanh,
)  # fmt: skip


# ------------------------------------------------------------------------------ sites


@dataclass
class Site:
    """A prunable block and what reads its output channels (module docstring).

    ``perm[c]``: the reader's input channel of the block's channel ``c`` (after the
    shuffles); ``factor``: the reader's inputs per channel (``H*W`` after a flatten into a
    linear layer, else 1); ``units``: the channel indices of each unit at the block size
    asked (empty when the site cannot be pruned, with ``reason``).
    """

    name: str
    block: BinaryBlock
    channels: int
    reader_name: str = ""
    reader: nn.Module | None = None
    shuffles: list[nn.Module] = field(default_factory=list)
    perm: Tensor | None = None
    factor: int = 1
    units: list[Tensor] = field(default_factory=list)
    reason: str = ""

    @property
    def prunable(self) -> bool:
        return len(self.units) >= 2


def _chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model as one sequence of leaf modules in forward order (nested ``Sequential``
    containers expanded; a recipe model's encoder is left out: it is never pruned)."""
    out: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, m: nn.Module) -> None:
        if isinstance(m, nn.Sequential):
            for n, c in m.named_children():
                walk(f"{prefix}.{n}" if prefix else n, c)
        else:
            out.append((prefix, m))

    if hasattr(model, "blocks") and hasattr(model, "head") and hasattr(model, "encoder"):
        walk("blocks", model.blocks)
        walk("head", model.head)
    else:
        walk("", model)
    return out


def _permutation(m: nn.Module, channels: int) -> Tensor | None:
    if hasattr(m, "channel_permutation"):
        return m.channel_permutation(channels)
    if isinstance(m, nn.ChannelShuffle):
        g, c = m.groups, torch.arange(channels)
        return (c % (channels // g)) * g + c // (channels // g)
    return None


def _reader_layer(m: nn.Module) -> nn.Module | None:
    layer = m.conv if isinstance(m, BinaryBlock) else m
    return layer if isinstance(layer, (nn.Conv2d, nn.Linear)) else None


def _out_channels(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def _in_channels(layer: nn.Module) -> int:
    return layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features


def _groups(layer: nn.Module) -> int:
    return layer.groups if isinstance(layer, nn.Conv2d) else 1


def _producer_problem(block: BinaryBlock) -> str:
    if not isinstance(block.conv, (nn.Conv2d, nn.Linear)):
        return f"its layer is a {type(block.conv).__name__}, not a conv or linear layer"
    if not isinstance(block.norm, (_BatchNorm, ChannelAffine, nn.Identity)):
        return f"its norm is a {type(block.norm).__name__}"
    if not isinstance(block.act, _ELEMENTWISE_ACTS):
        return f"its activation is a {type(block.act).__name__}"
    if block.pool is not None and any(True for _ in block.pool.parameters()):
        return "its pool has parameters"
    return ""


def _reader_problem(layer: nn.Module) -> str:
    if is_binary_layer(layer) and layer.input_quantizer is not None:
        return "the next layer binarises its input (a zero channel would read as +1)"
    if is_binary_layer(layer) and layer.scale:
        return "the next layer scales its weights by mean |W| (it changes with its inputs)"
    return ""


def _structure(model: nn.Module) -> dict[str, Site]:
    """Every block of the chain, with its reader (or the reason it has none)."""
    chain = _chain(model)
    sites: dict[str, Site] = {}
    for i, (name, m) in enumerate(chain):
        if not isinstance(m, BinaryBlock) or name.startswith("head"):
            continue
        site = Site(name, m, 0)
        sites[name] = site
        site.reason = _producer_problem(m)
        if site.reason:
            continue
        site.channels = c = _out_channels(m.conv)
        perm, flattened = torch.arange(c), False
        for rname, r in chain[i + 1 :]:
            layer = _reader_layer(r)
            if layer is not None:
                site.reader_name, site.reader = rname, layer
                break
            p = _permutation(r, c)
            if p is not None:
                if flattened:
                    site.reason = f"a channel permutation ({rname}) follows a flatten"
                    break
                perm = p[perm]
                site.shuffles.append(r)
            elif isinstance(r, _PASSTHROUGH) or getattr(r, "prune_passthrough", False):
                flattened |= isinstance(r, nn.Flatten)
            else:
                site.reason = f"its output goes through {rname} ({type(r).__name__})"
                break
        if site.reader is None:
            site.reason = site.reason or "nothing reads its output"
            continue
        site.reason = _reader_problem(site.reader)
        site.perm = perm
        cin = _in_channels(site.reader)
        if isinstance(site.reader, nn.Conv2d):
            if cin != c:
                site.reason = f"{site.reader_name} reads {cin} channels, the block gives {c}"
        elif cin % c:
            site.reason = f"{site.reader_name} reads {cin} features from {c} channels"
        else:
            site.factor = cin // c
    return sites


def _cells(site: Site) -> list[Tensor]:
    """The channels of each (block group, reader group) cell, cells in order."""
    c = site.channels
    gp, gc = _groups(site.block.conv), _groups(site.reader)
    p = torch.arange(c) // (c // gp)
    q = site.perm // (c // gc) if isinstance(site.reader, nn.Conv2d) else torch.zeros_like(p)
    keys = p * gc + q
    return [torch.nonzero(keys == k).flatten() for k in torch.unique(keys)]


def _design_slices(block: BinaryBlock) -> int:
    return block.act.kernel.shape[0] if isinstance(block.act, DeSign) else 1


def _aligned(channels: Tensor, total: int, f: int) -> bool:
    """Whether ``channels`` is a union of aligned runs of ``f`` channels."""
    if f == 1:
        return True
    hit = torch.zeros(math.ceil(total / f) * f, dtype=torch.bool)
    hit[channels] = True
    rows = hit.view(-1, f)
    return bool((rows.all(1) | ~rows.any(1)).all())


def _units(site: Site, block_size: int) -> None:
    cells = _cells(site)
    sizes = {len(x) for x in cells}
    n = len(cells)
    if len(sizes) != 1:
        site.reason = "its channels fall unevenly into the groups of the two convs"
        return
    m = sizes.pop()
    if block_size % n:
        site.reason = (
            f"block_size {block_size} is not a multiple of its {n} (group, next group) cells"
        )
        return
    r = block_size // n
    if m % r or m // r < 2:
        site.reason = (
            f"its {site.channels} channels do not split into two or more units of "
            f"{block_size} ({n} cells of {m}, {r} per cell)"
        )
        return
    units = [torch.cat([x[u * r : (u + 1) * r] for x in cells]).sort().values
             for u in range(m // r)]  # fmt: skip
    f = _design_slices(site.block)
    if not all(_aligned(u, site.channels, f) for u in units):
        site.reason = (
            f"its DeSign kernel has {f} slices (channel c uses slice c mod {f}) and a unit "
            f"of {block_size} is not made of aligned runs of {f} channels; use another "
            "block_size or a 2-D kernel"
        )
        return
    site.units = units


def _check_block_size(block_size: int) -> None:
    if not isinstance(block_size, int) or block_size < 8 or block_size % 8:
        raise BinsenseError(f"block_size must be a positive multiple of 8, got {block_size!r}.")


def find_sites(model: nn.Module, block_size: int = 32) -> dict[str, Site]:
    """Every block of ``model`` with its pruning units at ``block_size`` (empty units and
    a ``reason`` where it cannot be pruned); see the module docstring."""
    _check_block_size(block_size)
    sites = _structure(model)
    for site in sites.values():
        if not site.reason:
            _units(site, block_size)
    return sites


def _chosen(model: nn.Module, block_size: int, names: Sequence[str] | None) -> dict[str, Site]:
    sites = find_sites(model, block_size)
    if names is None:
        chosen = {n: s for n, s in sites.items() if s.prunable}
        if not chosen:
            why = "; ".join(f"{n}: {s.reason}" for n, s in sites.items()) or "it has no blocks"
            raise BinsenseError(f"no block of this model can be pruned exactly ({why}).")
        return chosen
    out = {}
    for n in names:
        if n not in sites:
            raise BinsenseError(f"no prunable block {n!r} (blocks: {', '.join(sites)}).")
        if not sites[n].prunable:
            raise BinsenseError(f"block {n!r} cannot be pruned: {sites[n].reason}.")
        out[n] = sites[n]
    return out


# ------------------------------------------------------------------------------ scores


def channel_scores(block: BinaryBlock, score: Score = "bn") -> Tensor:
    """Per-output-channel importance of ``block`` (module docstring), float64."""
    if score == "weight":
        w = block.conv.weight.detach().double()
        return w.abs().flatten(1).mean(1)
    if score != "bn":
        raise BinsenseError(f"unknown pruning score {score!r} (valid: {', '.join(SCORES)}).")
    bn = block.norm
    if not isinstance(bn, _BatchNorm) or not bn.affine:
        found = "a batch norm without affine" if isinstance(bn, _BatchNorm) else type(bn).__name__
        raise BinsenseError(
            "score = 'bn' needs a batch norm with learned gamma and beta after the block's "
            f"conv (found {found}); use score = 'weight'."
        )
    gamma, beta = bn.weight.detach().double(), bn.bias.detach().double()
    act = block.act
    if isinstance(act, SignQuantizer | DeSign):
        shift = beta.view(-1, 1)
        if isinstance(act, DeSign):
            k = act.kernel.detach().double()
            c = torch.arange(gamma.numel()) % k.shape[0]
            g = gamma.view(-1, 1) if act.coupled_bn is not None else torch.ones_like(shift)
            shift = shift - g * k[c].flatten(1)
        ratio = shift.abs() / gamma.abs().view(-1, 1).clamp_min(1e-300)
        s = torch.special.ndtr(-ratio).mean(1)
        return torch.where(gamma == 0, torch.zeros_like(s), s)
    return gamma.abs()


# ------------------------------------------------------------------------------ masks


class _MaskHook:
    """Forward hook: the block's output with its masked channels set to zero."""

    def __call__(self, module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        mask = module.prune_mask
        return output.masked_fill(~mask.view((1, -1) + (1,) * (output.dim() - 2)), 0.0)


def _blocks_by_name(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Attach channel masks (site name -> bool tensor, ``True`` = kept) to ``model``'s
    blocks: masked channels output zero from now on (a non-persistent ``prune_mask``
    buffer and a forward hook; the state dict is unchanged). Replaces earlier masks of
    the same blocks."""
    modules = _blocks_by_name(model)
    for name, mask in masks.items():
        block = modules.get(name)
        if not isinstance(block, BinaryBlock):
            raise BinsenseError(f"no block {name!r} to mask in this model.")
        c = _out_channels(block.conv)
        mask = torch.as_tensor(mask, dtype=torch.bool).flatten()
        if mask.numel() != c:
            raise BinsenseError(f"mask of {name!r} has {mask.numel()} entries, the block {c}.")
        mask = mask.to(block.conv.weight.device)
        if "prune_mask" in block._buffers:
            block.prune_mask = mask
        else:
            block.register_buffer("prune_mask", mask, persistent=False)
        if not any(isinstance(h, _MaskHook) for h in block._forward_hooks.values()):
            block.register_forward_hook(_MaskHook())


def clear_masks(model: nn.Module) -> None:
    """Remove every pruning mask (and its hook) from ``model``."""
    for m in model.modules():
        if "prune_mask" in m._buffers:
            del m._buffers["prune_mask"]
            for key in [k for k, h in m._forward_hooks.items() if isinstance(h, _MaskHook)]:
                del m._forward_hooks[key]


def masks_of(model: nn.Module) -> dict[str, Tensor]:
    """The masks attached to ``model`` (site name -> bool tensor on the CPU)."""
    return {n: m.prune_mask.detach().cpu().clone() for n, m in model.named_modules()
            if "prune_mask" in m._buffers}  # fmt: skip


def masks_to_state(masks: Mapping[str, Tensor]) -> dict[str, list[bool]]:
    """Masks as plain lists (for a checkpoint or JSON); :func:`masks_from_state` reverses."""
    return {n: [bool(v) for v in m.tolist()] for n, m in masks.items()}


def masks_from_state(state: Mapping[str, Sequence[bool]]) -> dict[str, Tensor]:
    return {n: torch.tensor(list(v), dtype=torch.bool) for n, v in state.items()}


def pruned_fraction(
    model: nn.Module, block_size: int = 32, masks: Mapping[str, Tensor] | None = None
) -> dict[str, float]:
    """Per site, the fraction of its units that are fully masked."""
    masks = masks_of(model) if masks is None else masks
    out = {}
    for name, site in find_sites(model, block_size).items():
        if site.prunable:
            keep = masks.get(name)
            gone = 0 if keep is None else sum(not bool(keep[u].any()) for u in site.units)
            out[name] = gone / len(site.units)
    return out


def _units_to_prune(n: int, fraction: float) -> int:
    return min(n - 1, math.floor(fraction * n + 0.5))


def select_masks(
    model: nn.Module,
    fraction: float,
    *,
    block_size: int = 32,
    score: Score = "bn",
    sites: Sequence[str] | None = None,
    masks: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Masks pruning ``round(fraction * units)`` units of each site (at least one unit
    kept), the lowest-scoring first, on top of ``masks`` (default: those attached):
    pruned units stay pruned. Does not attach them (:func:`apply_masks`)."""
    if not (isinstance(fraction, (int, float)) and 0 <= fraction < 1):
        raise BinsenseError(f"pruning sparsity must be in [0, 1), got {fraction!r}.")
    current = masks_of(model) if masks is None else dict(masks)
    out: dict[str, Tensor] = {}
    for name, site in _chosen(model, block_size, sites).items():
        keep = current.get(name)
        keep = torch.ones(site.channels, dtype=torch.bool) if keep is None else keep.clone()
        n = len(site.units)
        gone = {u for u in range(n) if not bool(keep[site.units[u]].any())}
        want = _units_to_prune(n, float(fraction))
        if want > len(gone):
            s = channel_scores(site.block, score).cpu()
            alive = [u for u in range(n) if u not in gone]
            alive.sort(key=lambda u: (float(s[site.units[u]].sum()), u))
            for u in alive[: want - len(gone)]:
                keep[site.units[u]] = False
        out[name] = keep
    return out


def prune(
    model: nn.Module,
    fraction: float,
    *,
    block_size: int = 32,
    score: Score = "bn",
    sites: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """One-shot pruning: mask ``fraction`` of every site's units now (module docstring)
    and attach the masks; returns them. Fine-tune next, masked or after
    :func:`remove_pruned`."""
    masks = select_masks(model, fraction, block_size=block_size, score=score, sites=sites)
    apply_masks(model, masks)
    return masks


@dataclass
class PruningSchedule:
    """Gradual pruning as a trainer after-step hook: ``PruningSchedule(...)(model, step)``.

    The sparsity (fraction of each site's units) follows Zhu & Gupta's cubic ramp from
    ``initial`` at ``begin_step`` to ``target`` at ``end_step``, updated every ``every``
    steps and at ``end_step``; ``begin_step == end_step`` prunes once (one-shot, then the
    masks are held while training goes on). The masks live on the model
    (:func:`masks_of`): to resume, re-attach them from the checkpoint with
    :func:`apply_masks` before the first step (the trainer's
    :class:`binsense.train.callbacks.PruneCallback` does that; a bare after-step hook's
    masks are not checkpointed).
    """

    target: float
    begin_step: int = 0
    end_step: int = 0
    every: int = 100
    initial: float = 0.0
    block_size: int = 32
    score: Score = "bn"
    sites: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.initial <= self.target < 1:
            raise BinsenseError(
                f"pruning needs 0 <= initial <= target < 1, got initial={self.initial}, "
                f"target={self.target}."
            )
        if not 0 <= self.begin_step <= self.end_step or self.every < 1:
            raise BinsenseError(
                "pruning needs 0 <= begin_step <= end_step and every >= 1, got "
                f"{self.begin_step}, {self.end_step}, {self.every}."
            )
        if self.score not in SCORES:
            raise BinsenseError(f"unknown pruning score {self.score!r} (valid: bn, weight).")
        _check_block_size(self.block_size)

    def sparsity_at(self, step: int) -> float:
        """The scheduled sparsity after ``step`` optimizer steps."""
        if step < self.begin_step:
            return 0.0
        if step >= self.end_step:
            return self.target
        t = (step - self.begin_step) / (self.end_step - self.begin_step)
        return self.target + (self.initial - self.target) * (1 - t) ** 3

    def __call__(self, model: nn.Module, step: int) -> None:
        if step < self.begin_step:
            return
        if step > self.end_step and masks_of(model):
            return  # ramp done; the masks are held by the model
        if step < self.end_step and (step - self.begin_step) % self.every:
            return
        masks = select_masks(
            model, self.sparsity_at(step), block_size=self.block_size, score=self.score,
            sites=self.sites,
        )  # fmt: skip
        apply_masks(model, masks)


# ------------------------------------------------------------------------------ removal


def _param(old: Tensor, new: Tensor) -> nn.Parameter:
    return nn.Parameter(new.detach().clone(), requires_grad=old.requires_grad)


def _keep_rows(layer: nn.Module, kept: Tensor) -> None:
    layer.weight = _param(layer.weight, layer.weight[kept])
    if layer.bias is not None:
        layer.bias = _param(layer.bias, layer.bias[kept])
    if isinstance(layer, nn.Conv2d):
        layer.out_channels = kept.numel()
    else:
        layer.out_features = kept.numel()


def _keep_norm(norm: nn.Module, kept: Tensor) -> None:
    if isinstance(norm, _BatchNorm):
        if norm.affine:
            norm.weight = _param(norm.weight, norm.weight[kept])
            norm.bias = _param(norm.bias, norm.bias[kept])
        if norm.running_mean is not None:
            norm.running_mean = norm.running_mean[kept].clone()
            norm.running_var = norm.running_var[kept].clone()
        norm.num_features = kept.numel()
    elif isinstance(norm, ChannelAffine):
        norm.scale = _param(norm.scale, norm.scale[kept])
        norm.shift = _param(norm.shift, norm.shift[kept])


def _balanced(groups_of: Tensor, groups: int, what: str, name: str) -> None:
    counts = torch.bincount(groups_of, minlength=groups)
    if len(set(counts.tolist())) != 1:
        raise BinsenseError(
            f"the mask of {name!r} keeps {counts.tolist()} channels in the groups of {what}; "
            "a grouped conv needs the same count in every group (prune whole units, "
            "select_masks / prune)."
        )


def _keep_inputs(site: Site, kept: Tensor) -> None:
    layer, c = site.reader, site.channels
    pos = site.perm[kept].sort().values  # the reader's kept input channels
    if isinstance(layer, nn.Conv2d):
        g = layer.groups
        per_in, per_out = c // g, layer.out_channels // g
        _balanced(pos // per_in, g, f"the next conv ({site.reader_name})", site.name)
        local = (pos % per_in).view(g, -1)
        w = layer.weight
        new = torch.cat([w[k * per_out : (k + 1) * per_out][:, local[k]] for k in range(g)])
        layer.weight = _param(w, new)
        layer.in_channels = pos.numel()
    else:
        f = site.factor
        feats = (pos.view(-1, 1) * f + torch.arange(f)).flatten()
        layer.weight = _param(layer.weight, layer.weight[:, feats])
        layer.in_features = feats.numel()


def _remove_site(site: Site, keep: Tensor) -> Tensor:
    c = site.channels
    keep = torch.as_tensor(keep, dtype=torch.bool).flatten().cpu()
    if keep.numel() != c:
        raise BinsenseError(f"mask of {site.name!r} has {keep.numel()} entries, the block {c}.")
    kept = torch.nonzero(keep).flatten()
    if kept.numel() == 0:
        raise BinsenseError(f"the mask of {site.name!r} removes every channel; keep one unit.")
    if kept.numel() == c:
        return kept
    gp = _groups(site.block.conv)
    _balanced(kept // (c // gp), gp, "its own conv", site.name)
    f = _design_slices(site.block)
    if f > 1 and not bool(((kept - torch.arange(kept.numel())) % f == 0).all()):
        raise BinsenseError(
            f"removing these channels of {site.name!r} would move channels to another slice "
            f"of its {f}-slice DeSign kernel; remove aligned runs of {f} channels."
        )
    for shuffle in site.shuffles:  # the induced order must be the same shuffle of fewer
        p = _permutation(shuffle, c)
        kept_pos = p[kept]
        induced = torch.argsort(torch.argsort(kept_pos))
        fresh = _permutation(shuffle, kept.numel())
        if not torch.equal(induced, fresh):
            raise BinsenseError(
                f"removing these channels of {site.name!r} breaks the channel shuffle after "
                "it; remove whole units (select_masks / prune)."
            )
    _keep_inputs(site, kept)  # before the rows: _keep_inputs reads the old sizes
    _keep_rows(site.block.conv, kept)
    _keep_norm(site.block.norm, kept)
    return kept


def remove_pruned(model: nn.Module, masks: Mapping[str, Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` without its masked channels: smaller tensors, same function.

    ``masks``: site name -> bool tensor (``True`` = kept); default: the masks attached
    to ``model``. The copy has no masks, and ``copy.prune_plan`` holds the kept channels
    of the unpruned model (composed with ``model.prune_plan`` if it was pruned before).
    See the module docstring for what is removed and when the outputs are bit-exact.
    """
    masks = masks_of(model) if masks is None else dict(masks)
    new = copy.deepcopy(model)
    clear_masks(new)
    sites = _structure(new)
    plan: PrunePlan = {k: list(v) for k, v in (getattr(model, "prune_plan", None) or {}).items()}
    for name, keep in masks.items():
        site = sites.get(name)
        if site is None:
            raise BinsenseError(f"no block {name!r} in this model (blocks: {', '.join(sites)}).")
        if site.reason:
            raise BinsenseError(f"block {name!r} cannot be pruned exactly: {site.reason}.")
        with torch.no_grad():
            kept = _remove_site(site, keep)
        old = plan.get(name, list(range(site.channels)))
        plan[name] = [old[i] for i in kept.tolist()]
    new.prune_plan = plan
    return new


def masks_from_plan(model: nn.Module, plan: Mapping[str, Sequence[int]]) -> dict[str, Tensor]:
    """The masks of an (unpruned) ``model`` that keep the channels of ``plan``."""
    modules = _blocks_by_name(model)
    masks = {}
    for name, kept in plan.items():
        block = modules.get(name)
        if not isinstance(block, BinaryBlock):
            raise BinsenseError(f"the pruning plan names {name!r}, which is not a block here.")
        c = _out_channels(block.conv)
        idx = torch.as_tensor(list(kept), dtype=torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= c):
            raise BinsenseError(f"the pruning plan of {name!r} names channels beyond {c}.")
        mask = torch.zeros(c, dtype=torch.bool)
        mask[idx] = True
        masks[name] = mask
    return masks


def build_pruned(
    name: str, info: Any, options: Mapping[str, Any], plan: Mapping[str, Sequence[int]]
) -> nn.Module:
    """Model ``name`` (``build_model(name, info, **options)``) at the smaller shape of
    ``plan`` (a pruned model's ``prune_plan``), ready for its pruned state dict."""
    from binsense.models import build_model

    model = build_model(name, info, **dict(options))
    return remove_pruned(model, masks_from_plan(model, plan))


__all__ = [
    "SCORES",
    "PrunePlan",
    "PruningSchedule",
    "Site",
    "apply_masks",
    "build_pruned",
    "channel_scores",
    "clear_masks",
    "find_sites",
    "masks_from_plan",
    "masks_from_state",
    "masks_of",
    "masks_to_state",
    "prune",
    "remove_pruned",
    "pruned_fraction",
    "select_masks",
]
