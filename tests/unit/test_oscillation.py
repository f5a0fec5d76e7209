"""Oscillation tracking, freezing, dampening and MSE init (docs/methods/oscillations.md)."""
import math

import pytest
import torch
from torch import nn

from mpq.quant import LsqQuantizer, QuantConv2d, convert_model, int_range, set_uniform_bits
from mpq.quant.oscillation import (OscillationControl, OscillationOptions, OscillationTracker,
                                   TrackedLsqQuantizer, cosine_anneal, dampening_loss, oscillation_stats,
                                   track_oscillations)
from mpq.quant.range_init import mse_range_init, mse_step
from mpq.train.loop import recalibrate_bn
from mpq.train.qat import reestimate_bn_batch_mean

M = 0.001


def _feed(tracker, sequence):
    for value in sequence:
        tracker.update(torch.tensor(value, dtype=torch.float32))


def test_tracker_counts_planted_oscillation_and_ignores_drift():
    # columns: oscillating 0/1, monotone drift, drift with pauses, constant
    steps = 200
    seq = [[t % 2, t, t // 2, 3] for t in range(steps)]
    tracker = OscillationTracker((4,), momentum=M)
    _feed(tracker, seq)
    # The first move sets a direction, every later move reverses it: steps - 2 oscillations.
    expected = 0.0
    for t in range(1, steps):
        expected = M * (t >= 2) + (1 - M) * expected
    assert tracker.freq[0].item() == pytest.approx(expected, rel=1e-5)
    assert tracker.freq[1:].tolist() == [0.0, 0.0, 0.0]
    assert not tracker.frozen.any()
    assert not tracker.ema_started and not tracker.ema_int.any(), "no integer EMA while freezing is off"


def test_oscillation_after_a_pause_still_counts():
    tracker = OscillationTracker((1,), momentum=0.5)
    _feed(tracker, [[0], [1], [1], [1], [0]])   # up, pause, down: one reversal
    assert tracker.freq.item() == pytest.approx(0.5)
    assert tracker.oscillating.item() == 1.0


def test_freezing_uses_rounded_ema_before_update_and_is_permanent():
    tracker = OscillationTracker((2,), momentum=0.3)
    tracker.threshold = 0.5
    # element 0: 2,3,2,3 -> reversals at steps 3 and 4, freq 0.3 then 0.51 > 0.5 at step 4.
    # ema before step 4: 2 -> 2.3 -> 2.21, so it freezes at round(2.21) = 2, not the current 3.
    _feed(tracker, [[2, 0], [3, 0], [2, 0]])
    assert not tracker.frozen.any() and tracker.freq[0].item() == pytest.approx(0.3)
    _feed(tracker, [[3, 0]])
    assert tracker.frozen.tolist() == [True, False]
    assert tracker.frozen_int[0].item() == 2.0
    tracker.threshold = 10.0
    _feed(tracker, [[0, 0]])
    assert tracker.frozen[0], "freezing is permanent"


class ReferenceTracker:
    """A re-derivation of the reference's TrackOscillation (oscillations-qat), for comparison:
    freezing state and the integer EMA appear at the first call with threshold > 0, seeded with
    that call's codes; the EMA moves only while the threshold is > 0; every element above the
    threshold (frozen or not) takes round(EMA)."""

    def __init__(self, momentum):
        self.m, self.threshold = momentum, 0.0
        self.prev = self.prev_dir = self.freq = None
        self.frozen = self.frozen_x = self.ema = None

    def __call__(self, x):
        if self.frozen is not None:
            x = torch.where(self.frozen, self.frozen_x, x)
        if self.prev is None:
            self.prev, self.prev_dir, self.freq = x.clone(), torch.zeros_like(x), torch.zeros_like(x)
        if self.frozen is None and self.threshold > 0:
            self.frozen = torch.zeros_like(x, dtype=torch.bool)
            self.frozen_x, self.ema = torch.zeros_like(x), x.clone()
        delta = torch.round(self.prev - x)
        switch = torch.sign(delta)
        oscillated = (self.prev_dir * switch) == -1
        self.freq = self.m * oscillated + (1 - self.m) * self.freq
        self.prev_dir = torch.where(delta != 0, switch, self.prev_dir)
        self.prev = x
        if self.threshold > 0:
            hot = self.freq > self.threshold
            self.frozen = self.frozen | hot
            self.frozen_x = torch.where(hot, torch.round(self.ema), self.frozen_x)
            self.ema = self.m * x + (1 - self.m) * self.ema
        return x


def _threshold(t):
    """A hand-driven schedule: off for 12 iterations, then falling from 0.3 to 0.1."""
    return 0.0 if t < 12 else 0.3 - 0.2 * min(1.0, (t - 12) / 40)


def test_freezing_matches_a_rederivation_of_the_reference():
    gen = torch.Generator().manual_seed(5)
    raw = torch.zeros(8)
    ours, ref = OscillationTracker((8,), momentum=0.2), ReferenceTracker(0.2)
    for t in range(60):
        # a random walk of integer codes, with elements 0-3 flipping between two values
        raw = torch.where(torch.arange(8) < 4, 1 - raw, raw + torch.randint(-1, 2, (8,), generator=gen))
        ours.threshold = ref.threshold = _threshold(t)
        codes = ours.apply_frozen(raw)
        ours.update(codes)
        expected = ref(raw)
        assert torch.equal(codes, expected), t
        if ref.frozen is None:
            assert not ours.ema_started and not ours.frozen.any()
            continue
        assert ours.ema_started and torch.allclose(ours.ema_int, ref.ema, atol=1e-6), t
        assert torch.equal(ours.frozen, ref.frozen), t
        assert torch.equal(ours.frozen_int[ours.frozen], ref.frozen_x[ref.frozen]), t
    assert ours.frozen.any() and ours.ema_int.dtype == torch.float32


def test_integer_ema_is_seeded_when_freezing_turns_on():
    tracker = OscillationTracker((1,), momentum=0.5)
    _feed(tracker, [[6], [6], [6]])                 # threshold 0: tracking only
    assert not tracker.ema_started and tracker.ema_int.item() == 0.0
    tracker.threshold = 0.9
    _feed(tracker, [[2]])                           # seeded with 2 (an EMA from step 0 would be 4)
    assert tracker.ema_started and tracker.ema_int.item() == 2.0
    _feed(tracker, [[3]])
    assert tracker.ema_int.item() == pytest.approx(2.5)
    tracker.threshold = 0.0
    _feed(tracker, [[5]])
    assert tracker.ema_int.item() == pytest.approx(2.5), "the EMA moves only while freezing is on"


def test_a_frozen_element_above_the_threshold_takes_the_new_rounded_ema():
    tracker = OscillationTracker((1,), momentum=0.5)
    tracker.frozen.fill_(True)
    tracker.frozen_int.fill_(1.0)
    tracker.freq.fill_(0.8)
    tracker.threshold = 0.1
    tracker.update(torch.tensor([1.0]))             # seeds the EMA at 1, freq 0.4 > 0.1
    tracker.ema_int.fill_(3.2)
    tracker.update(tracker.apply_frozen(torch.tensor([0.0])))
    assert tracker.frozen.item() and tracker.frozen_int.item() == 3.0


def test_tracker_state_stays_float32_under_bf16_autocast():
    torch.manual_seed(4)
    w = nn.Parameter(torch.randn(64) * 0.7)
    for bits in range(2, 9):
        plain, autocast = _tracked_weight_quantizer(w, bits), _tracked_weight_quantizer(w, bits)
        for q in (plain, autocast):
            q.train()
            q.tracker.threshold = 0.5
        plain(w)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast(w)
            codes = autocast.integer_codes(w)[0]
        step = plain.step.detach()
        exact = torch.clamp(w.detach() / step, *int_range(bits, True)).round()
        for t in (plain.tracker, autocast.tracker):
            assert t.prev_int.dtype == t.ema_int.dtype == t.frozen_int.dtype == torch.float32
            assert torch.equal(t.prev_int, exact), bits
            assert torch.allclose(t.ema_int, exact, atol=1e-5, rtol=0), bits   # fp32 EMA of one step
        assert torch.equal(autocast.tracker.ema_int, plain.tracker.ema_int), bits
        assert torch.equal(codes.float(), exact), bits


def _tracked_weight_quantizer(w, bits=3):
    base = LsqQuantizer([bits], "weight", signed=True, grad_scale=False)
    base.init_weight_steps(w)
    return TrackedLsqQuantizer(base, w.shape, momentum=M)


def test_frozen_weight_no_longer_moves_but_step_learns():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 3) * 0.3)
    q = _tracked_weight_quantizer(w)
    q.train()
    q(w).sum().backward()            # starts tracking
    q.tracker.frozen[0, 0] = True
    q.tracker.frozen_int[0, 0] = 2.0
    opt = torch.optim.SGD([w, q.step], lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        out = q(w)
        (out * torch.randn_like(out)).sum().backward()
        assert w.grad[0, 0] == 0, "a frozen element gets no task gradient"
        assert out[0, 0].item() == pytest.approx(2.0 * q.step.item())
        opt.step()
    assert q.step.grad is not None and q.step.grad.abs().item() > 0


def test_tracker_updates_only_in_training_passes_with_grad():
    w = torch.randn(5, 5)
    q = _tracked_weight_quantizer(w)
    q.eval()
    q(w)
    assert not q.tracker.started
    q.train()
    with torch.no_grad():
        q(w)
    assert not q.tracker.started
    q(w.requires_grad_(True))
    assert q.tracker.started


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)
        self.signed_inputs = frozenset()

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _tracked_net():
    torch.manual_seed(1)
    model = convert_model(Net(), image_size=6, weight_candidates=[3], act_candidates=[3])
    set_uniform_bits(model, 3)
    tracked = track_oscillations(model, OscillationOptions(mode="freeze"))
    return model, tracked


