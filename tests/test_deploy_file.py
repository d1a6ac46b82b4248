"""Deployed-model files: round trips bit for bit, sizes in bits, one-line errors for bad
files, the allow-list of (typed) ops, older and newer format versions, and the CLI's
--out / --load."""

from __future__ import annotations

import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from test_deploy_program import _calibrated
from torch import nn

from binsense.cli import main
from binsense.compress.summary import summary
from binsense.data import dataset_info
from binsense.deploy import check_exact, convert, stage
from binsense.deploy import fileformat as ff
from binsense.deploy.fileformat import (
    DeployFileError,
    attach_layers,
    load_deployed,
    read_deployed,
    save_deployed,
)
from binsense.deploy.ir import FlattenOp, FloatStage, Op, OpList
from binsense.deploy.program import DeployedModel
from binsense.errors import BinsenseError, CheckpointError
from binsense.models import build_model
from binsense.train import TrainConfig, train


def _inputs(dataset: str, n: int = 3) -> torch.Tensor:
    info = dataset_info(dataset)
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, info.in_channels, *info.image_size, generator=gen)


@pytest.mark.parametrize(
    ("name", "dataset", "options"),
    [
        ("mnist_bnn", "mnist", {"width": 0.25}),  # float first layer, binary head
        (
            "mnist_bnn",
            "mnist",
            {"width": 0.25, "first_layer": "binary", "design": "2x2", "design_coupled": True},
        ),  # fmt: skip
        ("vgg_small", "cifar10", {"width": 0.0625, "groups": 2, "design": "2x2x4_shift"}),
        ("vgg_small", "cifar10", {"width": 0.0625, "norm": "channel_affine", "head": "float"}),
        ("compact_bnn", "cifar10", {"width": 0.125, "encoder": "nbc"}),
        ("compact_bnn", "cifar10", {"width": 0.125, "encoder": "glt"}),
        ("resnet18_bnn", "cifar10", {"width": 0.0625}),
        (
            "resnet18_bnn",
            "cifar10",
            {"width": 0.0625, "design": "2x2x4_shift", "design_coupled": True},
        ),  # fmt: skip
    ],
)
def test_round_trip_is_bit_identical(name, dataset, options, tmp_path):
    model = _calibrated(name, dataset, **options)
    deployed = convert(model)
    path = save_deployed(deployed, tmp_path / "model.bsd")
    loaded = load_deployed(path)
    x = _inputs(dataset)
    expected = loaded.reference(model, x)  # the model, its float layers in the deployed order
    assert torch.equal(loaded(x), deployed(x)) and torch.equal(loaded(x), expected)
    assert [type(op) for op in loaded.ops] == [type(op) for op in deployed.ops]
    assert list(dict(loaded.ops.named())) == list(dict(deployed.ops.named()))
    stages = loaded.float_stages()  # typed float ops and their source layers, kept
    assert [[type(f) for f in s.ops] for s in stages] == [
        [type(f) for f in s.ops] for s in deployed.float_stages()
    ]
    assert [s.sources for s in stages] == [s.sources for s in deployed.float_stages()]
    assert not any(isinstance(m, nn.Module) for s in stages for m in s.ops)
    _assert_compact_encodings(_manifest(_payload(path)))
    attach_layers(loaded, model)  # every packed layer's integers too
    result = check_exact(model, [(x, None)], loaded)
    assert result.exact and result.logit_mismatches == 0 and result.layers >= 2
    assert load_deployed(path).predict(x).tolist() == expected.argmax(1).tolist()


def _float_ops(entry: dict):
    """The float op entries of an op entry (a float stage, or a residual unit's parts)."""
    if entry["op"] == "FloatStage":
        yield from entry["ops"]
    for part in ("rest", "shortcut", "post"):
        if isinstance(entry.get(part), dict):
            yield from _float_ops(entry[part])


def _assert_compact_encodings(manifest: dict) -> None:
    """A binary float conv's or linear layer's weight is stored one bit a weight ("pm1"),
    every other float-op tensor as raw float32."""
    for entry in manifest["ops"]:
        for op in _float_ops(entry):
            assert op["type"] in stage.FLOAT_OPS
            for key, ref in op["tensors"].items():
                record = manifest["tensors"][ref]
                binary = key == "weight" and op["params"].get("binary")
                want = ("pm1", "int64") if binary else ("raw", "float32")
                assert (record["enc"], record["blob"]) == want, (op["type"], key, record)
                assert record["dtype"] == "float32"


