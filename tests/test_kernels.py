"""The XNOR-popcount C kernels: every path this CPU runs (AVX-512 VPOPCNTDQ, AVX2,
portable C) against the PyTorch reference, bit for bit; the packed conv and linear ops on
each path against F.conv2d / matmul; the fused threshold; the build and its fallback."""

from __future__ import annotations

import shutil
import subprocess
import warnings

import pytest
import torch
import torch.nn.functional as F

from binsense.deploy import kernels
from binsense.deploy.bits import pack_bits, popcount64
from binsense.deploy.ir import PackedConv, PackedLinear
from binsense.errors import BinsenseError
from binsense.layers import BinaryConv2d, BinaryLinear

C_PATHS = [b for b in kernels.BACKENDS if b != "torch"]


def _words(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-(2**63), 2**63 - 1, shape, generator=g, dtype=torch.int64)


def _pm1(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


def _reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return popcount64(~(a.unsqueeze(1) ^ b.unsqueeze(0))).sum(-1).to(torch.int32)


def _need(path: str) -> None:
    if path not in kernels.available():
        pytest.skip(f"this machine does not run the {path} path")


@pytest.fixture
def fresh_kernels():
    """Module state forgotten before and after (a test that changes the build)."""
    kernels._reset()
    yield
    kernels._reset()


def test_the_library_builds_where_a_compiler_is():
    if not any(shutil.which(c) for c in kernels.build.COMPILERS):
        pytest.skip("no C compiler here")
    assert kernels.library() is not None
    assert "portable-c" in kernels.available() and kernels.available()[-1] == "torch"
    best = kernels.available()[0]
    assert kernels.backend() == best or kernels.backend() in kernels.available()
    features = kernels.cpu_features()
    assert ("avx512vpopcntdq" in features) == ("avx512vpopcntdq" in kernels.available())
    assert ("avx2" in features) == ("avx2" in kernels.available())


@pytest.mark.parametrize("path", C_PATHS)
@pytest.mark.parametrize(
    ("m", "n", "k"),
    [(1, 1, 1), (7, 65, 3), (65, 7, 33), (1, 7, 65), (33, 40, 72), (5, 3, 0), (130, 1, 2)],
)
def test_xnor_gemm_equals_the_reference(path, m, n, k):
    _need(path)
    a, b = _words(m, k, seed=m), _words(n, k, seed=n + 1)
    expected = _reference(a, b)
    assert torch.equal(kernels.xnor_gemm(a, b, threads=1, backend=path), expected)
    assert torch.equal(kernels.xnor_gemm(a, b, threads=2, backend=path), expected)
    panels = kernels.pack_b(b)
    assert torch.equal(kernels.gemm_packed(a, panels, n, backend=path), expected)


def test_extreme_words_count_every_bit():
    a = torch.tensor([[0, -1, 0], [-1, -1, -1]], dtype=torch.int64)
    b = torch.tensor([[0, 0, 0], [-1, -1, -1], [0, -1, 0]], dtype=torch.int64)
    for path in kernels.available()[:-1]:
        got = kernels.xnor_gemm(a, b, backend=path)
        assert got.tolist() == [[128, 64, 192], [0, 192, 64]], path


def test_pack_input_matches_pack_bits_per_group():
    if kernels.library() is None:
        pytest.skip("no C kernel here")
    x = _pm1(2, 140, 3, 5)  # two groups of 70 channels: 2 words each
    expected = torch.stack(
        [pack_bits((x[:, i * 70 : (i + 1) * 70] > 0).permute(0, 2, 3, 1), -1) for i in (0, 1)],
        dim=3,
    ).flatten(3)
    for t in (x, x.to(torch.int8), x > 0, x.double()):
        assert torch.equal(kernels.pack_input(t, 2), expected)


def test_im2col_pads_with_zero_words():
    if kernels.library() is None:
        pytest.skip("no C kernel here")
    x = _pm1(1, 3, 2, 2)
    words = kernels.pack_input(x)  # (1, 2, 2, 1)
    dims = kernels.conv_dims(1, 2, 2, 1, 3, 4, (3, 3), (1, 1), (1, 1))
    a = kernels.im2col(words, dims)
    assert a.shape == (4, 9)
    padded = F.pad(words[0, :, :, 0], (1, 1, 1, 1))  # zero words around the image
    expected = torch.stack(
        [padded[i : i + 3, j : j + 3].flatten() for i in range(2) for j in range(2)]
    )
    assert torch.equal(a, expected)


CONVS = [  # cin, cout, kernel, stride, padding, groups, height, width
    (3, 8, 3, 1, 1, 1, 7, 8),
    (70, 16, 3, 1, 1, 1, 5, 6),
    (64, 33, 3, 2, 1, 1, 9, 9),
    (130, 40, 3, 1, 2, 2, 4, 7),
    (8, 12, 1, 1, 0, 4, 5, 5),
    (6, 9, (3, 1), (1, 2), (1, 0), 3, 6, 5),
    (16, 16, 5, 2, 2, 1, 3, 3),
]


@pytest.mark.parametrize("path", [*C_PATHS, "torch"])
@pytest.mark.parametrize(("cin", "cout", "kernel", "stride", "padding", "groups", "h", "w"), CONVS)
def test_packed_conv_equals_the_float_conv_on_each_path(
    monkeypatch, path, cin, cout, kernel, stride, padding, groups, h, w
):
    if path != "torch":
        _need(path)
    monkeypatch.setenv(kernels.ENV, path)
    torch.manual_seed(cin + cout)
    conv = BinaryConv2d(cin, cout, kernel, stride, padding, groups=groups)
    x = _pm1(3, cin, h, w, seed=cout)
    expected = F.conv2d(x, conv.binary_weight().detach(), None, stride, padding, groups=groups)
    packed = PackedConv.of(conv)
    for inputs in (x, x.to(torch.int8)):
        got = packed(inputs)
        assert got.dtype == torch.int32 and torch.equal(got.float(), expected)
    # a second input size rebuilds the border correction, the weights stay packed
    x2 = _pm1(1, cin, h + 1, w + 2, seed=1)
    expected2 = F.conv2d(x2, conv.binary_weight().detach(), None, stride, padding, groups=groups)
    assert torch.equal(packed(x2).float(), expected2)


@pytest.mark.parametrize("path", [*C_PATHS, "torch"])
@pytest.mark.parametrize(("features", "out"), [(131, 7), (64, 10), (1, 3), (700, 65)])
def test_packed_linear_equals_the_matmul_on_each_path(monkeypatch, path, features, out):
    if path != "torch":
        _need(path)
    torch.manual_seed(features)
    lin = BinaryLinear(features, out)
    x = _pm1(5, features, seed=out)
    packed = PackedLinear.of(lin)
    monkeypatch.setenv(kernels.ENV, "torch")
    reference = packed(x)
    monkeypatch.setenv(kernels.ENV, path)
    got = packed(x)
    assert got.dtype == reference.dtype and torch.equal(got, reference)
    assert torch.equal(got.float(), x @ lin.binary_weight().detach().T)


FUSED = [  # cin, cout, kernel, stride, padding, groups, height, width
    (70, 100, 3, 1, 1, 1, 7, 6),  # 84 positions: a block of 64, then one of 20
    (64, 100, 3, 1, 1, 2, 7, 6),
    (6, 130, 3, 1, 1, 2, 7, 6),
    *CONVS,  # strides, padding 0 and 2, 1x1, 5x5 and 3x1 kernels, 2-4 groups
]


@pytest.mark.parametrize("path", C_PATHS)
@pytest.mark.parametrize(("cin", "cout", "kernel", "stride", "padding", "groups", "h", "w"), FUSED)
def test_the_fused_threshold_writes_the_next_layers_words(
    path, cin, cout, kernel, stride, padding, groups, h, w
):
    """The fused path reads the taps in place from the padded input (no im2col): every
    position, border and tile (4 positions, across rows and images) against F.conv2d."""
    _need(path)
    torch.manual_seed(0)
    conv = BinaryConv2d(cin, cout, kernel, stride, padding, groups=groups)
    packed = PackedConv.of(conv)
    x = _pm1(2, cin, h, w)
    y = F.conv2d(x, conv.binary_weight().detach(), None, stride, padding, groups=groups)
    y = y.to(torch.int32)
    _, _, ho, wo = y.shape
    g = torch.Generator().manual_seed(1)
    tau = torch.randint(-20, 21, (cout, ho, wo), generator=g, dtype=torch.int32)
    flip = torch.randint(0, 2, (cout, ho, wo), generator=g, dtype=torch.int8) * 2 - 1
    bits = flip * (y - tau) >= 0  # the Threshold op's rule
    expected = pack_bits(bits.permute(0, 2, 3, 1), -1)  # (B, H, W, words), pad bits 0
    words = kernels.pack_input(x, groups)
    weights = kernels.conv_weights(packed.weight_words, groups)
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    dims = kernels.conv_dims(2, h, w, groups, cin // groups, cout // groups, pair(kernel),
                             pair(stride), pair(padding))  # fmt: skip
    bias = (packed.border(h, w) - packed.fan_in).flatten(1)
    threshold = kernels.fuse_threshold(bias, tau.flatten(1), flip.flatten(1))
    for threads in (1, 2):
        plain = kernels.conv2d_words(words, weights, dims, bias, threads=threads, backend=path)
        assert torch.equal(plain, y)
        fused = kernels.conv2d_words(words, weights, dims, threshold=threshold, threads=threads,
                                     backend=path)  # fmt: skip
        assert torch.equal(fused, expected)


def test_a_forced_path_that_cannot_run_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "sse9")
    with pytest.raises(BinsenseError, match="not a kernel path"):
        kernels.backend()
    missing = [p for p in ("avx512", "avx2") if kernels.BACKENDS[0 if p == "avx512" else 1]
               not in kernels.available()]  # fmt: skip
    for name in missing:
        monkeypatch.setenv(kernels.ENV, name)
        with pytest.raises(BinsenseError, match="cannot run"):
            kernels.backend()
    monkeypatch.setenv(kernels.ENV, "torch")
    assert kernels.backend() == "torch"


