r"""Designing DeSign kernels: score every candidate dither kernel on real images.

The authors of DeSign (Monroy et al., IEEE JSTSP 2024; code ``bemc22/DeSign``,
``Custom_Dither/``) chose the kernel by simulating one binary layer on real images and
ranking all integer kernels. The simulation (:func:`simulate_feature_maps`,
:func:`dither_binarize`), per image:

1. grayscale in [0, 1] (:func:`to_grayscale`: MATLAB ``rgb2gray`` weights), binarised at
   0.5 to ±1 (``> 0.5`` -> +1, else -1);
2. a 3x3 random ±1 binary convolution, 'same' size with symmetric padding (for a 1-pixel
   border MATLAB's ``'symmetric'`` is edge replication), then ReLU: the values are the
   *levels* {0, 1, 3, 5, 7, 9} (an odd sum of nine ±1, clipped at 0);
3. subtract the integer kernel tiled from the top-left corner and binarise (``> 0`` ->
   +1, else -1, as the authors' ``binarize(proposed, 0)``).

Every candidate kernel (all :math:`6^{mn}` kernels of ``levels``: 1296 for 2x2) is scored
by (:func:`score_kernels`):

- **tv**: total variation of the ±1 output, the mean over pixels of
  :math:`\sqrt{d_x^2 + d_y^2}` with forward differences (the authors' ``tv.m``). We take
  the mean over the :math:`(H-1)(W-1)` pixels that have both a right and a lower neighbour;
  ``tv.m`` adds ``dx(:)`` (``H x (W-1)``) to ``dy(:)`` (``(H-1) x W``) element by element,
  which pairs differences of different pixels (column-major order), so its numbers
  differ slightly from ours;
- **psnr** (dB) and **mse** of the output mapped to [0, 1] (``(y + 1) / 2``) against the
  grayscale input image (binsense's choice; per image, then averaged; PSNR capped at 100
  dB for a perfect match).

All scores are averaged over the images *and* over ``conv_kernels`` seeded random binary
convolutions (binsense's choice; the authors used one random kernel). Conv orientation:
cross-correlation (MATLAB's ``conv2`` flips the kernel, immaterial for random kernels).

Computation: every score is a sum over pixels of a function of the pixel's (and, for TV,
its two neighbours') level and the kernel entries at their position classes
:math:`(i \bmod m, j \bmod n)`. So the images are reduced once to level histograms per
position class, and each candidate costs a few hundred multiply-adds, independent of the
number of images: all 1296 2x2 kernels on 200 CIFAR images take well under a second.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from binsense.errors import BinsenseError, unknown_name
from binsense.io import atomic_write
from binsense.layers.design import DESIGN_KERNELS, design_kernel_names, design_thresholds

RELU_LEVELS = (0, 1, 3, 5, 7, 9)
"""Values of ReLU(3x3 binary conv of ±1 inputs): the integer design levels."""

REFERENCE_KERNEL = ((1, 1), (3, 3))
"""The reference 2x2 kernel (integer levels): binsense's ``"2x2"``, the authors'
``threshold_2x2_v2`` (see :mod:`binsense.layers.design` for ``2x2_v1``)."""

CRITERIA: dict[str, bool] = {"tv": False, "psnr": True, "mse": False}
"""Criterion -> whether higher is better (rank 1 = best). TV: lower is better (see
:func:`score_kernels`)."""

MAX_CANDIDATES = 1_000_000
"""Largest candidate set :func:`score_kernels` enumerates by itself."""

_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # MATLAB rgb2gray


def to_grayscale(images: Tensor) -> Tensor:
    """Images (uint8 or [0, 1]) as grayscale float64 ``(N, H, W)`` in [0, 1].

    Accepts ``(N, C, H, W)``, ``(N, H, W)`` or ``(H, W)``; RGB uses MATLAB ``rgb2gray``
    weights, one channel is taken as is.
    """
    x = torch.as_tensor(images)
    x = x.double() / 255.0 if x.dtype == torch.uint8 else x.double()
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() == 4:
        if x.shape[1] == 3:
            w = torch.tensor(_GRAY_WEIGHTS, dtype=x.dtype).view(1, 3, 1, 1)
            x = (x * w).sum(1)
        elif x.shape[1] == 1:
            x = x[:, 0]
        else:
            raise BinsenseError(f"expected 1 or 3 channels, got {x.shape[1]}.")
    if x.dim() != 3:
        raise BinsenseError(f"expected images [N, C, H, W], got shape {tuple(x.shape)}.")
    return x


def random_binary_kernels(count: int, seed: int = 0) -> Tensor:
    """``count`` random ±1 3x3 kernels, ``(count, 3, 3)`` float64, from ``seed`` only."""
    if count < 1:
        raise BinsenseError(f"need at least one binary conv kernel, got {count}.")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (count, 3, 3), generator=g).double() * 2 - 1


def simulate_feature_maps(images: Tensor, conv_kernels: int | Tensor = 8, seed: int = 0) -> Tensor:
    """ReLU(binary 3x3 conv(sign(gray - 0.5))): levels in {0, 1, 3, 5, 7, 9}.

    ``images`` as for :func:`to_grayscale`; ``conv_kernels`` a count of seeded random ±1
    kernels or a ``(K, 3, 3)`` ±1 tensor. Returns float64 ``(N, K, H, W)``.
    """
    gray = to_grayscale(images)
    k = (
        random_binary_kernels(conv_kernels, seed)
        if isinstance(conv_kernels, int)
        else torch.as_tensor(conv_kernels, dtype=torch.float64)
    )
    if k.dim() != 3 or k.shape[1:] != (3, 3) or not bool((k.abs() == 1).all()):
        raise BinsenseError("conv_kernels must be a count or a (K, 3, 3) tensor of ±1.")
    binary = torch.where(gray > 0.5, 1.0, -1.0).to(torch.float64).unsqueeze(1)
    padded = F.pad(binary, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, k.unsqueeze(1)).clamp_min(0.0)


def dither_binarize(features: Tensor, kernel: Tensor | Sequence) -> Tensor:
    """The authors' rule: +1 where ``features - tiled kernel > 0``, else -1 (``(..., H, W)``)."""
    k = torch.as_tensor(kernel, dtype=features.dtype)
    t = design_thresholds(k.unsqueeze(0), 1, *features.shape[-2:])[0]
    return torch.where(features - t > 0, 1.0, -1.0).to(features.dtype)


