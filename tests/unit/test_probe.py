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


def test_train_bn_mode_normalises_with_the_batch_and_keeps_running_stats():
    torch.manual_seed(0)
    bn, drop = nn.BatchNorm1d(3), nn.Dropout(0.5)
    model = nn.Sequential(bn, drop).train()
    model[1].eval()                                   # a mixed state must come back as it was
    bn.running_mean.fill_(4.0)
    bn.running_var.fill_(9.0)
    x = torch.randn(6, 3)
    seen = []
    hooks = [drop.register_forward_hook(lambda m, i, o: seen.append((m.training, o.clone())))]
    probe_forward(model, x, hooks, bn_mode="train")
    drop_training, out = seen[0]
    batch = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + bn.eps)
    assert not drop_training and torch.allclose(out, batch, atol=1e-5)   # dropout off, batch stats
    assert torch.equal(bn.running_mean, torch.full((3,), 4.0))
    assert torch.equal(bn.running_var, torch.full((3,), 9.0)) and int(bn.num_batches_tracked) == 0
    assert bn.training and not drop.training and not drop._forward_hooks
    with pytest.raises(ValueError, match="bn_mode"):
        probe_forward(model, x, [], bn_mode="batch")
