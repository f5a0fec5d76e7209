"""ONNX export (opset 21) of a finetuned LSQ or PTQ model with QuantizeLinear/DequantizeLinear pairs.

How each quantized tensor is stored (also written into every node's doc_string and into the
model's metadata_props under "mpq.layers"):

Every tensor goes into the narrowest integer type of opset 21 that holds its codes:
- weights of 2-4 bits: INT4 initializer -> DequantizeLinear (per tensor, or per channel on axis 0)
  when `int4` is on (INT8 otherwise); weights of 5-8 bits: INT8 initializer -> DequantizeLinear.
  The codes are the integers themselves, so the dequantized weight is scale * codes exactly;
- activations of 2-4 bits: QuantizeLinear -> DequantizeLinear with a UINT4 (INT4 when signed) zero
  point when `int4` is on, 5-8 bits the same with UINT8/INT8;
- an activation whose range is narrower than its container (e.g. 3 bits in UINT4): Clip to
  [(qmin - z) * s, (qmax - z) * s] first, then the QDQ pair at the same scale and zero point z,
  which rounds onto exactly the model's grid.
A layer's input quantizer sits in front of the layer; a PTQ module-output quantizer (BRECQ's
placement) on the module's output, named by the quantizer's module path (`layer1.0.act_out`).

Route: the model is copied with every quantized layer (and output quantizer) swapped for an export
module whose quantizer calls are marked by custom `mpq::` nodes naming the site (torch.onnx legacy
exporter, opset 20);
the marks are then rewritten into the standard nodes above and the opset raised to 21.
"""
from __future__ import annotations

import copy
import io
import json
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io import atomic_write_bytes
from ..quant.layers import QUANT_LAYERS
from ..quant.ptq_layers import OUTPUT_QUANTIZER, PTQ_LAYERS
from .quantized import ActQuant, ExportError, LayerRecord, OutputAct

OPSET = 21
CONTAINER_RANGES = {"int4": (-8, 7), "uint4": (0, 15), "int8": (-128, 127), "uint8": (0, 255)}
EXPORT_OPSET = 20           # the legacy exporter's highest; raised to OPSET after rewriting
FORMAT = "mpq-onnx/1"
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def _require_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError("ONNX export needs the 'onnx' package: pip install 'mpq[export]'") from None


# ------------------------------------------------------------------------------ export modules

class _MarkWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, layer):
        return w.clone()

    @staticmethod
    def symbolic(g, w, layer):
        out = g.op("mpq::QuantWeight", w, layer_s=layer)
        out.setType(w.type())
        return out


class _MarkAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, layer):
        # clamp(round(x / s) + z, qmin, qmax) - z, written without the add (the tracer's peephole
        # pass breaks on an add of 0 inside the marked node)
        return torch.clamp(torch.round(x / scale), qmin - zero_point, qmax - zero_point) * scale

    @staticmethod
    def symbolic(g, x, scale, zero_point, qmin, qmax, layer):
        out = g.op("mpq::QuantAct", x, layer_s=layer)
        out.setType(x.type())
        return out


class _ExportLayer(nn.Module):
    """A quantized conv/linear with its fake-quantized weight frozen in and marked quantizers."""

    def __init__(self, layer: nn.Module, rec: LayerRecord):
        super().__init__()
        self.name, self.is_conv = rec.name, rec.kind == "conv"
        w = rec.float_weight if rec.weight is None else rec.weight.dequantize()
        self.register_buffer("weight", torch.from_numpy(np.ascontiguousarray(w)))
        self.register_buffer("bias", None if rec.bias is None else torch.from_numpy(rec.bias))
        self.marked = rec.weight is not None
        self.act = rec.act
        if self.is_conv:
            self.conv_args = (layer.stride, layer.padding, layer.dilation, layer.groups)

    def forward(self, x):
        if self.act is not None:
            x = mark_act(x, self.act, self.name)
        w = _MarkWeight.apply(self.weight, self.name) if self.marked else self.weight
        if self.is_conv:
            return F.conv2d(x, w, self.bias, *self.conv_args)
        return F.linear(x, w, self.bias)


def mark_act(x, act: ActQuant, site: str):
    return _MarkAct.apply(x, act.scale, act.zero_point, act.qmin, act.qmax, site)


class _ExportOutputAct(nn.Module):
    """Stands in for a PTQ module-output quantizer (the module's forward hook calls it)."""

    def __init__(self, out: OutputAct):
        super().__init__()
        self.out = out

    def forward(self, x):
        return mark_act(x, self.out.act, self.out.site)


