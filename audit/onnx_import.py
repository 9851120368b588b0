"""A classifier shipped as an ONNX file: onnxruntime for reference scores, a torch module for gradients.

Loading runs no code from the file. An ONNX model is a protobuf, plain data: it is parsed with
`onnx.load_model(format="protobuf", load_external_data=False)`, so a file named `.json` or `.txt`
is not read in another format and no tensor data is read yet. External tensor data (what
`torch.onnx.export` writes beside the model, `model.onnx.data`) is then read tensor by tensor, and
only from a regular file whose resolved location (symlinks followed) lies in the model's own folder:
a crafted `location` (`../../home/.ssh/id_rsa`, an absolute path, a symlink out) is refused before
anything is opened, whatever the installed onnx version checks itself. onnxruntime gets the checked
model as bytes, so it opens no file of its own, and no custom-op library is registered, so a node
cannot load native code: an op outside onnxruntime's kernels fails to load. The cost: a model over
protobuf's 2 GB limit cannot be loaded.

The torch module comes from Kansa's own converter for the ops small classifiers use: onnx2pytorch
(0.6.0) imports torchvision, which cannot be installed beside Kansa's CPU torch, and fails on
BatchNormalization as torch.onnx exports it. Conv and Gemm with constant weights become
`nn.Conv*d` / `nn.Linear` layers, so pruning and dynamic quantization find them. Every conversion is
checked against onnxruntime on the audited samples; when the graph uses an op the converter lacks
or the two disagree, `module` is None, `reason` says why, and only gradient-free attacks can run,
through `OnnxModel.scores`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from audit.errors import ModelError, describe_exception

if TYPE_CHECKING:
    import onnx
    import onnxruntime
    import torch

EXTRA_HINT = "kind = \"onnx\" needs the onnx extra: pip install 'kansa[onnx]'"
# Float32 rounding grows with the outputs' magnitude, so the tolerance is absolute up to |output| = 1, relative above.
ABSOLUTE_TOLERANCE = 1e-4
BATCH_SIZE = 256
_DYNAMIC_BATCH_HINT = (
    'export it with a dynamic batch axis: torch.onnx.export(model, (example,), PATH, input_names=["x"], '
    'dynamic_axes={"x": {0: "batch"}}), or with dynamo=True: dynamic_shapes=({0: torch.export.Dim("batch")},)'
)
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class OnnxModel:
    """An ONNX classifier: `module` for white-box attacks (None when `reason` says why not), `scores` for the rest.

    `fixed_batch` is True for a graph exported with a batch of exactly one: `module` and `scores`
    then feed it one sample at a time, which computes the same function, only slower.
    """

    path: Path
    module: "torch.nn.Module | None"
    session: "onnxruntime.InferenceSession"
    input_name: str
    output_shape: tuple[int, ...]  # one sample's output, as onnxruntime returned it on the samples
    fixed_batch: bool
    max_abs_diff: float | None  # None when there is no torch module to compare
    tolerance: float
    reason: str | None

    def scores(self, x: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """The model's outputs on `x` through onnxruntime, in batches (the gradient-free attacks' oracle)."""
        if len(x) == 0:
            return np.zeros((0, *self.output_shape), dtype=np.float32)
        step = 1 if self.fixed_batch else batch_size
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.concatenate([self.session.run(None, {self.input_name: x[i : i + step]})[0] for i in range(0, len(x), step)])


def load_onnx(path: Path, input_shape: tuple[int, ...], sample: np.ndarray) -> OnnxModel:
    """Load `path` for samples of `input_shape`, and check the torch conversion against onnxruntime on `sample`.

    `sample` should be the audited samples: agreement is only known where it was measured. A file
    that is not ONNX, or whose one float input does not fit `input_shape` with a free (or single)
    batch dimension, raises ModelError; a graph the converter cannot follow only sets `reason`.
    """
    onnx_lib, ort = _runtime()
    path = Path(path)
    model = _read(onnx_lib, path)
    input_name, fixed_batch = _check_signature(model, path, tuple(input_shape))
    session = _session(ort, model, path)
    sample = np.ascontiguousarray(sample if len(sample) else np.zeros((1, *input_shape)), dtype=np.float32)
    onnx_model = OnnxModel(path, None, session, input_name, (), fixed_batch, None, ABSOLUTE_TOLERANCE, None)
    try:
        reference = onnx_model.scores(sample)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"{path}: onnxruntime fails on inputs of shape {tuple(input_shape)} ({describe_exception(exc)})") from None
    onnx_model.output_shape = tuple(reference.shape[1:])
    onnx_model.tolerance = ABSOLUTE_TOLERANCE * max(1.0, float(np.abs(reference).max(initial=0.0)))
    try:
        module = _graph_module(model, input_name, fixed_batch)
        converted = _torch_outputs(module, sample)
    except _Unsupported as exc:
        onnx_model.reason = f"the ONNX graph uses {exc}, which Kansa cannot convert to torch"
        return onnx_model
    except Exception as exc:  # a torch op refusing the graph's shapes or types
        onnx_model.reason = f"the torch conversion fails on the samples ({describe_exception(exc)})"
        return onnx_model
    if converted.shape != reference.shape:
        onnx_model.reason = f"the torch conversion returns shape {converted.shape[1:]} where onnxruntime returns {reference.shape[1:]}"
        return onnx_model
    onnx_model.max_abs_diff = float(np.abs(converted.astype(np.float64) - reference).max())
    if not onnx_model.max_abs_diff <= onnx_model.tolerance:  # also catches NaN
        onnx_model.reason = (
            f"the torch conversion differs from onnxruntime by up to {onnx_model.max_abs_diff:.3g} on the samples "
            f"(tolerance {onnx_model.tolerance:.3g})"
        )
        return onnx_model
    onnx_model.module = module
    return onnx_model


class _Unsupported(Exception):
    """An op, or an attribute value of one, that the converter does not implement; the message names it."""


def _runtime() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ModelError(f"{EXTRA_HINT} ({exc.name} is not installed)") from None
    return onnx, onnxruntime


def _read(onnx_lib: Any, path: Path) -> "onnx.ModelProto":
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        model = onnx_lib.load_model(str(path), format="protobuf", load_external_data=False)
        _load_external_data(model, path)
        onnx_lib.checker.check_model(model)
    except ModelError:
        raise
    except Exception as exc:  # protobuf's DecodeError, onnx's ValidationError, OSError
        raise ModelError(f"{path}: not a readable ONNX model ({describe_exception(exc)})") from None
    if model.functions:  # model-local functions: inline them so the converter sees standard ops only
        from onnx.inliner import inline_local_functions

        model = inline_local_functions(model)
    return model


def _load_external_data(model: "onnx.ModelProto", path: Path) -> None:
    """Read external tensor data, only from files inside the model's folder.

    Every tensor of the model is visited, not only initializers: onnxruntime, given bytes, would
    resolve a tensor left external against the working directory.
    """
    from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_tensor, uses_external_data

    folder = path.parent.resolve()  # beside the path given, as onnx and onnxruntime look
    for tensor in _all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        target = (folder / location).resolve()
        if not (target.is_relative_to(folder) and target.is_file()):
            raise ModelError(
                f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, which is not a file in the model's folder; "
                "Kansa reads external data only from there"
            )
        load_external_data_for_tensor(tensor, str(folder))


def _all_tensors(message: Any) -> Iterator["onnx.TensorProto"]:
    """Every TensorProto in a protobuf message: graphs, subgraphs, functions, attributes, sparse tensors."""
    from google.protobuf.message import Message
    from onnx import TensorProto

    if isinstance(message, TensorProto):
        yield message
        return
    for field, value in message.ListFields():
        if field.message_type is not None:
            for item in [value] if isinstance(value, Message) else value:
                yield from _all_tensors(item)


def _check_signature(model: "onnx.ModelProto", path: Path, input_shape: tuple[int, ...]) -> tuple[str, bool]:
    """The one float input fits the data; returns its name and whether its batch is fixed to one."""
    from onnx import TensorProto

    constants = {tensor.name for tensor in model.graph.initializer}  # old IR versions list initializers as inputs too
    inputs = [value for value in model.graph.input if value.name not in constants]
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs) or "none"
        raise ModelError(f"{path}: the model takes {len(inputs)} inputs ({names}); Kansa calls a classifier with one batch tensor")
    outputs = model.graph.output
    if len(outputs) != 1:
        names = ", ".join(value.name for value in outputs)
        raise ModelError(f"{path}: the model has {len(outputs)} outputs ({names}); Kansa audits a classifier with one output of scores")
    tensor_type = inputs[0].type.tensor_type
    if tensor_type.elem_type != TensorProto.FLOAT:
        kind = TensorProto.DataType.Name(tensor_type.elem_type) if tensor_type.elem_type else "not a tensor"
        raise ModelError(f"{path}: the model's input {inputs[0].name!r} is {kind}; Kansa feeds float32 tensors")
    if not tensor_type.HasField("shape"):
        return inputs[0].name, False  # shape not declared: the check run on the samples decides
    declared: list[int | str] = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in tensor_type.shape.dim]
    shown = "[" + ", ".join(str(dim) for dim in declared) + "]"
    if len(declared) != len(input_shape) + 1 or any(isinstance(d, int) and d != e for d, e in zip(declared[1:], input_shape)):
        raise ModelError(f"{path}: the model expects inputs of shape {shown} but the data has samples of shape {input_shape}")
    batch = declared[0]
    if isinstance(batch, int) and batch != 1:
        raise ModelError(
            f"{path}: the model's input shape {shown} fixes the batch to {batch}, but Kansa calls it with batches of any size; "
            + _DYNAMIC_BATCH_HINT
        )
    return inputs[0].name, batch == 1


def _session(ort: Any, model: "onnx.ModelProto", path: Path) -> "onnxruntime.InferenceSession":
    import torch

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are about graph optimisations
    options.intra_op_num_threads = torch.get_num_threads()  # the thread budget torch has (one per Ray task)
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's Fail / InvalidGraph / NotImplemented, protobuf's 2 GB limit
        raise ModelError(f"{path}: onnxruntime cannot load the model ({describe_exception(exc)})") from None


def _torch_outputs(module: "torch.nn.Module", x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(x[i : i + BATCH_SIZE])).numpy() for i in range(0, len(x), BATCH_SIZE)])


def _attributes(node: "onnx.NodeProto") -> dict[str, Any]:
    from onnx import AttributeProto, helper, numpy_helper

    values: dict[str, Any] = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if attribute.type == AttributeProto.TENSOR:
            value = numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode()
        values[attribute.name] = value
    return values


def _constant(attributes: dict[str, Any]) -> np.ndarray:
    [(key, value)] = attributes.items()
    dtypes = {"value": None, "value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    if key not in dtypes:
        raise _Unsupported(f"Constant with {key}")
    return np.array(value, dtype=dtypes[key])


def _graph_module(model: "onnx.ModelProto", input_name: str, fixed_batch: bool) -> "torch.nn.Module":
    """The graph as a torch module: its nodes in the file's (topological) order, initializers as parameters."""
    import torch
    from onnx import numpy_helper
    from torch import nn

    opset = next((entry.version for entry in model.opset_import if entry.domain in _DEFAULT_DOMAINS), 1)
    ops = _ops(opset)
    unknown = [node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}" for node in model.graph.node
               if node.domain not in _DEFAULT_DOMAINS or (node.op_type not in ops and node.op_type != "Constant")]
    if unknown:
        *others, last = dict.fromkeys(unknown)
        raise _Unsupported(f"{', '.join(others)} and {last}" if others else last)
    used = {name for node in model.graph.node for name in node.input} | {value.name for value in model.graph.output}
    for node in model.graph.node:
        extra = [name for name in node.output[1:] if name in used]
        if extra:
            raise _Unsupported(f"{node.op_type} with its optional output {extra[0]!r}")
    arrays = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    # Batch norm's running statistics are state, not weights: buffers, as in torch, and not differentiable.
    statistics = {name for node in model.graph.node if node.op_type == "BatchNormalization" for name in node.input[3:5]}
    shared: dict[str, nn.Parameter] = {}

    def parameter(name: str) -> nn.Parameter:
        """One parameter per initializer, shared by every layer and op that reads it."""
        if name not in shared:
            shared[name] = nn.Parameter(torch.from_numpy(np.array(arrays[name])))
        return shared[name]

    class OnnxGraph(nn.Module):
        """Runs the nodes with torch ops; a batch-one graph runs once per sample."""

        def __init__(self) -> None:
            super().__init__()
            self.weights = nn.Module()  # initializers and constants the functional ops read
            self.layers = nn.ModuleDict()  # Conv and Gemm with constant weights, as nn layers
            self.fixed_batch = fixed_batch
            self._slots: dict[str, str] = {}
            self._steps: list[tuple[str, list[str], str, dict[str, Any], str | None]] = []
            for node in model.graph.node:
                attributes = _attributes(node)
                if node.op_type == "Constant":
                    self._store(node.output[0], _constant(attributes))
                    continue
                layer = _layer(node, attributes, arrays, parameter)
                key = None
                if layer is not None:
                    key = f"n{len(self.layers)}"
                    self.layers[key] = layer
                    inputs = [node.input[0]]
                else:
                    inputs = list(node.input)
                    for name in inputs:
                        if name in arrays and name not in self._slots:
                            self._store(name, arrays[name])
                self._steps.append((node.op_type, inputs, node.output[0], attributes, key))
            self._input = input_name
            self._output = model.graph.output[0].name
            self._ops = ops

        def _store(self, name: str, array: np.ndarray) -> None:
            slot = f"t{len(self._slots)}"
            if array.dtype.kind == "f" and name in arrays and name not in statistics:
                self.weights.register_parameter(slot, parameter(name))
            else:
                self.weights.register_buffer(slot, torch.from_numpy(np.array(array)))
            self._slots[name] = slot

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.to(torch.float32)
            if self.fixed_batch:
                return torch.cat([self._run(x[i : i + 1]) for i in range(len(x))])
            return self._run(x)

        def _run(self, x: torch.Tensor) -> torch.Tensor:
            values: dict[str, Any] = {name: getattr(self.weights, slot) for name, slot in self._slots.items()}
            values[self._input] = x
            for op, inputs, output, attributes, layer in self._steps:
                args = [values[name] if name else None for name in inputs]
                values[output] = self.layers[layer](args[0]) if layer else self._ops[op](args, attributes)
            return values[self._output]

    return OnnxGraph().eval()