def _kernel_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``(m, n)`` of a kernel size ``m`` or ``(m, n)``; each an integer >= 1."""
    if isinstance(size, int):
        pair: tuple = (size, size)
    else:
        pair = tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
        raise BinsenseError(
            f"kernel size must be an integer >= 1 (e.g. --size 2 for 2x2), got {size!r}."
        )
    return pair


def candidate_kernels(
    size: int | tuple[int, int] = 2, levels: Sequence[float] = RELU_LEVELS
) -> Tensor:
    """Every ``m x n`` kernel over ``levels`` (row-major, in ``itertools.product`` order)."""
    m, n = _kernel_size(size)
    count = len(levels) ** (m * n)
    if count > MAX_CANDIDATES:
        raise BinsenseError(
            f"{len(levels)}^{m * n} = {count:,} candidate {m}x{n} kernels is too many to "
            "enumerate; pass an explicit candidates tensor (K, m, n)."
        )
    grid = torch.tensor(list(itertools.product(levels, repeat=m * n)), dtype=torch.float64)
    return grid.view(-1, m, n)


def equivalent_kernels(kernel: Tensor | Sequence) -> list[tuple[tuple[float, ...], ...]]:
    """Kernels equivalent to ``kernel`` under the square's symmetries and cyclic shifts.

    Shifting a tiled kernel moves the pattern by a pixel; flips and transposes mirror it.
    Returned as nested tuples (the kernel itself first), duplicates removed.
    """
    k = torch.as_tensor(kernel, dtype=torch.float64)
    m, n = k.shape
    seen: dict[tuple, None] = {}
    for t in (False, True):
        base = k.T if t else k
        for fv, fh in itertools.product((False, True), repeat=2):
            flipped = base.flip(0) if fv else base
            flipped = flipped.flip(1) if fh else flipped
            for a, b in itertools.product(range(flipped.shape[0]), range(flipped.shape[1])):
                s = flipped.roll((a, b), (0, 1))
                if s.shape == (m, n):
                    seen[_key(s)] = None
    keys = list(seen)
    first = _key(k)
    return [first] + [x for x in keys if x != first]


def named_kernel(name: str, size: int | tuple[int, int] = 2) -> tuple[tuple[float, ...], ...]:
    """The integer-level kernel a trained model names (``model_options.design``), as the
    search scores it: a preset of :data:`~binsense.layers.design.DESIGN_KERNELS`, or
    ``"sign"``, the all-zero kernel (the plain sign: every threshold at level 0). So a
    study's trained gains can be set beside the search's ranks of the same kernels.

    Raises:
        BinsenseError: an unknown name (with the names), or a kernel that is not
            ``size`` x ``size`` (e.g. a 3-D kernel; the search scores 2-D ones).
    """
    m, n = _kernel_size(size)
    if name == "sign":
        return _key(torch.zeros(m, n, dtype=torch.float64))
    if name not in DESIGN_KERNELS:
        known = ", ".join(["sign", *design_kernel_names()])
        raise BinsenseError(f"unknown DeSign kernel {name!r}; the names: {known}.")
    k = torch.as_tensor(DESIGN_KERNELS.get(name), dtype=torch.float64)
    if tuple(k.shape) != (m, n):
        raise BinsenseError(
            f"DeSign kernel {name!r} has shape {tuple(k.shape)}, and the search scores "
            f"{m}x{n} kernels (--size {m}); name a {m}x{n} kernel or sign."
        )
    return _key(k)


def _key(k: Tensor) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(_num(v) for v in row) for row in k.tolist())


def kernel_text(kernel: Tensor | Sequence) -> str:
    """``[[1, 1], [3, 3]]``: a 2-D kernel as text, integral values without decimals."""
    return str([list(row) for row in _key(torch.as_tensor(kernel, dtype=torch.float64))])


def _num(v: float) -> float:
    return int(v) if float(v).is_integer() else v


@dataclass(frozen=True)
class KernelScore:
    """One candidate's scores and 1-based ranks (1 = best; ties share the best rank)."""

    kernel: tuple[tuple[float, ...], ...]
    tv: float
    psnr: float
    mse: float
    rank_tv: int
    rank_psnr: int
    rank_mse: int

    def as_dict(self) -> dict:
        d = asdict(self)
        d["kernel"] = [list(r) for r in self.kernel]
        return d