def _float_size(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue())


def test_compact_bnn_file_is_its_bits(tmp_path):
    """The 0.3 Mbit compact_bnn (width 1, nbc encoder) is a file of tens of KB, within
    15 % of the bits the size summary counts, and a tenth of its float weights or less."""
    torch.manual_seed(0)
    info = dataset_info("cifar10")
    model = build_model("compact_bnn", info, width=1.0, encoder="nbc").eval()
    path = save_deployed(convert(model), tmp_path / "compact.bsd")
    size = path.stat().st_size
    bits = summary(model, (3, 32, 32)).total_bits
    assert 300_000 < bits < 330_000  # the 0.307 Mbit of the compact model's docstring
    assert 20_000 < size < 50_000 and 8 * size < 1.15 * bits
    assert size < _float_size(model) / 10
    blobs = torch.load(path, weights_only=True)["blobs"]  # weights: one bit each
    assert blobs["int64"].numel() * 64 < 1.06 * bits


def test_float_first_layer_model_is_a_tenth_of_its_float_size(tmp_path):
    torch.manual_seed(0)
    model = build_model("mnist_bnn", dataset_info("mnist"), width=1.0).eval()
    path = save_deployed(convert(model), tmp_path / "mnist.bsd")
    assert path.stat().st_size < _float_size(model) / 10


# ---------------------------------------------------------------- bad files


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    model = _calibrated("mnist_bnn", "mnist", width=0.25)
    return save_deployed(convert(model), tmp_path_factory.mktemp("file") / "model.bsd")


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and text.endswith(".")
    return text


def _payload(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _write(path: Path, payload: dict, manifest: dict | None = None) -> Path:
    if manifest is not None:
        packed = zlib.compress(json.dumps(manifest).encode())
        payload = {**payload, "manifest": packed,
                   "sha256": ff._digest(packed, payload["blobs"])}  # fmt: skip
    torch.save(payload, path)
    return path


def _manifest(payload: dict) -> dict:
    return json.loads(zlib.decompress(payload["manifest"]))


def test_truncated_file_is_one_line(saved, tmp_path):
    data = saved.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100, 0):
        bad = tmp_path / f"cut{cut}.bsd"
        bad.write_bytes(data[:cut])
        with pytest.raises(DeployFileError, match="truncated, corrupt or not a binsense") as e:
            load_deployed(bad)
        _one_line(e)


def test_corrupt_bytes_are_one_line(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    payload = _payload(saved)
    # a flipped bit inside the packed weights: the archive still loads, the checksum fails
    words = payload["blobs"]["int64"]
    words[5] ^= 1 << 9
    bad = _write(tmp_path / "flip.bsd", payload)
    with pytest.raises(DeployFileError, match="corrupt .*checksum") as e:
        load_deployed(bad)
    _one_line(e)
    blob = _payload(saved)["blobs"]["int64"].numpy().tobytes()
    where = bytes(data).find(blob)  # archive entries are stored: the words are in the file
    assert where > 0
    data[where + len(blob) // 2] ^= 0x10  # a changed byte in the file itself
    (tmp_path / "byte.bsd").write_bytes(bytes(data))
    with pytest.raises(DeployFileError) as e:
        load_deployed(tmp_path / "byte.bsd")
    _one_line(e)


def test_foreign_files_are_one_line(tmp_path):
    text = tmp_path / "notes.bsd"
    text.write_text("hello\n")
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "config": {}}, checkpoint)
    other = tmp_path / "other.pt"
    torch.save([torch.zeros(3)], other)
    for path, match in [
        (text, "not a binsense deployed model"),
        (checkpoint, "a training checkpoint\\? pass it as --checkpoint"),
        (other, "is not a binsense deployed model"),
        (tmp_path / "missing.bsd", "does not exist"),
    ]:
        with pytest.raises(DeployFileError, match=match) as e:
            load_deployed(path)
        _one_line(e)
        assert isinstance(e.value, CheckpointError)


def test_newer_version_is_refused(saved, tmp_path):
    payload = _payload(saved)
    bad = _write(tmp_path / "v9.bsd", {**payload, "version": ff.VERSION + 1})
    with pytest.raises(DeployFileError, match="newer than this binsense reads") as e:
        load_deployed(bad)
    _one_line(e)