def export_module(model: nn.Module, records: list[LayerRecord], outputs: list[OutputAct] = ()) -> nn.Module:
    """A copy of `model` whose quantized layers and output quantizers are export modules (same
    outputs, float32, eval)."""
    clone = copy.deepcopy(model).cpu().float().eval()
    by_name = {r.name: r for r in records}
    for name, module in list(clone.named_modules()):
        if isinstance(module, (*QUANT_LAYERS, *PTQ_LAYERS)):
            parent_name, _, child = name.rpartition(".")
            parent = clone.get_submodule(parent_name) if parent_name else clone
            setattr(parent, child, _ExportLayer(module, by_name[name]))
    for out in outputs:
        clone.get_submodule(out.module).add_module(OUTPUT_QUANTIZER, _ExportOutputAct(out))
    return clone


# ---------------------------------------------------------------------------------- rewriting

def _act_storage(a: ActQuant | None, int4: bool) -> str | None:
    if a is None:
        return None
    narrow = int4 and a.bits <= 4
    container = ("int" if a.signed else "uint") + ("4" if narrow else "8")
    lo, hi = CONTAINER_RANGES[container]
    return container if (a.qmin, a.qmax) == (lo, hi) else "clip+" + container


def _storage(rec: LayerRecord, int4: bool) -> tuple[str | None, str | None]:
    """How the weight and the activation of one layer are stored (see the module docstring)."""
    w_store = None
    if rec.weight is not None:
        w = rec.weight
        lo, hi = CONTAINER_RANGES["int4"]
        w_store = "int4" if int4 and lo <= w.qmin and w.qmax <= hi else "int8"
    return w_store, _act_storage(rec.act, int4)


def _tensor(name: str, array: np.ndarray, dtype: str, doc: str = ""):
    from onnx import TensorProto, helper

    kind = {"float": TensorProto.FLOAT, "int8": TensorProto.INT8, "uint8": TensorProto.UINT8,
            "int4": TensorProto.INT4, "uint4": TensorProto.UINT4}[dtype]
    array = np.asarray(array)
    t = helper.make_tensor(name, kind, list(array.shape), array.flatten().tolist())
    if doc:
        t.doc_string = doc
    return t


def _attr(node, key: str) -> str:
    for a in node.attribute:
        if a.name == key:
            return a.s.decode()
    raise ExportError(f"internal: mark node {node.name} has no {key!r} attribute")


def _act_nodes(site: str, what: str, a: ActQuant, store: str, src: str, out: str) -> tuple[list, list]:
    """(nodes, initializers) of one activation quantizer: [Clip ->] QuantizeLinear -> DequantizeLinear."""
    from onnx import helper

    doc = (f"mpq layer={site} tensor={what} bits={a.bits} signed={a.signed} range=[{a.qmin},{a.qmax}] "
           f"zero_point={a.zero_point} storage={store}")
    container = store.split("+")[-1]
    inits = [_tensor(f"{site}.act_scale", np.float32(a.scale), "float"),
             _tensor(f"{site}.act_zero_point", np.array(a.zero_point), container)]
    nodes = []
    if store.startswith("clip+"):
        lo = np.float32((a.qmin - a.zero_point) * a.scale)
        hi = np.float32((a.qmax - a.zero_point) * a.scale)
        inits += [_tensor(f"{site}.act_clip_min", lo, "float"), _tensor(f"{site}.act_clip_max", hi, "float")]
        nodes.append(helper.make_node("Clip", [src, f"{site}.act_clip_min", f"{site}.act_clip_max"],
                                      [f"{site}/act_clipped"], name=f"{site}/act_clip", doc_string=doc))
        src = f"{site}/act_clipped"
    nodes.append(helper.make_node("QuantizeLinear", [src, f"{site}.act_scale", f"{site}.act_zero_point"],
                                  [f"{site}/act_int"], name=f"{site}/act_quantize", doc_string=doc))
    nodes.append(helper.make_node("DequantizeLinear", [f"{site}/act_int", f"{site}.act_scale",
                                                       f"{site}.act_zero_point"], [out],
                                  name=f"{site}/act_dequantize", doc_string=doc))
    return nodes, inits