def _ranks(scores: Tensor, higher_is_better: bool) -> Tensor:
    s = scores if not higher_is_better else -scores
    ordered, _ = torch.sort(s)
    return torch.searchsorted(ordered, s, right=False) + 1


@dataclass
class KernelRanking:
    """Scores of every candidate kernel (tensors indexed by candidate).

    ``kernels`` ``(K, m, n)``; ``tv``, ``psnr``, ``mse`` ``(K,)`` float64; ``images`` and
    ``conv_kernels`` count what the scores average over.
    """

    kernels: Tensor
    tv: Tensor
    psnr: Tensor
    mse: Tensor
    images: int
    conv_kernels: int

    def __len__(self) -> int:
        return self.kernels.shape[0]

    def scores(self, criterion: str) -> Tensor:
        return getattr(self, _check_criterion(criterion))

    def ranks(self, criterion: str) -> Tensor:
        """1-based rank of every candidate under ``criterion`` (:data:`CRITERIA`)."""
        return _ranks(self.scores(criterion), CRITERIA[criterion])

    def index(self, kernel: Tensor | Sequence) -> int:
        """Position of ``kernel`` among the candidates (:class:`BinsenseError` if absent)."""
        k = torch.as_tensor(kernel, dtype=self.kernels.dtype)
        if k.shape != self.kernels.shape[1:]:
            raise BinsenseError(
                f"kernel shape {tuple(k.shape)} does not match the candidates' "
                f"{tuple(self.kernels.shape[1:])}."
            )
        hit = (self.kernels == k).flatten(1).all(1).nonzero()
        if hit.numel() == 0:
            raise BinsenseError(f"kernel {_key(k)} is not among the candidates.")
        return int(hit[0])

    def record(self, kernel: Tensor | Sequence) -> KernelScore:
        """Scores and ranks of one kernel."""
        return self._records(torch.tensor([self.index(kernel)]))[0]

    def records(self, criterion: str = "tv", top: int | None = None) -> list[KernelScore]:
        """Candidates sorted best first under ``criterion`` (the first ``top`` if given)."""
        order = torch.argsort(self.ranks(criterion), stable=True)
        return self._records(order if top is None else order[:top])

    def _records(self, idx: Tensor) -> list[KernelScore]:
        ranks = {c: self.ranks(c) for c in CRITERIA}
        return [
            KernelScore(
                kernel=_key(self.kernels[i]),
                tv=float(self.tv[i]),
                psnr=float(self.psnr[i]),
                mse=float(self.mse[i]),
                rank_tv=int(ranks["tv"][i]),
                rank_psnr=int(ranks["psnr"][i]),
                rank_mse=int(ranks["mse"][i]),
            )
            for i in idx.tolist()
        ]


def _check_criterion(criterion: str) -> str:
    if criterion not in CRITERIA:
        raise unknown_name("criterion", criterion, CRITERIA)
    return criterion