def test_broken_manifests_are_corrupt(saved, tmp_path):
    payload = _payload(saved)
    manifest = _manifest(payload)
    first = next(iter(manifest["tensors"]))
    broken = [
        {**manifest, "ops": []},
        {
            **manifest,
            "tensors": {
                **manifest["tensors"],
                first: {**manifest["tensors"][first], "offset": 10**9},
            },
        },  # fmt: skip
        _with_first(manifest, {**manifest["ops"][0], "ops": "x"}),
        _with_first(manifest, {**manifest["ops"][0], "sources": None}),
        _with_first(manifest, {**manifest["ops"][0], "sources": []}),  # its conv has one
        _with_first(manifest, {**manifest["ops"][0], "ops": [42]}),
        _with_first(manifest, {**manifest["ops"][0], "ops": [{"type": "ReLU", "params": 7}]}),
    ]
    for i, m in enumerate(broken):
        with pytest.raises(DeployFileError, match="is corrupt") as e:
            load_deployed(_write(tmp_path / f"m{i}.bsd", payload, m))
        _one_line(e)


def _with_first(manifest: dict, op: dict) -> dict:
    return {**manifest, "ops": [op, *manifest["ops"][1:]]}


def _with_float_op(manifest: dict, kind: str, **changes) -> dict:
    """``manifest`` with the first float op of type ``kind`` of its first stage changed."""
    stage_entry = manifest["ops"][0]
    ops = list(stage_entry["ops"])
    i = next(i for i, op in enumerate(ops) if op["type"] == kind)
    ops[i] = {**ops[i], **changes}
    return _with_first(manifest, {**stage_entry, "ops": ops})


def test_damaged_float_op_values_are_corrupt(saved, tmp_path):
    """Every value of a typed float op passes its ``from_spec`` checks: a damaged
    parameter or tensor reference is one "corrupt" line, not another exception."""
    payload = _payload(saved)
    manifest = _manifest(payload)
    ops = manifest["ops"][0]["ops"]
    conv = next(op for op in ops if op["type"] == "Conv")
    norm = next(op for op in ops if op["type"] == "BatchNorm")
    weight = conv["tensors"]["weight"]
    cases = [
        (_with_float_op(manifest, "Conv", params={**conv["params"], "stride": [0, 1]}), "stride"),
        (_with_float_op(manifest, "Conv", params={**conv["params"], "groups": "2"}), "groups"),
        (_with_float_op(manifest, "Conv", params={**conv["params"], "groups": 3}), "groups"),
        # a float weight claimed to be binary (±1)
        (_with_float_op(manifest, "Conv", params={**conv["params"], "binary": True}), "±1"),
        (_with_float_op(manifest, "Conv", tensors={}), "weight"),
        (_with_float_op(manifest, "Conv", tensors={"weight": "nowhere"}), "does not hold"),
        (_with_float_op(manifest, "Conv", tensors={"weight": weight, "bias": weight}), "twice"),
        (_with_float_op(manifest, "BatchNorm", params={**norm["params"], "eps": -1}), "eps"),
        (_with_float_op(manifest, "BatchNorm", params={"eps": 1e-5}), "affine form"),
        (_with_float_op(manifest, "MaxPool", params={}), "kernel"),
    ]
    for i, (m, words) in enumerate(cases):
        with pytest.raises(DeployFileError, match="is corrupt") as e:
            load_deployed(_write(tmp_path / f"d{i}.bsd", payload, m))
        assert words in _one_line(e), (words, str(e.value))