def test_only_low_bit_weights_are_tracked():
    model, tracked = _tracked_net()
    assert tracked == [model.conv2.quan_w]
    assert type(model.conv1.quan_w) is LsqQuantizer and type(model.fc.quan_w) is LsqQuantizer
    assert "conv2.quan_w.tracker.freq" in model.state_dict()


def test_eval_and_bn_reestimation_leave_tracker_untouched():
    model, (q,) = _tracked_net()
    x = torch.randn(8, 3, 6, 6)
    model.train()
    model(x).sum().backward()        # one real training step starts the tracker and act steps
    model.conv2.weight.data.add_(torch.randn_like(model.conv2.weight) * 0.2)
    before = {k: v.clone() for k, v in q.tracker.state_dict().items()}
    batches = [(torch.randn(8, 3, 6, 6), torch.zeros(8, dtype=torch.long)) for _ in range(3)]
    model.eval()
    model(x)
    recalibrate_bn(model, batches, "cpu", 24)
    reestimate_bn_batch_mean(model, batches, "cpu", 3)
    for k, v in q.tracker.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.train()
    model(x).sum().backward()
    assert not torch.equal(q.tracker.prev_int, before["prev_int"])


def test_schedules_follow_the_cosine_of_the_spec():
    T = 400
    assert cosine_anneal(0, T, 0.0, 0.1) == 0.0
    assert cosine_anneal(99, T, 0.0, 0.1) == 0.0
    assert cosine_anneal(100, T, 0.0, 0.1) == pytest.approx(0.0)
    assert cosine_anneal(250, T, 0.0, 0.1) == pytest.approx(0.05)
    assert cosine_anneal(T, T, 0.0, 0.1) == pytest.approx(0.1)
    assert cosine_anneal(50, T, 0.1, 0.01) == 0.0, "nothing freezes in the first quarter"
    assert cosine_anneal(100, T, 0.1, 0.01) == pytest.approx(0.1)
    assert cosine_anneal(T, T, 0.1, 0.01) == pytest.approx(0.01)
    r = 0.5
    assert cosine_anneal(250, T, 0.1, 0.01) == pytest.approx(0.01 + 0.045 * (1 + math.cos(math.pi * r)))


