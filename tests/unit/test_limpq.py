"""LIMPQ indicator training step (K uniform + 1 random pass) and extraction."""
import pytest
import torch

from mpq.config import section_defaults
from mpq import models
from mpq.data.seeding import sampler_for_step
from mpq.importance_file import read_importance, write_importance
from mpq.limpq.indicators import (build_indicator_model, clip_and_drop_zero_gradients, extract_indicators,
                                  indicator_step)
from mpq.quant import searchable_layers

CANDS = [6, 5, 4, 3, 2]


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = models.create("resnet8", num_classes=10)
    return build_indicator_model(m, image_size=16, candidates=CANDS, fixed_bits=((8, 8), (8, 8)))


def test_switchable_bn_bound_to_its_conv(model):
    assert model.mpq_bn_of["layer1.0.conv1"] == "layer1.0.bn1"
    assert model.mpq_bn_of["layer3.0.conv2"] == "layer3.0.bn2"
    assert list(model.get_submodule("layer1.0.bn1").copies) == ["6", "5", "4", "3", "2"]


def test_step_runs_k_plus_one_passes_and_inits_every_act_step(model):
    calls = []
    model.fc.register_forward_hook(lambda *a: calls.append(1))
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    model.train()
    loss, logits = indicator_step(model, x, y, CANDS, sampler_for_step(0, 0))
    assert len(calls) == len(CANDS) + 1
    for _, layer in searchable_layers(model):
        assert layer.quan_a.init_state.tolist() == [1] * 5
        assert layer.quan_w.step.grad is not None
    assert logits.shape == (8, 10) and torch.isfinite(loss)


def test_gradients_are_clipped_and_all_zero_ones_dropped_after_the_step(model):
    """The step leaves the summed gradients alone: the train loop clips them after the cross-rank
    average, as the reference does after DDP's all-reduce."""
    x, y = torch.randn(8, 3, 16, 16) * 20, torch.randint(0, 10, (8,))
    model.train()
    indicator_step(model, x, y, CANDS, sampler_for_step(0, 0))
    raw = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    assert max(g.abs().max() for g in raw.values()) > 1.0
    model.fc.bias.grad.zero_()
    clip_and_drop_zero_gradients(model)
    assert model.fc.bias.grad is None
    for k, p in model.named_parameters():
        if k in raw and k != "fc.bias":
            assert torch.equal(p.grad, raw[k].clamp(-1, 1)), k


def test_random_pass_is_reproducible_per_step(model):
    def drawn(step):
        g = sampler_for_step(3, step)
        return [int(torch.randint(5, (1,), generator=g)) for _ in range(6)]
    assert drawn(7) == drawn(7)
    assert drawn(7) != drawn(8)


def test_extraction_round_trips_through_the_limpq_pickle(model, tmp_path):
    x = torch.rand(8, 3, 16, 16)
    y = torch.randint(0, 10, (8,))
    model.train()
    indicator_step(model, x, y, CANDS, sampler_for_step(0, 0))
    imp = extract_indicators(model)
    assert imp.names == [n for n, _ in searchable_layers(model)]
    assert imp.candidates == CANDS
    first = model.get_submodule("layer1.0.conv1").quan_w.step.detach()
    assert [imp.weight["layer1.0.conv1"][b] for b in CANDS] == pytest.approx(first.tolist())
    write_importance(tmp_path / "imp.pkl", imp)
    back = read_importance(tmp_path / "imp.pkl", expected_names=imp.names, candidates=CANDS)
    assert back.weight == imp.weight and back.act == imp.act


def test_extraction_refuses_uninitialised_steps():
    m = build_indicator_model(models.create("resnet8", num_classes=10), image_size=16, candidates=CANDS,
                              fixed_bits=((8, 8), (8, 8)))
    with pytest.raises(ValueError, match="never initialised"):
        extract_indicators(m)


@pytest.mark.parametrize("quant", [{}, {"grad_scale": False}, {"grad_scale_numel": "per_sample"}])
def test_indicator_model_takes_the_lsq_options_of_the_quant_section(quant):
    from mpq.quant.convert import lsq_options
    from mpq.quant.lsq import LsqQuantizer

    m = build_indicator_model(models.create("resnet8", num_classes=10), image_size=16, candidates=CANDS,
                              fixed_bits=((8, 8), (8, 8)), **lsq_options(section_defaults("quant", quant)))
    qs = [q for q in m.modules() if isinstance(q, LsqQuantizer)]
    assert qs and {(q.grad_scale, q.grad_scale_numel) for q in qs} == {
        (quant.get("grad_scale", True), quant.get("grad_scale_numel", "tensor"))}