def test_types_outside_the_allow_list_are_refused_without_importing(saved, tmp_path, monkeypatch):
    payload = _payload(saved)
    manifest = _manifest(payload)
    first = manifest["ops"][0]
    assert first["op"] == "FloatStage"

    def with_float_op(op: dict) -> dict:
        return _with_first(manifest, {**first, "ops": [op, *first["ops"][1:]]})

    evil_op = {"name": "evil", "op": "builtins.eval", "params": {}}
    cases = [
        (with_float_op({"type": "os.system", "params": {"command": "true"}}),
         "float op type 'os.system'"),
        # a module of format version 1, a name of the op table, a base class: not float ops
        (with_float_op({"type": "Conv2d", "args": {}, "tensors": {}}), "float op type 'Conv2d'"),
        (with_float_op({"type": "PackedConv", "params": {}}), "float op type 'PackedConv'"),
        (with_float_op({"type": "FloatOp", "params": {}}), "float op type 'FloatOp'"),
        (with_float_op({"type": ["ReLU"]}), "float op type \"\\['ReLU'\\]\""),
        ({**manifest, "ops": [*manifest["ops"], evil_op]}, "op type 'builtins.eval'"),
        ({**manifest, "ops": [*manifest["ops"], {"name": "s", "op": "ChannelShuffle"}]},
         "op type 'ChannelShuffle'"),
    ]  # fmt: skip

    def no_import(*args, **kwargs):
        raise AssertionError("the loader imported a name from the file")

    monkeypatch.setattr("importlib.import_module", no_import)
    for i, (m, match) in enumerate(cases):
        with pytest.raises(DeployFileError, match=match) as e:
            load_deployed(_write(tmp_path / f"evil{i}.bsd", payload, m))
        assert "does not load" in _one_line(e)


def test_unknown_module_types_are_refused_by_lowering():
    """A trained module outside the table never reaches a program: lowering refuses it
    with one line naming its path."""
    with pytest.raises(BinsenseError, match="^head: a GELU module does not deploy") as e:
        FloatStage.lower([("head", nn.GELU())])
    _one_line(e)
    inner = nn.Sequential(nn.Flatten(), nn.GELU())
    with pytest.raises(BinsenseError, match="^head.1: a GELU module does not deploy"):
        FloatStage.lower([("head", inner)])


@dataclass(frozen=True, eq=False)
class Gelu(stage.FloatOp):
    """A float op outside :data:`binsense.deploy.stage.FLOAT_OPS`."""

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x)


@dataclass(frozen=True, eq=False)
class ReLU(stage.FloatOp):
    """Named as a registered op, but not that class."""

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)


def test_unknown_op_types_refuse_to_save(tmp_path):
    cases = [
        (FloatStage([stage.Flatten(), Gelu()]), "model: head.1 is a Gelu float op"),
        (FloatStage([ReLU()]), "model: head.0 is a ReLU float op"),
        (_StrayOp(), "op 'head' is a _StrayOp op"),
    ]
    for op, words in cases:
        deployed = DeployedModel(OpList({"flat": FlattenOp(), "head": op}))
        with pytest.raises(BinsenseError, match="cannot save the deployed model") as e:
            save_deployed(deployed, tmp_path / "x.bsd")
        assert words in _one_line(e) and "which the deployed-model file does not know" in str(
            e.value
        )
        assert not (tmp_path / "x.bsd").exists()
    # a PyTorch module is no op at all: a program cannot even hold one
    for module in (nn.GELU(), nn.Sequential(nn.Flatten())):
        with pytest.raises(BinsenseError, match="op 'head' is a .*, not a deployed op"):
            OpList({"flat": FlattenOp(), "head": module})


class _StrayOp(Op):
    """An op type the file format does not know."""

    def __call__(self, x):
        return x


def test_a_version_1_file_says_how_to_write_it_again(saved, tmp_path, monkeypatch):
    """Format version 1 stored PyTorch modules: one line naming the command that writes
    the file again, before anything of it is read as ops (whatever its manifest holds)."""
    payload = _payload(saved)
    manifest = {**_manifest(payload), "version": 1, "ops": [{"name": "x", "op": "FloatStage",
                "modules": [{"type": "Conv2d", "args": {}, "tensors": {}}]}]}  # fmt: skip
    old = _write(tmp_path / "v1.bsd", {**payload, "version": 1}, manifest)
    program = load_deployed(saved)
    monkeypatch.setattr(ff, "VERSION", 1)  # and a file this binsense wrote as version 1
    written = save_deployed(program, tmp_path / "written.bsd")
    monkeypatch.undo()
    assert ff.VERSION == 2 and torch.load(written, weights_only=True)["version"] == 1
    for path in (old, written):
        with pytest.raises(DeployFileError) as e:
            load_deployed(path)
        text = _one_line(e)
        assert "by an older binsense (format version 1, which stored PyTorch modules" in text
        assert "binsense deploy --checkpoint RUN/checkpoint.pt --out FILE." in text
        assert str(path) in text and "corrupt" not in text


def test_a_file_of_another_model_is_refused_for_layer_checks(saved):
    other = _calibrated("mnist_bnn", "mnist", width=0.5)
    with pytest.raises(DeployFileError, match="not a conversion of this checkpoint's model"):
        attach_layers(load_deployed(saved), other)