def test_control_sets_per_bit_thresholds_and_dampening_weight():
    model, (q,) = _tracked_net()
    opts = OscillationOptions(mode="freeze", freeze_threshold_final_per_bit={3: 0.011})
    control = OscillationControl(model, opts, total_iterations=8)
    for _ in range(9):
        control.begin_iteration()
    assert q.tracker.threshold == pytest.approx(0.011)
    damp = OscillationControl(model, OscillationOptions(mode="dampen"), total_iterations=8)
    damp.begin_iteration()
    assert damp.regulariser() is None
    for _ in range(8):
        damp.begin_iteration()
    assert damp.dampen_weight == pytest.approx(0.1)
    assert damp.regulariser().item() > 0


def test_schedules_count_iterations_from_one_like_the_reference():
    model, (q,) = _tracked_net()
    control = OscillationControl(model, OscillationOptions(mode="freeze"), total_iterations=8)
    control.begin_iteration()                       # iteration 1 < 0.25 * 8: still off
    assert q.tracker.threshold == 0.0
    control.begin_iteration()                       # iteration 2 = the decay start: f_start
    assert q.tracker.threshold == pytest.approx(0.1)


def test_freeze_recipe_needs_a_start_threshold():
    with pytest.raises(ValueError, match="freeze_threshold_start"):
        OscillationOptions.from_recipe({"oscillation": "freeze", "freeze_threshold_start": 0})
    with pytest.raises(ValueError, match="unknown"):
        OscillationOptions.from_recipe({"oscillation": "wobble"})