def test_the_build_is_cached_by_source_hash(tmp_path, monkeypatch, fresh_kernels):
    if not any(shutil.which(c) for c in kernels.build.COMPILERS):
        pytest.skip("no C compiler here")
    monkeypatch.setattr(kernels.build, "_installed", lambda: None)  # the first-use build
    monkeypatch.setenv("BINSENSE_CACHE", str(tmp_path))
    assert kernels.library() is not None
    built = sorted((tmp_path / "kernels").iterdir())
    assert len(built) == 1 and built[0].name.startswith("xnor-")  # no temporary left
    kernels._reset()
    assert kernels.library() is not None  # loaded, not rebuilt
    assert sorted((tmp_path / "kernels").iterdir()) == built


def test_without_a_compiler_it_warns_once_and_stays_exact(tmp_path, monkeypatch, fresh_kernels):
    monkeypatch.setenv("BINSENSE_CACHE", str(tmp_path))  # nothing built there
    monkeypatch.setattr(kernels.build, "_installed", lambda: None)  # nor at install time
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv(kernels.ENV, raising=False)
    monkeypatch.setattr(kernels.build, "COMPILERS", ("binsense-no-such-cc",))
    torch.manual_seed(0)
    conv = BinaryConv2d(70, 8, 3, 1, 1, groups=2)
    x = _pm1(2, 70, 5, 5)
    expected = F.conv2d(x, conv.binary_weight().detach(), None, 1, 1, groups=2)
    packed = PackedConv.of(conv)
    with pytest.warns(RuntimeWarning, match="could not be built") as record:
        got = packed(x)
    assert len([r for r in record if "could not be built" in str(r.message)]) == 1
    assert kernels.backend() == "torch" and torch.equal(got.float(), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would fail here
        assert torch.equal(packed(x).float(), expected)
        assert kernels.available() == ["torch"]


@pytest.mark.parametrize("stale", [False, True])
def test_the_install_time_build_is_used_only_for_its_own_source(
    tmp_path, monkeypatch, fresh_kernels, stale
):
    cc = next((c for c in kernels.build.COMPILERS if shutil.which(c)), None)
    if cc is None:
        pytest.skip("no C compiler here")
    source = tmp_path / "xnor.c"
    shutil.copy(kernels.build.SOURCE, source)
    monkeypatch.setattr(kernels.build, "SOURCE", source)
    monkeypatch.setenv("BINSENSE_CACHE", str(tmp_path / "cache"))
    key = "0" * 16 if stale else kernels.source_key()
    built = tmp_path / "_xnor.cpython-test.so"  # as setup.py names it
    subprocess.run([cc, "-O1", "-fPIC", "-shared", "-std=gnu11", f'-DXNOR_SOURCE_KEY="{key}"',
                    str(source), "-o", str(built)], check=True)  # fmt: skip
    assert kernels.library() is not None
    if stale:  # another source's build: ignored, the first-use build serves
        assert kernels.where().startswith(str(tmp_path / "cache"))
    else:
        assert kernels.where() == str(built)
        assert not (tmp_path / "cache").exists()  # nothing compiled at run time


def test_the_dims_slots_are_the_c_enum():
    """Python names the conv's ``dims`` slots as ``xnor.c`` does (one order, two files)."""
    import re

    enum = re.search(r"enum \{ (D_B,[^}]*) \};", kernels.build.SOURCE.read_text()).group(1)
    names = [n.strip().removeprefix("D_") for n in enum.split(",")]
    assert names == [d.name for d in kernels.Dim]
    assert [int(d) for d in kernels.Dim] == list(range(len(names)))


@pytest.mark.parametrize("little", [True, False])
@pytest.mark.parametrize(
    ("n", "pad"), [(130, False), (130, True), (64, False), (5, True), (0, False)]
)
def test_pack_bits_is_its_definition(monkeypatch, little, n, pad):
    """Bit ``i`` of the packed axis is bit ``i % 64`` of word ``i // 64`` (two's
    complement int64; pad bits ``pad``), on the byte path and on the shift path
    (big-endian hosts), and unpacking gives the bits back."""
    from binsense.deploy import bits as bits_module

    monkeypatch.setattr(bits_module, "_LITTLE", little)
    b = torch.rand(3, n, 2, generator=torch.Generator().manual_seed(n)) > 0.5
    words = bits_module.pack_bits(b, 1, pad)
    assert words.shape == (3, -(-n // 64), 2) and words.dtype == torch.int64
    for r in range(3):
        for c in range(2):
            for k in range(words.shape[1]):
                value = sum(
                    1 << j for j in range(64) if (b[r, 64 * k + j, c] if 64 * k + j < n else pad)
                )
                assert int(words[r, k, c]) == (value - (1 << 64) if value >= 1 << 63 else value)
    assert torch.equal(bits_module.unpack_bits(words, n, 1), b)
