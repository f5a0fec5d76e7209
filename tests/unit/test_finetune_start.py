"""The finetune's start (test metrics after range init + BN re-estimation, before training) and its
place beside the final accuracy in metrics.json and summary.csv."""
import math

import pandas as pd
import pytest
import torch

from mpq.config import section_defaults
from mpq import models
from mpq.build import quantize_for_policy
from mpq.data import DataBundle, make_loader
from mpq.data.tensor_dataset import TensorImageDataset
from mpq.policy import Policy
from mpq.quant import range_init
from mpq.quant.convert import split_layers
from mpq.report import COLUMNS, below_start_policies, start_comparison, summary_table
from mpq.train import evaluate
from mpq.train import qat
from mpq.train.qat import finetune, measure_start

RECIPE = section_defaults("finetune.*", {"epochs": 1, "lr": 0.05, "weight_decay": 5e-4, "bn_recalibration_images": 32})
LOADING = {"batch_size": 16, "seed": 3, "workers": 0}
START_KEYS = ("start_top1", "start_top5", "start_loss")


def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, 10, (n,), generator=g)


def _data():
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    train = TensorImageDataset(*_images(64, 0), mean, std)
    test = TensorImageDataset(*_images(32, 1), mean, std)
    return DataBundle(train, test, 10, 16, mean, std)


def _quantized_resnet8(recipe):
    torch.manual_seed(0)
    model = models.create("resnet8", num_classes=10)
    _, names, _ = split_layers(model)
    policy = Policy("resnet8", 10, 16, names, [3] * len(names), [4] * len(names))
    return quantize_for_policy(model, policy, {}, recipe)


def _finetuned(recipe, data):
    model = _quantized_resnet8(recipe)
    torch.manual_seed(1)
    metrics = finetune(model, data, recipe, "cpu", **LOADING)
    return model, metrics, torch.get_rng_state()


@pytest.mark.parametrize("extra", [{}, {"oscillation": "freeze"}, {"method": "n2uq", "rprelu": True}],
                         ids=["lsq", "lsq-freeze", "n2uq"])
def test_a_trained_finetune_records_its_start_and_trains_exactly_as_without_it(monkeypatch, extra):
    data, recipe = _data(), {**RECIPE, **extra}
    model, metrics, rng_after = _finetuned(recipe, data)
    assert set(START_KEYS) <= set(metrics)

    monkeypatch.setattr(qat, "measure_start", lambda *args, **kwargs: {})
    unmeasured, plain, plain_rng_after = _finetuned(recipe, data)
    assert {k: v for k, v in metrics.items() if k not in START_KEYS} == plain
    want = unmeasured.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, want[name]), name
    assert torch.equal(rng_after, plain_rng_after)


def test_the_start_is_the_untrained_model_after_range_init_and_bn_re_estimation():
    """Re-derivation: an epochs-0 finetune is exactly range init + BN re-estimation, so its test
    metrics are the start of a trained run with the same recipe, loaders and seed."""
    data = _data()
    _, metrics, _ = _finetuned(RECIPE, data)
    untrained, untrained_metrics, _ = _finetuned({**RECIPE, "epochs": 0}, data)
    assert not set(START_KEYS) & set(untrained_metrics), "with epochs 0 the start is the final model"
    test = evaluate(untrained, make_loader(data.test, LOADING["batch_size"], train=False), "cpu")
    assert metrics["start_top1"] == test["top1"] and metrics["start_top5"] == test["top5"]
    assert metrics["start_loss"] == pytest.approx(test["loss"], rel=1e-6)


def test_measuring_the_start_leaves_the_model_and_the_global_generator_alone():
    """A map-style test set goes through a DataLoader, whose iterator draws a seed from the global
    generator; the measurement must not move it (nor touch the model it measures)."""
    data = _data()
    plain_test = torch.utils.data.TensorDataset(*data.test.batch(torch.arange(len(data.test))))
    data = DataBundle(data.train, plain_test, 10, 16, data.mean, data.std)
    model = _quantized_resnet8(RECIPE)
    range_init.init_act_steps(model, next(iter(make_loader(data.train, 16, train=True)))[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    start = measure_start(model, data, RECIPE, "cpu", make_loader(data.train, 16, train=True, seed=4),
                          batch_size=16, workers=0)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert 0.0 <= start["start_top1"] <= start["start_top5"] <= 100.0


# ----------------------------------------------------------------- metrics.json and summary.csv
def test_start_comparison_flags_a_final_top1_below_the_start():
    finetuned = {"start_top1": 60.0, "start_top5": 90.0, "start_loss": 1.2}
    assert start_comparison(finetuned, 59.9) == {"start_top1": 60.0, "start_top5": 90.0, "below_start": True}
    assert start_comparison(finetuned, 60.0)["below_start"] is False
    assert start_comparison({"epochs": 0, "bn_images": 32}, 50.0) == {}, "no training, no start"


FP32 = {"bitops_g": 1.0, "size_mb": 2.0, "top1": 90.0, "top5": 99.0, "loss": 0.3}


def _policy(name, top1, **extra):
    return {"policy": name, "search": "ilp", "importance": "limpq", "finetune": "lsq", "budget": {"bits": 4},
            "bitops_g": 0.1, "size_mb": 0.3, "compression_ratio": 6.0, "avg_w_bits": 4.0, "avg_a_bits": 4.0,
            "top1": top1, "top5": 95.0, "loss": 0.5, **extra}


def test_summary_puts_the_start_beside_top1_and_flags_runs_below_it():
    policies = [_policy("worse", 70.0, **start_comparison({"start_top1": 75.0}, 70.0)),
                _policy("better", 80.0, **start_comparison({"start_top1": 75.0}, 80.0)),
                _policy("ptq", 65.0)]
    table = summary_table(FP32, policies)
    assert list(table.columns) == COLUMNS
    assert COLUMNS[COLUMNS.index("top1") + 1] == "start_top1"
    rows = table.set_index("policy")
    assert rows.loc["worse", "start_top1"] == 75.0 and rows.loc["worse", "below_start"] is True
    assert rows.loc["better", "below_start"] is False
    assert below_start_policies(table) == ["worse"]
    csv_rows = pd.read_csv(pd.io.common.StringIO(table.to_csv(index=False)), keep_default_na=False)
    by_name = csv_rows.set_index("policy")
    for name in ("fp32", "ptq"):
        assert by_name.loc[name, "start_top1"] == "" and by_name.loc[name, "below_start"] == ""
    assert by_name.loc["worse", "below_start"] == "True" and by_name.loc["better", "below_start"] == "False"
    assert math.isclose(float(by_name.loc["better", "start_top1"]), 75.0)