def test_dampening_gradient_pulls_to_bin_centre_and_spares_the_step():
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 3, bias=False)
    qw = LsqQuantizer([3], "weight", signed=True)
    qw.init_weight_steps(conv.weight)
    qw.step.data.fill_(0.05)
    layer = QuantConv2d(conv, qw, None)
    model = nn.Sequential(layer)
    w = layer.weight
    loss = dampening_loss(model, "mean")
    loss.backward()
    s = 0.05
    qn, qp = int_range(3, True)
    u = w.detach() / s
    q = torch.clamp(u, qn, qp).round() * s
    inside = (u > qn) & (u < qp)
    expected = torch.where(inside, 2 * (w.detach() - q), torch.zeros_like(q)) / w.numel()
    assert torch.allclose(w.grad, expected, atol=1e-7)
    assert qw.step.grad is None or qw.step.grad.abs().sum() == 0
    kernel = dampening_loss(model, "kernel_mean")
    assert kernel.item() == pytest.approx(loss.item() * w.shape[0], rel=1e-5)


def test_mse_step_is_the_best_of_the_grid():
    torch.manual_seed(3)
    x = torch.randn(500)
    qn, qp = int_range(3, True)
    s = mse_step(x, qn, qp)
    reach = x.abs().max().item() + 0.5

    def err(step):
        return ((x - torch.clamp(x / step, qn, qp).round() * step) ** 2).sum().item()

    grid = [err(k * reach / 100 / qp) for k in range(1, 101)]
    assert err(s.item()) == pytest.approx(min(grid), rel=1e-6)
    rows = torch.stack([x, 3 * x])
    per_row = mse_step(rows, qn, qp, per_row=True)
    assert per_row.shape == (2,) and per_row[0].item() == pytest.approx(s.item(), rel=1e-6)


def test_mse_range_init_sets_every_step_without_tracking():
    model, (q,) = _tracked_net()
    mse_range_init(model, torch.rand(16, 3, 6, 6))
    for _, m in model.named_modules():
        if isinstance(m, LsqQuantizer) and m.bits is not None:
            assert m.init_state.all()
    assert not q.tracker.started
    assert model.conv2.quan_w.step.item() == pytest.approx(
        mse_step(model.conv2.weight, -4, 3).item())
    assert oscillation_stats(model)["frozen"] == 0.0
