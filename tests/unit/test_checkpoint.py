"""Checkpoint kinds and their model loaders (mpq.checkpoint): dispatch by kind, one error otherwise."""
import pytest
import torch

import mpq.build  # noqa: F401  (registers the loaders of the models a finetune writes)
from mpq import models
from mpq.build import finetuned_model
from mpq.checkpoint import (CheckpointError, load_checkpoint, loader_kinds, model_from_checkpoint, register_loader,
                            save_checkpoint)


def _fp32(tmp_path):
    torch.manual_seed(0)
    model = models.create("resnet8", num_classes=10)
    path = tmp_path / "fp32.pt"
    save_checkpoint(path, state_dict=model.state_dict(), arch="resnet8", num_classes=10, kind="fp32", config={})
    return model, path


def test_finetuned_kinds_have_loaders():
    assert {"fp32", "quantized", "ptq"} <= set(loader_kinds())


def test_dispatch_rebuilds_the_saved_model(tmp_path):
    model, path = _fp32(tmp_path)
    loaded = model_from_checkpoint(load_checkpoint(path), path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_an_unknown_kind_names_the_known_ones(tmp_path):
    path = tmp_path / "odd.pt"
    save_checkpoint(path, state_dict={}, arch="resnet8", num_classes=10, kind="mystery", config={})
    with pytest.raises(CheckpointError, match=r"no model loader for checkpoint kind 'mystery'; known kinds: .*fp32.*ptq"):
        model_from_checkpoint(load_checkpoint(path), path)


def test_finetuned_model_refuses_other_kinds(tmp_path):
    _, path = _fp32(tmp_path)
    with pytest.raises(CheckpointError, match="holds a 'fp32' checkpoint, expected quantized or ptq"):
        finetuned_model(path)


def test_a_kind_has_one_loader():
    with pytest.raises(ValueError, match="already has a loader"):
        register_loader("ptq")(lambda ckpt, source: None)
