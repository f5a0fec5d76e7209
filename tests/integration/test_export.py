"""Export of a finetuned model: npz + JSON reproduces the fake-quantized weights, and the ONNX
graph (QuantizeLinear/DequantizeLinear) run by onnxruntime matches PyTorch on the digits test split."""
import json
from collections import Counter

import numpy as np
import pytest
import torch

from mpq import models
from mpq.build import quantize_for_policy, quantized_model
from mpq.checkpoint import save_checkpoint
from mpq.cli import main
from mpq.cost import CostModel
from mpq.data import build_data, make_loader
from mpq.export import dequantized_weights, onnx_session, read_export
from mpq.export.npz import codes_of
from mpq.policy import Policy
from mpq.stage_common import preprocessing_of
from mpq.train import evaluate
from mpq.train.fp32 import pretrain
from mpq.train.qat import finetune

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.integration

DATASET = {"name": "digits", "image_size": 16, "batch_size": 128}
# every weight storage (int8, int4, float fake-quant) and activation storage (uint8, uint4, clip + uint8)
W_BITS = [8, 4, 3, 2, 6, 5]
A_BITS = [4, 8, 5, 3, 4, 7]


def make_checkpoint(path, data, recipe, *, pretrain_epochs=3):
    torch.manual_seed(0)
    model = models.create("resnet8", num_classes=10)
    pretrain(model, data, {"epochs": pretrain_epochs, "lr": 0.1, "weight_decay": 5e-4}, "cpu",
             batch_size=128, seed=0, workers=0)
    cost = CostModel.from_model(models.create("resnet8", num_classes=10), 16)
    policy = Policy("resnet8", 10, 16, cost.names, W_BITS, A_BITS)
    quant = {"candidates": [8, 6, 5, 4, 3, 2]}
    quantize_for_policy(model, policy, quant, recipe)
    finetune(model, data, recipe, "cpu", batch_size=128, seed=0, workers=0)
    save_checkpoint(path, state_dict=model.state_dict(), arch="resnet8", num_classes=10, kind="quantized",
                    config={}, policy=policy.to_dict(cost), quant=quant, recipe=recipe,
                    preprocessing=preprocessing_of(data))   # as the finetune stage writes it


@pytest.fixture(scope="module")
def data():
    return build_data(DATASET)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("export")
    make_checkpoint(d / "model.pt", data, {"epochs": 1, "lr": 0.01, "weight_decay": 5e-4})
    main(["export", str(d / "model.pt"), "--out", str(d / "out"), "--onnx"])   # returns on success
    return d


