r"""Trained BNN -> integer program, with bit-packed binary layers (reference engine).

:func:`convert` walks a recipe model (:class:`~binsense.models.recipe.RecipeModel`:
encoder -> blocks -> head) and returns a :class:`DeployedModel`, a list of small ops:

- **input stage**: a binary encoder becomes integer compares on the 8-bit ADC code (its
  exact code table); a float encoder and a float first block are lowered to typed
  float32 ops (:mod:`binsense.deploy.stage`), up to their sign, their conv summed in the
  one order of :mod:`binsense.deploy.floatops` (batched PyTorch's on the checked CPUs;
  the same at every batch size) and each norm's affine form for the exports probed
  once, here;
- :class:`PackedConv` / :class:`PackedLinear`: a binary layer on ±1 inputs, its weights
  packed into 64-bit words along the input channels of each group, computed as
  :math:`y = 2\,\mathrm{popcount}(\overline{x \oplus w}) - K` with :math:`K` the fan-in;
- :class:`MaxPoolInt`: max-pool on the integer popcount (before the threshold, where the
  trained block pools);
- :class:`Threshold`: the block's (norm, act) pair as integer thresholds, one per
  channel (sign) or per channel and position class (DeSign);
- the head: the classifier's norm on the integer output (a per-class scale and shift) or
  a float linear layer (typed float ops, as the input stage).

No trained :class:`~torch.nn.Module` stays in the program: every reader (this reference
run, the packed engine, the file format, ONNX, QONNX, C) reads the same op types, and
the float stages record the paths of the trained layers they came from
(:meth:`DeployedModel.reference`).

**Padding.** The trained model pads its ±1 activations with 0, a value no bit can hold.
The packed layer pads with bit 0 (that is, −1) and adds back, at every output position,
the contribution of the padded taps: :math:`+\sum_{\text{padded taps}} w` (a fixed
integer map per output channel and position, :attr:`PackedConv.border`), as Larq Compute
Engine corrects its zero padding. Channel padding of the last 64-bit word uses bit 0 in
the input and bit 1 in the weights, so :math:`\overline{0 \oplus 1} = 0` adds nothing.

**Thresholds by enumeration.** PyTorch evaluates batch norm in float32; folding it in
float64 (:mod:`binsense.deploy.folding`) equals exact arithmetic but can disagree with
float32 for an integer within rounding of a threshold. So the deployed thresholds are
found by evaluating the trained (norm, act) modules themselves on every integer the
layer can output (:math:`-K..K`, per position class for DeSign): the engine then agrees
with the PyTorch model on every input, bit for bit, by construction. Whether a pair folds
at all is one table (:func:`~binsense.layers.folds.fold_problem`); its float64 rule
(:func:`~binsense.deploy.folding.fold_pair`) gives the same integers except where float32
rounds the norm's output onto a threshold (a test shows both).

This is the reference engine (PyTorch integer and bitwise ops, exact, not fast); the
run-time-dispatched XNOR-popcount kernels and the file format build on its ops.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from binsense.deploy import floatops, ir, kernels
from binsense.deploy.engine import PackedEngine
from binsense.deploy.shapes import BYTES_PER_ELEMENT, checked_shape, numel, op_footprint
from binsense.encoders.base import FloatEncoder
from binsense.errors import BinsenseError, one_line, unit_range_problem
from binsense.layers.binary import BinaryConv2d, is_binary_layer
from binsense.layers.block import BinaryBlock, ResidualUnit
from binsense.layers.design import DeSign
from binsense.layers.folds import fold_problem, pair_folds
from binsense.layers.shape import ChannelShuffle
from binsense.quant.sign import SignQuantizer


def model_input(x: Tensor) -> Tensor:
    """A deployed model's input, checked: float images in [0, 1], or uint8 ADC codes.

    The program reads images as the data pipeline gives them to the trained model:
    float ``pixel / 255`` (:mod:`binsense.data`), which a binary encoder turns back into
    the 8-bit code. Anything else would be misread without a word: integer pixels
    0..255 are all "full scale" after the ADC's clip, a NaN becomes code -2^63 (an index
    error in the code table) or one arbitrary class. So:

    - a uint8 tensor holds ADC codes and becomes ``x.float() / 255`` exactly as the data
      pipeline computes it (the same logits as the float images);
    - any other integer (or bool) dtype is refused: its scale is unknown;
    - float images must be finite and within [0, 1] (no mean/std normalisation),
      checked in one ``aminmax`` pass per batch (a NaN makes both bounds NaN; an
      infinity shows as a bound), as :class:`binsense.noise.SensorNoise` checks its input.
    """
    if not isinstance(x, Tensor):
        raise BinsenseError(
            f"a deployed model takes a torch.Tensor of images (B, C, H, W), got {type(x).__name__}."
        )
    if x.dtype == torch.uint8:  # ADC codes: as the data pipeline makes them [0, 1] floats
        return x.to(torch.float32).div_(255.0)
    if not x.is_floating_point():
        raise BinsenseError(
            f"a deployed model takes float images in [0, 1] or uint8 codes, got dtype "
            f"{x.dtype}; convert first, e.g. x.to(torch.uint8) for 8-bit pixels or "
            "x.float() / 255."
        )
    what = unit_range_problem(x)
    if what is not None:
        raise BinsenseError(
            f"a deployed model takes images in [0, 1] (pixel / 255), got {what}; pass "
            "pixel / 255 without mean/std normalisation (or uint8 codes), and no NaN."
        )
    return x


@dataclass
class DeployedModel:
    """The integer program: ``ops`` in order; ``forward`` gives the logits.

    Every entry point (calling it, :meth:`predict`, :meth:`run_ops`, :meth:`trace`)
    takes float images in [0, 1] or uint8 ADC codes and refuses anything else with one
    line (:func:`model_input`).
    """

    ops: ir.OpList
    source: str = ""
    #: (trained binary layer, its packed op) pairs, in forward order, for layer checks.
    layers: list[tuple[nn.Module, ir.Op]] = field(default_factory=list)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        """The logits: by the packed engine where the C kernel runs
        (:class:`binsense.deploy.engine.PackedEngine`, bits between binary layers), else
        by the op list (:meth:`run_ops`); both give the same integers."""
        x = self._input(x)
        if not kernels.runs(x):
            return self.ops(x)
        engine = self.__dict__.get("_engine")
        if engine is None:
            engine = self.__dict__["_engine"] = PackedEngine(self.ops)
        return engine(x)

    @torch.no_grad()
    def run_ops(self, x: Tensor, observe: ir.Observer | None = None) -> Tensor:
        """The logits by the op list, op by op on ±1 / integer NCHW tensors (the
        reference the packed engine is checked against); ``observe(op, out)`` after
        each op (:meth:`binsense.deploy.ir.OpList.__call__`)."""
        return self.ops(self._input(x), observe)

    def _input(self, x: Tensor) -> Tensor:
        """:func:`model_input`, and images of a shape the program fits: the first batch of
        each shape is walked (:meth:`activation_shapes`), so a wrong channel count or size
        is one line naming the op, never garbage from a kernel that trusts its shapes."""
        x = model_input(x)
        fitted = self.__dict__.setdefault("_fitted_shapes", set())
        shape = tuple(x.shape[1:])
        if shape not in fitted:
            self.activation_shapes(shape)
            fitted.add(shape)
        return x

    def float_stages(self) -> list[ir.FloatStage]:
        """The float stages (first layer, head, a residual unit's float parts): typed ops
        run in the order of :mod:`binsense.deploy.floatops`."""
        return [op for op in self.ops.walk() if isinstance(op, ir.FloatStage)]

    def float_layers(self, model: nn.Module) -> list[nn.Module]:
        """The conv and linear layers of the trained ``model`` that this program's float
        stages were lowered from (their recorded paths,
        :attr:`~binsense.deploy.ir.FloatStage.sources`)."""
        layers = []
        for path in (p for stage in self.float_stages() for p in stage.sources):
            try:
                layers.append(model.get_submodule(path))
            except AttributeError:
                raise BinsenseError(
                    f"the model has no layer {path!r}, which the deployed program's float "
                    "stage came from: compare a program with the model it was converted from."
                ) from None
        return layers

    @torch.no_grad()
    def reference(self, model: nn.Module, x: Tensor) -> Tensor:
        """The trained ``model``'s logits on ``x`` with its float layers summed in the
        deployed order (:func:`~binsense.deploy.floatops.ordered`): what the deployed
        logits equal bit for bit."""
        with floatops.ordered(*self.float_layers(model)):
            return model.eval()(x)

    @torch.no_grad()
    def trace(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        """Each op's name and output, in order (for per-layer comparisons)."""
        x = self._input(x)
        for name, op in self.ops.named():
            x = op(x)
            yield name, x

    def predict(self, x: Tensor) -> Tensor:
        """The predicted classes: the argmax of the logits (input as for calling it)."""
        return self(x).argmax(1)

    def _walk(self, input_shape, workspace: bool) -> list[tuple[tuple[int, ...], int]]:
        """``(output shape, peak elements)`` of every op on one image (:func:`op_footprint`);
        the first op that does not fit its input is one :class:`BinsenseError` line."""
        shape = checked_shape(input_shape)
        shown = "x".join(map(str, shape))
        steps = []
        for name, op in self.ops.named():
            try:
                out, peak = op_footprint(op, shape, workspace)
            except BinsenseError as e:
                raise BinsenseError(
                    f"the deployed program cannot run on images of shape {shown}: op {name!r}: "
                    f"{str(e).rstrip('.')}; give images of the size it was built for."
                ) from None
            steps.append((out, peak))
            shape = out
        return steps

    def activation_shapes(self, input_shape: tuple[int, int, int]) -> list[tuple[int, ...]]:
        """The output shape (no batch axis) of every op for images ``input_shape``
        (``C, H, W``), from the ops' parameters: no packed op runs, a float stage runs on
        the meta device (no memory). Every geometry field is checked against the input:
        a channel count, fan-in or map size that does not fit, or an op type the walk
        does not know, is one :class:`BinsenseError` line naming the op."""
        return [shape for shape, _ in self._walk(input_shape, False)]

    def memory_bytes(
        self, input_shape: tuple[int, int, int], batch: int = 1, *, workspace: bool | None = None
    ) -> int:
        r"""Estimated activation memory (bytes) of running this program on ``batch``
        images of ``input_shape`` (``C, H, W``), from :meth:`activation_shapes`' walk:

        .. math:: \text{bytes} = 8 \, B \, \max_i \,(\text{in}_i + \text{out}_i
                  + \text{work}_i)

        with :math:`B` the batch, :math:`\text{in}_i` and :math:`\text{out}_i` the
        elements of one image's input and output of op :math:`i` (the ops run one after
        the other, so one op's input and output are alive at a time; a float stage counts
        its input plus its largest module's input and output, a residual unit the stream,
        its largest part, and its branch and shortcut at the sum), and 8 bytes an element:
        int64, the widest intermediate. With ``workspace`` (default: when the C kernel
        does not run, :func:`binsense.deploy.kernels.backend` ``"torch"``),
        :math:`\text{work}_i` adds the PyTorch fallback's temporaries: for a packed conv
        or linear layer its input bits, padded to whole words, three times over (the
        padded copy, the bits as int64, shifted), four copies of one tap's XNOR words
        (:math:`C_\text{out}/G \cdot H' W' \cdot` words: the XNOR and the popcount's
        steps) and, for a conv, its output again (the int32 sums); for a float conv or
        linear layer four float64 copies of its output (the exact FMA). It is 0 on the C
        path, whose buffers hold words (64 activations each). Measured peaks of resident
        memory (VGG-small, the compact BNN and the ResNet-18 BNN, at batch 64 on the
        PyTorch path and 250 on the C path) were 0.1 to 0.7 times the estimate.

        An upper-ish estimate: the activations are int8 (±1), int32 (popcounts) or
        float32, so 8 bytes an element leaves room for the short-lived copies an op makes
        (a dtype conversion, a padded map). Not counted: the program's weights (in memory
        once it is loaded), a PyTorch model run beside it (``deploy --check``), and the
        allocator's own overhead.
        """
        batch = ir.plain_int(batch, "batch")
        if workspace is None:
            workspace = kernels.backend() == "torch"
        steps = self._walk(input_shape, workspace)
        peak = max([numel(checked_shape(input_shape)), *(p for _, p in steps)])
        return BYTES_PER_ELEMENT * batch * peak

    def check_memory(
        self,
        input_shape: tuple[int, int, int],
        batch: int = 1,
        *,
        what: str | None = None,
        allow: bool | None = None,
        available: int | None = None,
        workspace: bool | None = None,
        fix: str = "give fewer images at a time",
    ) -> int:
        """Refuse to run on ``batch`` images of ``input_shape`` before any op runs: the
        geometry walk (:meth:`activation_shapes`; :class:`BinsenseError`), then
        :func:`binsense.resources.check_fits` on :meth:`memory_bytes` (a
        :class:`~binsense.resources.ResourceError` line naming ``--allow-large``;
        ``allow`` or ``$BINSENSE_ALLOW_LARGE`` skip it, ``available`` overrides the
        measured memory; ``fix``: what the refusal tells the user to do first). Returns
        the estimate in bytes."""
        from binsense.resources import check_fits

        needed = self.memory_bytes(input_shape, batch, workspace=workspace)
        if what is None:
            shown = "x".join(map(str, checked_shape(input_shape)))
            what = (
                f"running the deployed {self.source or 'program'} on a batch of {batch} "
                f"images of shape {shown}"
            )
        check_fits(needed, device="cpu", what=what, allow=allow, available=available, fix=fix)
        return needed


def _binary_input_block(block: BinaryBlock) -> bool:
    return is_binary_layer(block.conv) and pair_folds(block.norm, block.act)


def _block_ops(
    block: BinaryBlock, name: str, path: str, ops: dict[str, ir.Op], layers: list
) -> None:
    conv = block.conv
    packed: ir.PackedConv | ir.PackedLinear = (
        ir.PackedConv.of(conv) if isinstance(conv, BinaryConv2d) else ir.PackedLinear.of(conv)
    )
    ops[f"{name}_conv"] = packed
    layers.append((conv, packed))
    if block.pool is not None:
        if not isinstance(block.pool, nn.MaxPool2d):
            raise BinsenseError(f"block {name}: only max-pools deploy on integers.")
        ops[f"{name}_pool"] = ir.MaxPoolInt.of(block.pool)
    if pair_folds(block.norm, block.act):
        channels = conv.out_channels if isinstance(conv, BinaryConv2d) else conv.out_features
        spatial = isinstance(conv, BinaryConv2d)
        ops[f"{name}_threshold"] = ir.Threshold.of(
            block.norm, block.act, packed.fan_in, channels, spatial
        )
    elif isinstance(block.act, nn.Identity):  # the classifier: its norm on the integers
        ops[f"{name}_norm"] = ir.FloatStage.lower([(f"{path}.norm", block.norm)], packed.fan_in)
    else:
        problem = fold_problem(block.norm, block.act)
        raise BinsenseError(
            f"block {name}: its (norm, activation) pair does not deploy: {problem}."
        )


def convert(model: nn.Module) -> DeployedModel:
    """A trained recipe model (eval mode) as an integer program (module docstring).

    Supports the plain recipes (MNIST BNN, VGG-small, CNV, the compact grouped BNN, with
    DeSign, groups, any norm, k-bit BN, binary encoders) and the ResNet-18 BNN (binary
    residual units on a float residual stream). The float CIFAR baselines have nothing
    binary to deploy and raise a clear :class:`BinsenseError`.
    """
    from binsense.models.recipe import RecipeModel

    if not isinstance(model, RecipeModel):
        raise BinsenseError("convert() takes a binsense recipe model (build_model / load_model).")
    model = model.eval()
    if not any(is_binary_layer(m) for m in model.modules()):
        raise BinsenseError("this model has no binary layer: there is nothing to deploy.")
    ops: dict[str, ir.Op] = {}
    layers: list[tuple[nn.Module, ir.Op]] = []
    pending: list[tuple[str, nn.Module]] = []
    if isinstance(model.encoder, FloatEncoder):
        pending.append(("encoder", model.encoder))
        stream = "float"
    else:
        if not getattr(model.encoder, "binary", False):
            raise BinsenseError(f"encoder {type(model.encoder).__name__} does not deploy.")
        ops["input"] = ir.PlanesInput.of(model.encoder)
        stream = "binary"
    for i, module in enumerate(model.blocks):
        name, path = f"b{i}", f"blocks.{i}"
        if isinstance(module, ResidualUnit):
            if pending:
                ops["input"] = ir.FloatStage.lower(pending)
                pending = []
            if stream != "float":
                raise BinsenseError(f"residual unit {name} needs a real residual stream.")
            op = ir.ResidualOp.of(module, path)
            ops[name] = op
            layers += [(module.block1.conv, op.conv1), (module.block2.conv, op.conv2)]
        elif isinstance(module, BinaryBlock) and stream == "binary":
            if not _binary_input_block(module):
                raise BinsenseError(f"block {name} is not a binary block (binary conv + sign).")
            _block_ops(module, name, path, ops, layers)
        elif isinstance(module, BinaryBlock):  # the float first block (and encoder)
            pending.append((path, module))
            if isinstance(module.act, SignQuantizer | DeSign):
                ops["input"] = ir.FloatStage.lower(pending)
                ops["input_sign"] = ir.ToInt8()
                pending, stream = [], "binary"
            elif not isinstance(module.act, nn.Identity):
                raise BinsenseError(f"the float block {name} must end in a sign or nothing.")
        elif isinstance(module, nn.Flatten):
            ops[name] = ir.FlattenOp()
        elif isinstance(module, ChannelShuffle):
            ops[name] = ir.Shuffle(module.groups)
        else:
            raise BinsenseError(f"{type(module).__name__} at blocks.{i} does not deploy.")
    if pending:
        raise BinsenseError("the model ends in float blocks before its head: nothing binary.")
    head = model.head
    if isinstance(head, BinaryBlock) and is_binary_layer(head.conv) and stream == "binary":
        if isinstance(head.conv, BinaryConv2d):  # the compact model's 1x1 conv head
            ops["head_conv"] = ir.PackedConv.of(head.conv)
            layers.append((head.conv, ops["head_conv"]))
            rest = [(f"head.{n}", getattr(head, n)) for n in ("pool", "norm")]
            ops["head_rest"] = ir.FloatStage.lower(
                [(p, m) for p, m in rest if m is not None], ops["head_conv"].fan_in
            )
        else:
            _block_ops(head, "head", "head", ops, layers)
    else:
        ops["head"] = ir.FloatStage.lower([("head", head)], 1 if stream == "binary" else 0)
    return DeployedModel(ir.OpList(ops), type(model).__name__, layers)


# ---------------------------------------------------------------- exactness check


@dataclass
class CheckResult:
    """Engine vs PyTorch on a data set: counts of disagreements."""

    images: int
    prediction_mismatches: int
    logit_mismatches: int
    layers: int
    layer_mismatches: dict[str, int]
    #: images whose logits from the packed engine differ from the op list's (0 expected).
    engine_mismatches: int = 0

    @property
    def exact(self) -> bool:
        return (
            self.prediction_mismatches == 0
            and self.engine_mismatches == 0
            and not any(self.layer_mismatches.values())
        )

    def line(self) -> str:
        exact_layers = sum(1 for v in self.layer_mismatches.values() if v == 0)
        return (
            f"{self.images} images: predictions differ on {self.prediction_mismatches}, logits "
            f"differ on {self.logit_mismatches}; binary layers bit-exact {exact_layers}/"
            f"{self.layers}; packed engine vs op list: {self.engine_mismatches} differ"
        )


#: Test images :func:`exact_program` is checked on before a program stands in for its model.
EXACT_CHECK_IMAGES = 16


@torch.no_grad()
def exact_program(model: nn.Module, x: Tensor) -> tuple[DeployedModel | None, str]:
    """The deployed program of ``model`` if it gives the model's logits on ``x`` bit for
    bit (against :meth:`DeployedModel.reference`, the deployed contract), else ``None``
    and why, in one line: the model does not deploy (:func:`convert` refuses it), or
    its logits differ (a deploy bug). A quick gate for using the engine in place of the
    model on a whole test set (the study runner's ``engine = "binsense"``, the trainer's
    ``eval_engine``); :func:`check_exact` is the full check."""
    try:
        program = convert(model)
    except BinsenseError as e:
        return None, f"the model does not deploy: {one_line(e)}"
    with torch.no_grad():
        if torch.equal(program.reference(model, x), program(x)):
            return program, ""
    return None, (
        "its logits differ from the PyTorch model's on the first test images (a deploy "
        "bug: please report it)"
    )


def check_exact(model: nn.Module, loader, deployed: DeployedModel | None = None) -> CheckResult:
    """Run ``model`` (eval mode) and its :func:`convert` on every batch of ``loader``
    (pairs ``(images in [0, 1], labels)``) and count disagreements: predictions, logits
    (bitwise), and each binary layer's integer output against the PyTorch layer's (the
    op list, :meth:`DeployedModel.run_ops`); and the packed engine's logits against the
    op list's (where the C kernel runs). The reference is the trained model with its
    float layers (those the deployed model shares) summed in the deployed model's one
    order (:func:`binsense.deploy.floatops.ordered`): PyTorch's own order depends on
    the batch size and the CPU, so its last bits are not a contract."""
    model = model.eval()
    deployed = deployed if deployed is not None else convert(model)
    float_layers = deployed.float_layers(model)
    seen: dict[int, Tensor] = {}

    def observe(op, out) -> None:
        seen[id(op)] = out

    hooks = [
        trained.register_forward_hook(lambda m, i, o: observe(m, o))
        for trained, _ in deployed.layers
    ]
    names = [f"{i}:{type(t).__name__}" for i, (t, _) in enumerate(deployed.layers)]
    mismatches = dict.fromkeys(names, 0)
    images = pred = logit = engine = 0
    try:
        for x, _ in loader:
            seen.clear()
            with floatops.ordered(*float_layers):
                ref = model(x)
            out = deployed.run_ops(x, observe)
            fast = deployed(x)
            engine += int((fast != out).flatten(1).any(1).sum())
            for name, (trained, packed) in zip(names, deployed.layers, strict=True):
                a, b = seen[id(trained)], seen[id(packed)]
                mismatches[name] += int((b.to(a.dtype) != a).flatten(1).any(1).sum())
            images += x.shape[0]
            pred += int((ref.argmax(1) != out.argmax(1)).sum())
            logit += int((ref != out).flatten(1).any(1).sum())
    finally:
        for h in hooks:
            h.remove()
    return CheckResult(images, pred, logit, len(names), mismatches, engine)


__all__ = [
    "EXACT_CHECK_IMAGES",
    "CheckResult",
    "DeployedModel",
    "check_exact",
    "convert",
    "exact_program",
    "model_input",
]