def _rewrite(proto, records: list[LayerRecord], outputs: list[OutputAct], int4: bool) -> tuple[list, list]:
    """Replace the mpq:: marks with standard nodes; returns the storage tables of layers and outputs."""
    from onnx import helper

    by_name = {r.name: r for r in records}
    storage = {r.name: _storage(r, int4) for r in records}
    out_sites = {o.site: o for o in outputs}
    out_storage = {o.site: _act_storage(o.act, int4) for o in outputs}
    graph = proto.graph
    new_nodes, inits = [], []
    for node in graph.node:
        if node.domain != "mpq":
            new_nodes.append(node)
            continue
        name = _attr(node, "layer")
        out = node.output[0]
        if node.op_type == "QuantWeight":
            w, w_store = by_name[name].weight, storage[name][0]
            doc = (f"mpq layer={name} tensor=weight bits={w.bits} range=[{w.qmin},{w.qmax}] "
                   f"granularity={'per_channel' if w.per_channel else 'per_tensor'} storage={w_store}")
            inits += [_tensor(f"{name}.weight_int", w.codes, w_store, doc),
                      _tensor(f"{name}.weight_scale", w.scale, "float"),
                      _tensor(f"{name}.weight_zero_point", w.zero_point, w_store)]
            dq = helper.make_node("DequantizeLinear", [f"{name}.weight_int", f"{name}.weight_scale",
                                                      f"{name}.weight_zero_point"], [out],
                                  name=f"{name}/weight_dequantize", doc_string=doc,
                                  **({"axis": 0} if w.per_channel else {}))
            new_nodes.append(dq)
        elif node.op_type == "QuantAct":   # a module's output, or a layer's input
            what, act, store = (("output", out_sites[name].act, out_storage[name]) if name in out_sites
                                else ("input", by_name[name].act, storage[name][1]))
            nodes, tensors = _act_nodes(name, what, act, store, node.input[0], out)
            new_nodes += nodes
            inits += tensors
        else:
            raise ExportError(f"internal: unknown mark {node.op_type}")
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(inits)
    _prune(graph)
    layers = [{"name": r.name, "role": r.role,
               "w_bits": None if r.weight is None else r.weight.bits,
               "a_bits": None if r.act is None else r.act.bits,
               "weight_storage": storage[r.name][0] or "float", "act_storage": storage[r.name][1]}
              for r in records]
    sites = [{"module": o.module, "a_bits": o.act.bits, "act_storage": out_storage[o.site]} for o in outputs]
    return layers, sites


def _prune(graph) -> None:
    """Drop nodes whose outputs nobody reads and initializers nobody uses (the replaced floats)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        keep = [n for n in graph.node if any(o in used for o in n.output)]
        del graph.node[:]
        graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input} | outputs
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _set_opset(proto, version: int) -> None:
    kept = [o for o in proto.opset_import if o.domain not in ("", "ai.onnx", "mpq")]
    del proto.opset_import[:]
    from onnx import helper

    proto.opset_import.extend([helper.make_opsetid("", version), *kept])


# ------------------------------------------------------------------------------------ export

def build_onnx(model: nn.Module, records: list[LayerRecord], image_size: int, *, int4: bool = True,
               metadata: dict | None = None, outputs: list[OutputAct] = (), scheme: str = "lsq"):
    """The ONNX ModelProto of a finetuned LSQ or calibrated PTQ model (checked by onnx.checker)."""
    _require_onnx()
    import onnx

    module = export_module(model, records, outputs)
    dummy = torch.zeros(1, 3, image_size, image_size)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (dummy,), buf, dynamo=False, opset_version=EXPORT_OPSET,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
                          custom_opsets={"mpq": 1}, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    layers, sites = _rewrite(proto, records, outputs, int4)
    _set_opset(proto, OPSET)
    proto.ir_version = max(proto.ir_version, 10)    # INT4 needs IR 10
    proto.producer_name, proto.doc_string = "mpq", f"mixed-precision quantized model ({scheme.upper()}), QDQ form"
    meta = {"mpq.format": FORMAT, "mpq.scheme": scheme, "mpq.layers": json.dumps(layers),
            "mpq.outputs": json.dumps(sites)}
    meta.update({f"mpq.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # onnx raises its own ValidationError types
        raise ExportError(f"the exported ONNX graph does not validate: {str(e).splitlines()[0]}") from None
    return proto


def write_onnx(path, proto) -> None:
    atomic_write_bytes(path, proto.SerializeToString())


def onnx_session(path_or_bytes):
    """An onnxruntime CPU session (graph optimizations off: QDQ pairs run exactly as written)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("running the ONNX model needs 'onnxruntime': pip install 'mpq[export]'") from None
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = str(path_or_bytes) if not isinstance(path_or_bytes, (bytes, bytearray)) else bytes(path_or_bytes)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