def test_npz_round_trip_equals_fake_quantized_weights(exported):
    model, _, _ = quantized_model(exported / "model.pt")
    model.eval()
    manifest, arrays = read_export(exported / "out")
    weights = dequantized_weights(manifest, arrays)
    layers = {name: m for name, m in model.named_modules() if hasattr(m, "quan_w")}
    assert list(weights) == list(layers)
    with torch.no_grad():
        for name, layer in layers.items():
            np.testing.assert_array_equal(weights[name], layer.quan_w(layer.weight).numpy(), err_msg=name)
    entries = {e["name"]: e for e in manifest["layers"]}
    assert [entries[n]["weight"]["bits"] for n in model.mpq_searchable] == W_BITS
    assert [entries[n]["act"]["bits"] for n in model.mpq_searchable] == A_BITS
    assert entries["conv1"]["act"] is None and entries["fc"]["act"]["bits"] == 8
    for entry in manifest["layers"]:
        w = entry["weight"]
        codes = codes_of(w, arrays)
        assert codes.dtype == np.int8
        assert w["qmin"] <= codes.min() and codes.max() <= w["qmax"]
        if w["bits"] < 8:   # packed: b bits per code, not a byte
            packed = arrays[w["packed"]]
            assert packed.dtype == np.uint8 and packed.size == -(-codes.size * w["bits"] // 8)
        else:
            assert arrays[w["int"]].dtype == np.int8
    fp32_weight_bytes = 4 * sum(layer.weight.numel() for layer in layers.values())
    assert (exported / "out/weights.npz").stat().st_size < fp32_weight_bytes / 3   # smaller than FP32, by far
    bn = [k for k in manifest["tensors"]["float_keys"] if k.endswith("running_var")]
    assert bn and all(f"float/{k}" in arrays for k in bn)


def test_onnx_matches_pytorch_on_digits(exported, data):
    import onnx

    proto = onnx.load(str(exported / "out" / "model.onnx"))
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["QuantizeLinear"] == 7 and ops["DequantizeLinear"] == 7 + 8   # 7 acts + every quantized weight
    assert not [n for n in proto.graph.node if n.domain == "mpq"]
    storage = {r["name"]: r for r in json.loads({p.key: p.value for p in proto.metadata_props}["mpq.layers"])}
    assert storage["layer1.0.conv2"]["weight_storage"] == "int4"
    assert storage["layer1.0.conv1"]["act_storage"] == "uint4"
    # the narrowest opset-21 type that holds the codes: W3/W2 in INT4, W5/W6 in INT8; A3 in UINT4
    assert storage["layer2.0.conv1"]["weight_storage"] == "int4"
    assert storage["layer2.0.conv2"]["weight_storage"] == "int4"
    assert storage["layer2.0.conv1"]["act_storage"] == "clip+uint8"
    assert storage["layer2.0.conv2"]["act_storage"] == "clip+uint4"
    kinds = {init.name: init.data_type for init in proto.graph.initializer if init.name.endswith(".weight_int")}
    assert set(kinds.values()) <= {onnx.TensorProto.INT4, onnx.TensorProto.INT8} and len(kinds) == 8
    assert not [i for i in proto.graph.initializer if i.name.endswith(".weight_fq")]   # no float fake-quant

    model, _, _ = quantized_model(exported / "model.pt")
    torch_top1 = evaluate(model, make_loader(data.test, 256, train=False), "cpu")["top1"]
    session = onnx_session(exported / "out" / "model.onnx")
    correct = total = agree = close = 0
    model.eval()
    for x, y in make_loader(data.test, 256, train=False):
        logits = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            ref = model(x).numpy()
        correct += int((logits.argmax(1) == y.numpy()).sum())
        agree += int((logits.argmax(1) == ref.argmax(1)).sum())
        total += len(y)
        # a value sitting on a rounding boundary may land on the neighbouring level (float order of
        # operations differs); such flips are rare, so nearly every image must match closely
        close += int((np.abs(logits - ref).max(1) <= 1e-4 * max(1.0, np.abs(ref).max())).sum())
    onnx_top1 = 100.0 * correct / total
    print(f"top-1 PyTorch {torch_top1:.2f} ONNX {onnx_top1:.2f} argmax agreement {100.0 * agree / total:.2f}% "
          f"logits equal {100.0 * close / total:.2f}%")
    assert close >= 0.97 * total and agree >= 0.99 * total
    assert torch_top1 > 30, "the model did not learn; the comparison would be vacuous"
    assert abs(onnx_top1 - torch_top1) <= 0.5


def test_n2uq_models_and_other_kinds_are_refused(tmp_path, data, capsys):
    recipe = {"epochs": 0, "lr": 0.01, "method": "n2uq"}
    make_checkpoint(tmp_path / "n2uq.pt", data, recipe, pretrain_epochs=0)
    with pytest.raises(SystemExit) as done:
        main(["export", str(tmp_path / "n2uq.pt"), "--out", str(tmp_path / "out"), "--onnx"])
    err = capsys.readouterr().err
    assert done.value.code == 1 and "N2UQ" in err, err
    assert not (tmp_path / "out").exists()
    save_checkpoint(tmp_path / "fp32.pt", state_dict={}, arch="resnet8", num_classes=10, kind="fp32", config={})
    with pytest.raises(SystemExit) as done:
        main(["export", str(tmp_path / "fp32.pt"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert done.value.code == 1 and "'fp32' checkpoint" in err and "'ptq'" in err, err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def fp32_digits(data):
    torch.manual_seed(0)
    model = models.create("resnet8", num_classes=10)
    pretrain(model, data, {"epochs": 3, "lr": 0.1, "weight_decay": 5e-4}, "cpu", batch_size=128, seed=0, workers=0)
    return model


@pytest.mark.parametrize("placement", ["output", "input"])
def test_ptq_model_exports_exactly_and_runs_in_onnxruntime(tmp_path, data, fp32_digits, placement):
    """A calibrated PTQ model (BN folded, per-channel affine weights with their zero points, affine
    activations on block outputs or layer inputs), from its 'ptq' checkpoint: the npz rebuilds the
    weights bit for bit and onnxruntime gives the PyTorch model's predictions."""
    import onnx

    from mpq.export.ptq_records import ptq_records
    from mpq.quant.ptq import calibration_set, ptq_quantize, ptq_settings
    from mpq.quant.ptq_model import load_ptq_model, save_ptq_model

    cost = CostModel.from_model(models.create("resnet8", num_classes=10), 16)
    policy = Policy("resnet8", 10, 16, cost.names, W_BITS, A_BITS)
    recipe = ptq_settings({"calib_images": 256, "iters_w": 20, "iters_a": 10, "act_placement": placement})
    model, _ = ptq_quantize(fp32_digits, policy, calibration_set(data.train, recipe, 0), recipe, seed=0)
    save_ptq_model(tmp_path / "ptq.pt", model, policy, config={}, recipe=recipe, preprocessing=preprocessing_of(data))
    main(["export", str(tmp_path / "ptq.pt"), "--out", str(tmp_path / "out"), "--onnx"])   # returns on success

    model, _, _ = load_ptq_model(tmp_path / "ptq.pt")
    manifest, arrays = read_export(tmp_path / "out")
    assert manifest["scheme"] == {"name": "ptq", "batchnorm_folded": True, "weight_grid": "affine",
                                  "act_placement": placement}
    assert manifest["batchnorm"] == {} and not [k for k in manifest["tensors"]["float_keys"] if "running" in k]
    layers = dict(model.named_modules())
    weights = dequantized_weights(manifest, arrays)
    assert len(weights) == len(W_BITS) + 2
    for name, w in weights.items():   # w = s * (q - z) equals the model's own quantized weight exactly
        assert np.array_equal(w, layers[name].quantized_weight().detach().numpy()), name
    entries = {layer["name"]: layer for layer in manifest["layers"]}
    zero_points = np.concatenate([arrays[e["weight"]["zero_point"]].ravel() for e in entries.values()])
    assert zero_points.any(), "an affine grid has zero points of its own"
    assert entries["layer2.0.conv2"]["weight"]["bits"] == 2 and entries["layer2.0.conv2"]["weight"]["qmin"] == -2
    assert all(e["bias"] for e in entries.values()), "folded BN gives every conv a bias"
    records, outputs = ptq_records(model)
    if placement == "output":   # BRECQ: the stem's ReLU and each block output; inputs only inside blocks
        assert [o["module"] for o in manifest["outputs"]] == ["relu", "layer1.0", "layer2.0", "layer3.0"]
        assert [e["name"] for e in manifest["layers"] if e["act"]] == ["layer1.0.conv2", "layer2.0.conv2",
                                                                       "layer3.0.conv2"]
    else:
        assert manifest["outputs"] == [] and all(e["act"] for e in manifest["layers"] if e["role"] != "stem")
    assert all(e["act"]["signed"] is False for e in manifest["layers"] if e["act"])

    proto = onnx.load(str(tmp_path / "out/model.onnx"))
    n_acts = sum(1 for r in records if r.act) + len(outputs)
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["QuantizeLinear"] == n_acts and ops["DequantizeLinear"] == n_acts + len(records)
    assert not ops["BatchNormalization"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["mpq.scheme"] == "ptq" and len(json.loads(meta["mpq.outputs"])) == len(outputs)
    session = onnx_session(tmp_path / "out/model.onnx")
    agree = close = total = 0
    for x, _ in make_loader(data.test, 256, train=False):
        logits = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            ref = model(x).numpy()
        agree += int((logits.argmax(1) == ref.argmax(1)).sum())
        close += int((np.abs(logits - ref).max(1) <= 1e-4 * max(1.0, np.abs(ref).max())).sum())
        total += len(x)
    assert close >= 0.97 * total and agree >= 0.99 * total, (close, agree, total)
    assert evaluate(model, make_loader(data.test, 256, train=False), "cpu")["top1"] > 30   # not vacuous


def test_the_manifest_and_onnx_say_how_to_feed_the_model_and_name_its_classes(exported, data):
    import onnx

    manifest, _ = read_export(exported / "out")
    assert manifest["classes"] == [str(d) for d in range(10)]
    norm = manifest["input"]["normalize"]
    assert norm["mean"] == pytest.approx(list(data.mean)) and norm["std"] == pytest.approx(list(data.std))
    meta = {p.key: p.value for p in onnx.load(str(exported / "out/model.onnx")).metadata_props}
    assert json.loads(meta["mpq.preprocessing"])["classes"] == manifest["classes"]
