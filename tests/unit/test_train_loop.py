"""The shared epoch loop: device-side sums, deferred non-finite check, evaluation counts."""
import pytest
import torch
from torch import nn

from mpq.train import loop
from mpq.train.loop import NonFiniteLoss, evaluate, train_epoch


def _data(n_batches=4, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 5, generator=g), torch.randint(0, 3, (batch,), generator=g))
            for _ in range(n_batches)]


def _reference_epoch(model, data, lr):
    """The same epoch with a sync per step: what train_epoch must report."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_sum, correct, total = 0.0, 0, 0
    for x, y in data:
        opt.zero_grad()
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
    return {"loss": loss_sum / total, "acc": 100.0 * correct / total}


def test_train_epoch_metrics_equal_per_step_sums():
    data = _data()
    torch.manual_seed(0)
    a = nn.Linear(5, 3)
    b = nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    got = train_epoch(a, data, torch.optim.SGD(a.parameters(), lr=0.1), "cpu")
    want = _reference_epoch(b, data, 0.1)
    assert got["acc"] == want["acc"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert torch.equal(a.weight, b.weight)


@pytest.mark.parametrize("sync_every", [1, 3, 50])
def test_non_finite_loss_is_raised_before_the_epoch_returns(monkeypatch, sync_every):
    monkeypatch.setattr(loop, "SYNC_EVERY", sync_every)
    data = _data(n_batches=5)
    data[1] = (torch.full_like(data[1][0], float("nan")), data[1][1])
    model = nn.Linear(5, 3)
    seen = []

    def counting(batches):
        for b in batches:
            seen.append(1)
            yield b

    with pytest.raises(NonFiniteLoss, match="non-finite loss"):
        train_epoch(model, counting(data), torch.optim.SGD(model.parameters(), lr=0.1), "cpu")
    # caught at the first check after batch 2: batch 3 with SYNC_EVERY=3, batch 2 with 1
    assert len(seen) == {1: 2, 3: 3, 50: 5}[sync_every]


def test_evaluate_counts_top1_top5_and_loss():
    torch.manual_seed(1)
    model = nn.Linear(5, 7)
    data = _data(n_batches=3, batch=10)
    data = [(x, torch.randint(0, 7, (10,))) for x, _ in data]
    got = evaluate(model, data, "cpu")
    x = torch.cat([d[0] for d in data])
    y = torch.cat([d[1] for d in data])
    with torch.no_grad():
        logits = model(x)
    top5 = logits.topk(5, 1).indices
    assert got["images"] == 30
    assert got["top1"] == pytest.approx(100.0 * (logits.argmax(1) == y).sum().item() / 30)
    assert got["top5"] == pytest.approx(100.0 * (top5 == y[:, None]).any(1).sum().item() / 30)
    assert got["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-6)


def test_long_epochs_log_progress_lines(monkeypatch, caplog):
    monkeypatch.setattr(loop, "SYNC_EVERY", 2)
    monkeypatch.setattr(loop, "PROGRESS_EVERY_S", 0.0)
    data = _data(n_batches=4)
    model = nn.Linear(5, 3)
    with caplog.at_level("INFO", logger="mpq"):
        train_epoch(model, data, torch.optim.SGD(model.parameters(), lr=0.1), "cpu", where="finetune")
    lines = [r.getMessage() for r in caplog.records if " step " in r.getMessage()]
    assert [line.split()[:3] for line in lines] == [["finetune", "step", "2/4"], ["finetune", "step", "4/4"]]
    assert "img/s" in lines[0] and "epoch_eta=" in lines[0]
    monkeypatch.setattr(loop, "PROGRESS_EVERY_S", 3600.0)
    caplog.clear()
    with caplog.at_level("INFO", logger="mpq"):
        train_epoch(model, data, torch.optim.SGD(model.parameters(), lr=0.1), "cpu")
    assert not [r for r in caplog.records if " step " in r.getMessage()]