# ---------------------------------------------------------------- CLI


def test_cli_out_and_load(tiny_data, tmp_path, capsys):
    config = TrainConfig(dataset=tiny_data, model="mnist_bnn", epochs=1, batch_size=30,
                         model_options={"width": 0.25})  # fmt: skip
    train(config, tmp_path / "run")
    checkpoint = str(tmp_path / "run" / "checkpoint.pt")
    out = tmp_path / "model.bsd"
    code = main(["deploy", "--checkpoint", checkpoint, "--out", str(out), "--check"])
    text = capsys.readouterr().out
    size = out.stat().st_size
    assert code == 0 and f"wrote {out}: {size:,} bytes ({8 * size:,} bits" in text
    assert "checkpoint checkpoint.pt: " in text and "x smaller" in text
    assert "predictions differ on 0, logits differ on 0" in text
    assert read_deployed(out).meta["model"] == "mnist_bnn"

    code = main(["deploy", "--load", str(out), "--checkpoint", checkpoint, "--check"])
    text = capsys.readouterr().out
    assert code == 0 and f"loaded {out}: {size:,} bytes" in text
    assert "file vs PyTorch" in text and "predictions differ on 0, logits differ on 0" in text
    assert "bit-exact 3/3" in text

    assert main(["deploy", "--load", str(out)]) == 0  # no checkpoint: the file's summary
    assert "PackedConv" in capsys.readouterr().out

    (tmp_path / "bad.bsd").write_bytes(out.read_bytes()[:500])
    for argv in (
        ["deploy", "--load", str(tmp_path / "bad.bsd")],
        ["deploy", "--load", str(out), "--out", str(tmp_path / "x.bsd")],
        ["deploy", "--load", str(out), "--check"],
        ["deploy"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1


def test_cli_infer_runs_the_file_and_matches_eval(tiny_data, tmp_path, capsys):
    config = TrainConfig(dataset=tiny_data, model="mnist_bnn", epochs=1, batch_size=30,
                         model_options={"width": 0.25})  # fmt: skip
    train(config, tmp_path / "run")
    checkpoint = str(tmp_path / "run" / "checkpoint.pt")
    out = tmp_path / "model.bsd"
    assert main(["deploy", "--checkpoint", checkpoint, "--out", str(out)]) == 0
    assert read_deployed(out).meta["input_shape"] == [1, 28, 28]
    assert main(["eval", "--checkpoint", checkpoint]) == 0
    accuracy = capsys.readouterr().out.split("accuracy ")[1].split(",")[0]
    csv = tmp_path / "pred.csv"
    assert main(["infer", str(out), "--predictions", str(csv)]) == 0
    text = capsys.readouterr().out
    assert f"accuracy {accuracy};" in text and "images/s" in text  # the same accuracy
    rows = csv.read_text().splitlines()
    assert rows[0] == "index,label,prediction" and len(rows) == 1 + int(
        text.split("(")[1].split()[0]
    )
    correct = sum(int(r.split(",")[1]) == int(r.split(",")[2]) for r in rows[1:])
    assert f"{correct / (len(rows) - 1):.2%}" == accuracy

    from PIL import Image

    rgb = tmp_path / "rgb"  # a 3-channel 16x16 folder for a 1-channel 28x28 model
    for split in ("train", "test"):
        for c in range(2):
            (rgb / split / f"c{c}").mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (16, 16), (40 * i, 90, c * 200)).save(
                    rgb / split / f"c{c}/{i}.png"
                )
    for argv in (
        ["infer", str(out), "--data", f"imagefolder:{rgb}"],
        ["infer", str(tmp_path / "missing.bsd")],
        ["infer", str(out), "--predictions", str(tmp_path)],
        ["infer", str(out), "--threads", "0"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    # images of the right shape but another class count: refused, not "25 %"
    from conftest import make_imagefolder

    two = make_imagefolder(tmp_path / "two", classes=2, train=2, test=4)
    assert main(["infer", str(out), "--data", f"imagefolder:{two}"]) == 2
    err = capsys.readouterr().err
    assert "predicts 3 classes, but" in err and "has 2" in err and err.count("\n") == 1


def test_huge_or_junk_files_are_refused_before_they_are_read(tmp_path, monkeypatch):
    """A 40 GB file was read whole (and got memory advice); now the size and the first
    bytes decide, and nothing else of the file is read."""
    junk = tmp_path / "junk.bsd"
    with junk.open("wb") as f:  # sparse: 2 GiB on paper, nothing on disk
        f.truncate(2 << 30)
    big = tmp_path / "big.bsd"
    with big.open("wb") as f:
        f.write(b"PK\x03\x04")
        f.truncate(ff.MAX_FILE_BYTES + 1)
    small_junk = tmp_path / "small.bsd"
    small_junk.write_bytes(b"\x00" * 4096)

    def no_whole_reads(self):
        raise AssertionError("the whole file was read")

    monkeypatch.setattr(Path, "read_bytes", no_whole_reads)
    for path, match in [
        (junk, "larger than any deployed model"),
        (big, "larger than any deployed model"),
        (small_junk, "does not start as one"),
    ]:
        with pytest.raises(DeployFileError, match=match) as e:
            load_deployed(path)
        _one_line(e)


def test_single_bit_flips_are_corrupt_or_harmless_never_another_error(saved, tmp_path):
    """Every flip either loads a program that computes the same logits (a flip in zip
    metadata torch does not read) or is one DeployFileError line: never another
    exception (8 of 15,050 flips escaped as LookupError, AssertionError, RuntimeError)."""
    data = saved.read_bytes()
    x = torch.rand(2, 1, 28, 28)
    want = load_deployed(saved)(x)
    gen = torch.Generator().manual_seed(0)
    positions = torch.randint(0, len(data) * 8, (400,), generator=gen).tolist()
    outcomes = {"corrupt": 0, "same": 0}
    for bit in positions:
        raw = bytearray(data)
        raw[bit // 8] ^= 1 << (bit % 8)
        path = tmp_path / "flip.bsd"
        path.write_bytes(bytes(raw))
        try:
            model = load_deployed(path)
        except DeployFileError:
            outcomes["corrupt"] += 1
            continue
        assert torch.equal(model(x), want), bit
        outcomes["same"] += 1
    assert outcomes["corrupt"] > 300


def test_crafted_geometry_is_refused_before_anything_runs(saved, tmp_path):
    """A 7.6 KB file with a conv padding of 65,536 took 9.8 GB in infer: every conv and
    pool geometry is bounded when the file is read (padding at most the kernel, stride
    and dilation at most 8, adaptive pools at most 4,096 wide)."""
    payload = _payload(saved)
    manifest = _manifest(payload)
    ops = manifest["ops"]

    def first(kind: str) -> int:
        return next(i for i, op in enumerate(ops) if op["op"] == kind)

    def with_op(i: int, op: dict) -> dict:
        return {**manifest, "ops": [*ops[:i], op, *ops[i + 1 :]]}

    conv = first("PackedConv")
    stage = first("FloatStage")
    crafted = [
        with_op(conv, {**ops[conv], "params": {**ops[conv]["params"], "padding": [65536, 1]}}),
        with_op(conv, {**ops[conv], "params": {**ops[conv]["params"], "stride": [1, 99]}}),
    ]
    text = json.dumps(ops[stage])
    assert '"padding": [1, 1]' in text  # the float first conv
    huge = text.replace('"padding": [1, 1]', '"padding": [4096, 4096]', 1)
    crafted.append(with_op(stage, json.loads(huge)))
    pool = first("MaxPoolInt")
    big_pool = json.loads(
        json.dumps(ops[pool]).replace('"padding": [0, 0]', '"padding": [50000, 50000]', 1)
    )
    assert big_pool != ops[pool]
    crafted.append(with_op(pool, big_pool))
    float_pool = json.loads(
        text.replace('"padding": [0, 0]', '"padding": [3, 3]', 1)
    )  # the float stage's max-pool: 2x2 windows
    assert float_pool != ops[stage]
    crafted.append(with_op(stage, float_pool))
    wide = {**ops[stage], "ops": [*ops[stage]["ops"], {"type": "AdaptiveAvgPool",
            "params": {"output_size": [1, 5000]}, "tensors": {}}]}  # fmt: skip
    crafted.append(with_op(stage, wide))
    for i, m in enumerate(crafted):
        with pytest.raises(DeployFileError, match="is corrupt") as e:
            load_deployed(_write(tmp_path / f"g{i}.bsd", payload, m))
        _one_line(e)