def score_kernels(
    images: Tensor,
    size: int | tuple[int, int] = 2,
    levels: Sequence[float] = RELU_LEVELS,
    conv_kernels: int | Tensor = 8,
    seed: int = 0,
    candidates: Tensor | Sequence | None = None,
    chunk: int = 8192,
    progress: bool = False,
) -> KernelRanking:
    r"""Score every candidate dither kernel by TV, PSNR and MSE (module docstring).

    Args:
        images: ``(N, C, H, W)`` uint8 or [0, 1] images (RGB or gray), ``H, W >= 2``.
        size: kernel size ``m`` (square) or ``(m, n)``; all ``len(levels)^(m n)`` kernels
            are scored (2x2: 1296; 3x3, about 10 million, needs ``candidates``).
        levels: kernel entry values, in the units of the ReLU levels {0, 1, 3, ..., 9}.
        conv_kernels: number of seeded random ±1 3x3 convolutions, or a ``(K, 3, 3)``
            tensor of them.
        seed: seed of the random convolutions.
        candidates: explicit ``(K, m, n)`` kernels to score instead (``size`` and
            ``levels`` are then ignored).
        chunk: candidates per vectorised step; ``progress`` shows a bar over the steps.

    Rank direction (:data:`CRITERIA`): PSNR higher, MSE lower and TV *lower* is better
    (of the two TV directions, the one that ranks the reference kernel higher; the extremes
    of both are degenerate: all-9 kernels give a constant output, checkerboards the
    largest TV). Measured on the first 200 CIFAR-10 test images (8 convs, seed 0) the
    reference ``[[1, 1], [3, 3]]`` ranks 265 (TV), 155 (PSNR) and 353 (MSE) of 1296 (1032
    by high TV), and its ranks move by about ±100 with the seed of the random
    convolutions: this simulation does not single it out.
    """
    gray = to_grayscale(images)
    cand = (
        candidate_kernels(size, levels)
        if candidates is None
        else torch.as_tensor(candidates, dtype=torch.float64)
    )
    if cand.dim() == 2:
        cand = cand.unsqueeze(0)
    if cand.dim() != 3 or cand.shape[0] == 0:
        raise BinsenseError(f"candidates must be (K, m, n), got {tuple(cand.shape)}.")
    n_img, h, w = gray.shape
    if h < 2 or w < 2:
        raise BinsenseError(f"images must be at least 2x2, got {h}x{w}.")
    feats = simulate_feature_maps(gray, conv_kernels, seed)  # (N, K, H, W)
    n_conv = feats.shape[1]
    relu = torch.tensor(RELU_LEVELS, dtype=torch.float64)
    nr = len(RELU_LEVELS)
    r = torch.bucketize(feats, relu)  # level index 0..5 (values are exact integers)
    _, m, n = cand.shape
    p_count = m * n
    cls = (torch.arange(h) % m).view(-1, 1) * n + (torch.arange(w) % n).view(1, -1)

    # MSE: sum_pix (b - v)^2 = sum v^2 + sum_pix b (1 - 2v), b = output in {0, 1}.
    nk = n_img * n_conv
    idx = (cls * nr + r).reshape(nk, -1) + (torch.arange(nk) * p_count * nr).view(-1, 1)
    weight = (1 - 2 * gray).unsqueeze(1).expand(-1, n_conv, -1, -1).reshape(nk, -1)
    hist_b = torch.bincount(idx.flatten(), weight.flatten(), minlength=nk * p_count * nr)
    hist_b = hist_b.view(nk, p_count * nr)
    sum_v2 = (gray**2).sum((1, 2)).repeat_interleave(n_conv)  # (N K,)

    # TV: counts of (anchor class, level at anchor, right and lower neighbour), all maps.
    a = r[..., :-1, :-1]
    q = ((cls[:-1, :-1] * nr + a) * nr + r[..., :-1, 1:]) * nr + r[..., 1:, :-1]
    hist_tv = torch.bincount(q.flatten(), minlength=p_count * nr**3).double()
    hist_tv = hist_tv.view(p_count, nr**3)
    anchors = nk * (h - 1) * (w - 1)
    pi, pj = torch.arange(p_count) // n, torch.arange(p_count) % n
    right = pi * n + (pj + 1) % n
    down = ((pi + 1) % m) * n + pj

    tv, mse, psnr = [], [], []
    steps = range(0, cand.shape[0], chunk)
    if progress and len(steps) > 1:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="kernels", unit="chunk")
    for start in steps:
        t = cand[start : start + chunk].reshape(-1, p_count)  # (c, P)
        on = relu.view(1, 1, -1) > t.unsqueeze(-1)  # (c, P, levels): output +1?
        err = (sum_v2.view(-1, 1) + hist_b @ on.flatten(1).double().T) / (h * w)  # (NK, c)
        mse.append(err.mean(0))
        psnr.append((10 * torch.log10(1.0 / err.clamp_min(1e-10))).mean(0))
        o0 = on.view(-1, p_count, nr, 1, 1)
        o1 = on[:, right].view(-1, p_count, 1, nr, 1)
        o2 = on[:, down].view(-1, p_count, 1, 1, nr)
        term = 2 * torch.sqrt((o0 != o1).double() + (o0 != o2).double())
        tv.append((term.flatten(1) @ hist_tv.flatten()) / anchors)
    return KernelRanking(
        kernels=cand,
        tv=torch.cat(tv),
        psnr=torch.cat(psnr),
        mse=torch.cat(mse),
        images=n_img,
        conv_kernels=n_conv,
    )