def _pads(attributes: dict[str, Any], n: int, op: str) -> list[int]:
    auto_pad = attributes.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        raise _Unsupported(f"{op} with auto_pad = {auto_pad}")
    return [0] * 2 * n if auto_pad == "VALID" else list(attributes.get("pads", [0] * 2 * n))


def _layer(node: "onnx.NodeProto", attributes: dict[str, Any], arrays: dict[str, np.ndarray],
           parameter: Callable[[str], Any]) -> "torch.nn.Module | None":
    """Conv or Gemm with constant weights as the nn layer torch would have exported from, or None for the functional op."""
    from torch import nn

    inputs = list(node.input) + [""] * 3
    weight, bias = inputs[1], inputs[2]
    if weight not in arrays or (bias and bias not in arrays):
        return None
    if node.op_type == "Gemm":
        if attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0 or attributes.get("transA", 0) \
                or not attributes.get("transB", 0) or (bias and arrays[bias].shape != arrays[weight].shape[:1]):
            return None
        layer: nn.Module = nn.Linear(arrays[weight].shape[1], arrays[weight].shape[0], bias=bool(bias), device="meta")
    elif node.op_type == "Conv" and arrays[weight].ndim in (3, 4, 5):
        n = arrays[weight].ndim - 2
        pads = _pads(attributes, n, "Conv")
        if pads[:n] != pads[n:]:
            return None
        group = attributes.get("group", 1)
        layer = getattr(nn, f"Conv{n}d")(
            arrays[weight].shape[1] * group, arrays[weight].shape[0], arrays[weight].shape[2:], stride=attributes.get("strides", 1),
            padding=pads[:n], dilation=attributes.get("dilations", 1), groups=group, bias=bool(bias), device="meta",
        )
    else:
        return None
    layer.weight = parameter(weight)
    if bias:
        layer.bias = parameter(bias)
    return layer


