"""probe_forward leaves no hook and no mode change behind, also when the forward fails."""
import pytest
import torch
from torch import nn

from mpq.probe import probe_forward


@pytest.mark.parametrize("training", [True, False])
def test_probe_restores_mode_and_removes_hooks(training):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train(training)
    seen = []
    hooks = [model[0].register_forward_hook(lambda m, i, o: seen.append(m.training))]
    probe_forward(model, torch.randn(2, 3), hooks)
    assert seen == [False] and model.training is training
    model(torch.randn(2, 3))
    assert len(seen) == 1 and not model[0]._forward_hooks


def test_probe_cleans_up_when_the_forward_raises():
    model = nn.Linear(3, 4).train()
    hooks = [model.register_forward_pre_hook(lambda m, i: None)]
    with pytest.raises(RuntimeError):
        probe_forward(model, torch.randn(2, 5), hooks)   # wrong width
    assert model.training and not model._forward_pre_hooks