def load_gray_images(
    dataset: str = "cifar10", count: int = 200, data_dir: str | Path | None = None
) -> Tensor:
    """The first ``count`` test images of ``dataset`` as grayscale float64 ``(N, H, W)``."""
    from binsense.data import load_dataset

    if count < 1:
        raise BinsenseError(f"need at least one image, got {count}.")
    data = load_dataset(dataset, "test", data_dir=data_dir)
    return to_grayscale(data.images[:count])


def plot_kernel_scores(
    ranking: KernelRanking, path: str | Path, reference: Sequence | None = REFERENCE_KERNEL
) -> Path:
    """PNG of each criterion's sorted score curve (best first), ``reference`` marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = None if reference is None else ranking.index(reference)
    fig, axes = plt.subplots(1, len(CRITERIA), figsize=(4 * len(CRITERIA), 3.2))
    for ax, (name, higher) in zip(axes, CRITERIA.items(), strict=True):
        s = ranking.scores(name)
        ordered = torch.sort(s, descending=higher).values
        ax.plot(range(1, len(s) + 1), ordered.numpy(), lw=1)
        if ref is not None:
            rank = int(ranking.ranks(name)[ref])
            label = f"{kernel_text(ranking.kernels[ref])}: #{rank}"
            ax.scatter([rank], [float(s[ref])], color="C3", zorder=3, label=label)
            ax.legend(fontsize=7)
        ax.set_title(f"{name} ({'higher' if higher else 'lower'} is better)")
        ax.set_xlabel("rank")
    fig.suptitle(
        f"{len(ranking)} DeSign kernels, {ranking.images} images x "
        f"{ranking.conv_kernels} binary convs",
        fontsize=9,
    )
    fig.tight_layout()
    return _save_png(fig, path)


def _save_png(fig, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG atomically (temp file + rename) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return path


def plot_design_demo(
    image: Tensor,
    path: str | Path,
    kernel: Tensor | Sequence = REFERENCE_KERNEL,
    seed: int = 0,
) -> Path:
    """PNG: an image, its simulated binary-conv feature map, sign vs DeSign binarisation.

    The feature map is :func:`simulate_feature_maps` with the first seeded random ±1 conv;
    "sign" binarises it at 0 (``> 0`` -> +1), "DeSign" subtracts the tiled integer
    ``kernel`` first (:func:`dither_binarize`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gray = to_grayscale(image)[:1]
    feat = simulate_feature_maps(gray, 1, seed)[0, 0]
    k = torch.as_tensor(kernel, dtype=torch.float64)
    panels = [
        ("input (gray)", gray[0], (0, 1)),
        ("binary conv + ReLU", feat, (0, 9)),
        ("sign", dither_binarize(feat, torch.zeros_like(k)), (-1, 1)),
        (f"DeSign {kernel_text(k)}", dither_binarize(feat, k), (-1, 1)),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
    for ax, (title, img, (lo, hi)) in zip(axes, panels, strict=True):
        ax.imshow(img.numpy(), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return _save_png(fig, path)


__all__ = [
    "CRITERIA",
    "named_kernel",
    "REFERENCE_KERNEL",
    "RELU_LEVELS",
    "KernelRanking",
    "KernelScore",
    "candidate_kernels",
    "dither_binarize",
    "equivalent_kernels",
    "kernel_text",
    "load_gray_images",
    "plot_design_demo",
    "plot_kernel_scores",
    "random_binary_kernels",
    "score_kernels",
    "simulate_feature_maps",
    "to_grayscale",
]