_DTYPES = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}


def _ops(opset: int) -> dict[str, Callable[[list[Any], dict[str, Any]], Any]]:
    """The ONNX ops the converter implements, each `(inputs, attributes) -> tensor` with ONNX's semantics at `opset`."""
    import torch
    import torch.nn.functional as F

    def ints(tensor: Any) -> list[int] | None:
        return None if tensor is None else [int(v) for v in tensor.reshape(-1).tolist()]

    def axes_of(a: list[Any], k: dict[str, Any], since: int) -> list[int] | None:
        """Axes moved from an attribute to the second input at opset `since`."""
        return ints(a[1] if len(a) > 1 else None) if opset >= since else k.get("axes")

    def conv(a: list[Any], k: dict[str, Any]) -> Any:
        x, w, b = (a + [None])[:3]
        n = w.dim() - 2
        pads = _pads(k, n, "Conv")
        if pads[:n] != pads[n:]:  # torch pads symmetrically: pad first, in F.pad's last-dim-first order
            x = F.pad(x, [p for i in reversed(range(n)) for p in (pads[i], pads[i + n])])
            pads = [0] * 2 * n
        conv_nd = getattr(F, f"conv{n}d")
        return conv_nd(x, w, b, k.get("strides", 1), pads[:n], k.get("dilations", 1), k.get("group", 1))

    def pool(op: str) -> Callable[[list[Any], dict[str, Any]], Any]:
        def run(a: list[Any], k: dict[str, Any]) -> Any:
            kernel = k["kernel_shape"]
            n = len(kernel)
            pads = _pads(k, n, op)
            if pads[:n] != pads[n:]:
                raise _Unsupported(f"{op} with asymmetric pads")
            strides, ceil = k.get("strides", [1] * n), bool(k.get("ceil_mode", 0))
            if op == "MaxPool":
                if k.get("storage_order", 0):
                    raise _Unsupported("MaxPool with storage_order = 1")
                return getattr(F, f"max_pool{n}d")(a[0], kernel, strides, pads[:n], k.get("dilations", 1), ceil_mode=ceil)
            if any(d != 1 for d in k.get("dilations", [])):
                raise _Unsupported("AveragePool with dilations")
            return getattr(F, f"avg_pool{n}d")(a[0], kernel, strides, pads[:n], ceil_mode=ceil,
                                               count_include_pad=bool(k.get("count_include_pad", 0)))
        return run

    def gemm(a: list[Any], k: dict[str, Any]) -> Any:
        x, w, c = (a + [None])[:3]
        x = x.T if k.get("transA", 0) else x
        w = w.T if k.get("transB", 0) else w
        y = k.get("alpha", 1.0) * (x @ w)
        return y if c is None else y + k.get("beta", 1.0) * c

    def batch_norm(a: list[Any], k: dict[str, Any]) -> Any:
        if k.get("training_mode", 0):
            raise _Unsupported("BatchNormalization in training mode")
        x, scale, bias, mean, var = a[:5]
        # detached: the exporter may share one initializer between statistics and weights (an untrained BN's 0s and 1s)
        return F.batch_norm(x, mean.detach(), var.detach(), scale, bias, training=False, eps=k.get("epsilon", 1e-5))

    def flat2d(x: Any, axis: int) -> Any:
        axis = axis + x.dim() if axis < 0 else axis
        return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))

    def softmax(fn: Callable[..., Any]) -> Callable[[list[Any], dict[str, Any]], Any]:
        def run(a: list[Any], k: dict[str, Any]) -> Any:
            if opset >= 13:
                return fn(a[0], dim=k.get("axis", -1))
            return fn(flat2d(a[0], k.get("axis", 1)), dim=1).reshape(a[0].shape)  # before 13: over all axes from `axis` on
        return run

    def reshape(a: list[Any], k: dict[str, Any]) -> Any:
        x, shape = a[0], ints(a[1])
        if not k.get("allowzero", 0):
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return x.reshape(shape)

    def gather(a: list[Any], k: dict[str, Any]) -> Any:
        x, index = a[0], a[1].long()
        axis = k.get("axis", 0) % x.dim()
        index = torch.where(index < 0, index + x.shape[axis], index)
        return x.index_select(axis, index.reshape(-1)).reshape((*x.shape[:axis], *index.shape, *x.shape[axis + 1:]))

    def unsqueeze(a: list[Any], k: dict[str, Any]) -> Any:
        x, axes = a[0], axes_of(a, k, 13)
        rank = x.dim() + len(axes)
        for axis in sorted(axis % rank for axis in axes):
            x = x.unsqueeze(axis)
        return x

    def squeeze(a: list[Any], k: dict[str, Any]) -> Any:
        axes = axes_of(a, k, 13)
        return a[0].squeeze() if axes is None else a[0].squeeze(tuple(axes))

    def slice_(a: list[Any], k: dict[str, Any]) -> Any:
        x = a[0]
        if opset >= 10:
            starts, ends, axes, steps = (ints(t) for t in (a + [None] * 4)[1:5])
        else:
            starts, ends, axes, steps = k["starts"], k["ends"], k.get("axes"), None
        index = [slice(None)] * x.dim()
        for axis, start, end, step in zip(axes or range(len(starts)), starts, ends, steps or [1] * len(starts)):
            if step < 0:
                raise _Unsupported("Slice with a negative step")
            index[axis] = slice(start, end, step)  # Python clamps out-of-range bounds as ONNX does
        return x[tuple(index)]

    def reduce(fn: Callable[..., Any], since: int) -> Callable[[list[Any], dict[str, Any]], Any]:
        def run(a: list[Any], k: dict[str, Any]) -> Any:
            axes = axes_of(a, k, since)
            if not axes and k.get("noop_with_empty_axes", 0):
                return a[0]
            return fn(a[0], dim=axes or list(range(a[0].dim())), keepdim=bool(k.get("keepdims", 1)))
        return run

    def cast(a: list[Any], k: dict[str, Any]) -> Any:
        if k["to"] not in _DTYPES:
            raise _Unsupported(f"Cast to type {k['to']}")
        return a[0].to(getattr(torch, _DTYPES[k["to"]]))

    def dropout(a: list[Any], k: dict[str, Any]) -> Any:
        if len(a) > 2 and a[2] is not None and bool(a[2]):
            raise _Unsupported("Dropout in training mode")
        return a[0]

    def div(a: list[Any], k: dict[str, Any]) -> Any:
        integer = not (a[0].is_floating_point() or a[1].is_floating_point())
        return torch.div(a[0], a[1], rounding_mode="trunc" if integer else None)

    def clip(a: list[Any], k: dict[str, Any]) -> Any:
        low, high = (a + [None] * 3)[1:3] if opset >= 11 else (k.get("min"), k.get("max"))
        return a[0] if low is None and high is None else torch.clamp(a[0], low, high)

    def unary(fn: Callable[[Any], Any]) -> Callable[[list[Any], dict[str, Any]], Any]:
        return lambda a, k: fn(a[0])

    def binary(fn: Callable[[Any, Any], Any]) -> Callable[[list[Any], dict[str, Any]], Any]:
        return lambda a, k: fn(a[0], a[1])

    spatial = lambda x: tuple(range(2, x.dim()))  # noqa: E731
    return {
        "Conv": conv, "MaxPool": pool("MaxPool"), "AveragePool": pool("AveragePool"),
        "GlobalAveragePool": unary(lambda x: x.mean(dim=spatial(x), keepdim=True)),
        "GlobalMaxPool": unary(lambda x: x.amax(dim=spatial(x), keepdim=True)),
        "Gemm": gemm, "MatMul": binary(torch.matmul), "BatchNormalization": batch_norm,
        "Add": binary(torch.add), "Sub": binary(torch.sub), "Mul": binary(torch.mul), "Div": div, "Pow": binary(torch.pow),
        "Relu": unary(torch.relu), "Sigmoid": unary(torch.sigmoid), "Tanh": unary(torch.tanh), "Erf": unary(torch.erf),
        "Exp": unary(torch.exp), "Log": unary(torch.log), "Sqrt": unary(torch.sqrt), "Neg": unary(torch.neg), "Abs": unary(torch.abs),
        "LeakyRelu": lambda a, k: F.leaky_relu(a[0], k.get("alpha", 0.01)),
        "Gelu": lambda a, k: F.gelu(a[0], approximate=k.get("approximate", "none")),
        "Clip": clip, "Softmax": softmax(torch.softmax), "LogSoftmax": softmax(torch.log_softmax),
        "Identity": unary(lambda x: x), "Dropout": dropout, "Cast": cast,
        "Flatten": lambda a, k: flat2d(a[0], k.get("axis", 1)), "Reshape": reshape,
        "Transpose": lambda a, k: a[0].permute(k.get("perm", list(reversed(range(a[0].dim()))))),
        "Squeeze": squeeze, "Unsqueeze": unsqueeze, "Concat": lambda a, k: torch.cat(a, dim=k["axis"]),
        "Shape": lambda a, k: torch.tensor(list(a[0].shape)[k.get("start", 0):k.get("end")], dtype=torch.int64),
        "Gather": gather, "Slice": slice_, "ReduceMean": reduce(torch.mean, 18), "ReduceSum": reduce(torch.sum, 13),
        "ReduceMax": reduce(torch.amax, 18), "ReduceMin": reduce(torch.amin, 18),
    }
