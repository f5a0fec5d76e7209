"""Median train-step time of LSQ QAT (W4A4) over FP32: reference LSQ graph, fused Function, and
the exact bf16 code-domain layers.

Each model runs its variants side by side in one process: fp32, lsq-ref (clamp -> round-STE ->
*s with the grad-scale trick, plain autograd), lsq-fused (mpq.quant.lsq_kernels' one-pass Function),
both fake-quantizing, and lsq-codes (fused codes, conv on the integer codes under bf16 autocast,
scales applied to the fp32 result: mpq.quant.layers). Where the shape runs without autocast
(--quick), fused-bf16 (fake quantization under the same bf16 autocast) is added, so that
fq/codes always compares the two layer paths at the same precision.
Rounds interleave the variants so that load from other processes hits them alike; the table
reports medians and the ratio to fp32 in the same mode (eager, or torch.compile of the model).

    python bench/qat_step.py                       # CUDA if present: ResNet-18 224px b256 bf16
                                                   # channels_last, ResNet-20 32px b512
    python bench/qat_step.py --quick               # CPU-sized shapes, a couple of minutes
    python bench/qat_step.py --quick --modes eager,compile
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import mpq.models  # noqa: E402
from mpq.quant import LsqQuantizer, convert_model, set_uniform_bits  # noqa: E402
from mpq.quant.layers import QUANT_LAYERS  # noqa: E402
from mpq.quant.range_init import init_act_steps  # noqa: E402

# name: (arch, image size, batch, channels_last, bf16 autocast), full size / --quick
SHAPES = {
    "resnet18": {"full": ("resnet18", 224, 256, True, True), "quick": ("resnet18", 64, 16, True, False)},
    "resnet20": {"full": ("resnet20", 32, 512, False, True), "quick": ("resnet20", 32, 64, False, False)},
}
# variant: (LSQ kernel or None for the float model, code-domain layers, forces bf16 autocast)
VARIANTS = {"fp32": (None, False, False), "lsq-ref": ("ref", False, False),
            "lsq-fused": ("fused", False, False), "fused-bf16": ("fused", False, True),
            "lsq-codes": ("fused", True, True)}


def variants_for(amp: bool, device) -> list[str]:
    """Every variant under the shape's autocast; the bf16 pair only where bf16 autocast exists."""
    names = ["fp32", "lsq-ref", "lsq-fused"]
    if amp:
        return names + ["lsq-codes"]
    if torch.amp.is_autocast_available(device.type):
        names += ["fused-bf16", "lsq-codes"]
    return names


def build(arch: str, variant: str, image: int, batch: int, device, channels_last: bool, amp: bool):
    torch.manual_seed(0)
    model = mpq.models.create(arch, num_classes=1000 if arch == "resnet18" else 10)
    x = torch.randn(batch, 3, image, image)
    y = torch.randint(0, 10, (batch,))
    kernel, codes, _ = VARIANTS[variant]
    if kernel is not None:
        convert_model(model, image_size=image, weight_candidates=[4], act_candidates=[4])
        set_uniform_bits(model, 4)
        for m in model.modules():
            if isinstance(m, LsqQuantizer):
                m.fused = kernel == "fused"
            if isinstance(m, QUANT_LAYERS):
                m.code_domain = codes
        init_act_steps(model, x[:8])
    model.to(device)
    x, y = x.to(device), y.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    return model, x, y


def make_step(model, x, y, device, amp: bool, compiled: bool):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    net = torch.compile(model) if compiled else model

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext():
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()
        opt.step()
    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, device, n: int) -> list[float]:
    times = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def bench_model(name: str, size: str, mode: str, device, rounds: int, per_round: int, warmup: int) -> dict:
    arch, image, batch, channels_last, amp = SHAPES[name][size]
    amp = amp and device.type == "cuda" or (amp and size == "full")
    names = variants_for(amp, device)
    steps = {}
    for variant in names:
        variant_amp = amp or VARIANTS[variant][2]
        model, x, y = build(arch, variant, image, batch, device, channels_last, variant_amp)
        steps[variant] = make_step(model, x, y, device, variant_amp, mode == "compile")
        time_steps(steps[variant], device, warmup)          # compiles in compile mode
    samples = {v: [] for v in names}
    for _ in range(rounds):
        for v in names:
            samples[v] += time_steps(steps[v], device, per_round)
    med = {v: statistics.median(samples[v]) * 1e3 for v in names}
    return {"model": name, "shape": f"{image}px b{batch}{' bf16' if amp else ''}{' cl' if channels_last else ''}",
            "mode": mode, "ms": med, "fake_quant_peer": "lsq-fused" if amp else "fused-bf16"}


def format_row(r: dict) -> str:
    """ms and x fp32 per variant, then ref/fused and fake-quant/codes at the same precision."""
    ms = r["ms"]
    cells = [f"{v} {ms[v]:.1f}ms" + ("" if v == "fp32" else f" x{ms[v] / ms['fp32']:.2f}") for v in ms]
    ratios = [f"ref/fused {ms['lsq-ref'] / ms['lsq-fused']:.2f}"]
    if "lsq-codes" in ms:
        ratios.append(f"fq/codes {ms[r['fake_quant_peer']] / ms['lsq-codes']:.2f}")
    return f"{r['model']:<9} {r['shape']:<18} {r['mode']:<8} " + "  ".join(cells + ratios)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="CPU-sized shapes (see SHAPES)")
    ap.add_argument("--models", default="resnet18,resnet20")
    ap.add_argument("--modes", default="eager", help="comma list of eager, compile")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    size = "quick" if args.quick else "full"
    print(f"device={device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), "
          f"threads={torch.get_num_threads()}, torch {torch.__version__}, medians of "
          f"{args.rounds}x{args.steps} steps")
    print(f"{'model':<9} {'shape':<18} {'mode':<8} variants (median ms, x fp32), ratios")
    for name in args.models.split(","):
        for mode in args.modes.split(","):
            r = bench_model(name, size, mode, device, args.rounds, args.steps, args.warmup)
            print(format_row(r), flush=True)


if __name__ == "__main__":
    main()
