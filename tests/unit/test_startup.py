"""Lean start-up: no stage loads torchvision, pandas or matplotlib before it needs them (each costs
seconds of a job's wall time; bench/startup.py measures the effect)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torchvision", "pandas", "matplotlib")

PROBE = """
import json, runpy, sys
heavy, found = {heavy}, {{}}
for path in {paths}:
    sys.argv = [path, "--help"]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit:
        pass
    found[path] = [m for m in heavy if m in sys.modules]
print(json.dumps(found))
"""


def test_no_stage_imports_a_heavy_package_to_start():
    paths = sorted(str(p) for p in (REPO / "stages").glob("*.py"))
    code = PROBE.format(heavy=HEAVY, paths=paths)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(found) == len(paths) >= 10
    assert {Path(p).name: mods for p, mods in found.items() if mods} == {}


def test_torchvision_models_still_build_and_split_into_blocks():
    """Registered by name only, torchvision's models load it when built; its blocks are then found."""
    code = ("import sys; from mpq import models; from mpq.quant.blocks import find_blocks; "
            "assert 'torchvision' not in sys.modules and 'resnet18' in models.list_models(); "
            "m = models.create('resnet18', num_classes=10); "
            "print(type(m).__module__, len(find_blocks(m)), len(find_blocks(models.create('resnet8', num_classes=10))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    module, tv_blocks, cifar_blocks = proc.stdout.split()
    assert module == "torchvision.models.resnet" and int(tv_blocks) == 8 and int(cifar_blocks) == 3


TORCH_FREE_RUN = """
import json, runpy, sys
sys.argv = {argv}
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    code = e.code
else:
    code = 0
print(json.dumps({{"code": code, "torch": "torch" in sys.modules}}))
"""


def test_the_bit_chart_stage_draws_a_chart_without_importing_torch(tmp_path):
    """plot_policy runs once per policy; torch's import would be most of its wall time."""
    from mpq.policy import Policy

    policy = tmp_path / "policy.yaml"
    Policy("resnet8", 10, 8, ["a", "b"], [4, 2], [3, 8], meta={"name": "mixed"}).save(policy)
    argv = [str(REPO / "stages" / "plot_policy.py"), "--policy", str(policy), "--png", str(tmp_path / "bits.png"),
            "--svg", str(tmp_path / "bits.svg")]
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE_RUN.format(argv=argv)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"code": 0, "torch": False}, proc.stderr[-2000:]
    assert (tmp_path / "bits.png").stat().st_size > 1000 and (tmp_path / "bits.svg").read_text().startswith("<?xml")


def test_the_summary_stage_writes_its_table_and_figures_without_importing_torch(tmp_path):
    """summarize reads JSON and draws figures; its atomic writes ask the launcher's RANK, not torch."""
    fp32 = {"top1": 98.3, "top5": 99.7, "loss": 0.07, "images": 359, "bitops_g": 3.1338, "size_mb": 0.2853,
            "image_size": 16}
    policy = {"policy": "uniform-w4a4", "front": None, "search": "uniform", "importance": None, "finetune": "lsq",
              "budget": {"bits": [4, 4]}, "top1": 98.05, "top5": 99.72, "loss": 0.068, "images": 359,
              "bitops_g": 0.0543, "size_mb": 0.0362, "fp32_bitops_g": 3.1338, "fp32_size_mb": 0.2853,
              "compression_ratio": 7.887, "avg_w_bits": 4.0, "avg_a_bits": 4.0, "avg_w_bits_param_weighted": 4.0,
              "avg_a_bits_mac_weighted": 4.0, "w_bits": [4] * 6, "a_bits": [4] * 6, "start_top1": 98.05,
              "start_top5": 99.72, "below_start": False}
    (tmp_path / "fp32.json").write_text(json.dumps(fp32))
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    argv = [str(REPO / "stages" / "summarize.py"), "--fp32-metrics", str(tmp_path / "fp32.json"), "--metrics",
            str(tmp_path / "policy.json"), "--out", str(tmp_path / "summary.csv"), "--bitops-figure",
            str(tmp_path / "b.png"), str(tmp_path / "b.svg"), "--size-figure", str(tmp_path / "s.png"),
            str(tmp_path / "s.svg")]
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE_RUN.format(argv=argv)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"code": 0, "torch": False}, proc.stderr[-2000:]
    rows = (tmp_path / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("policy,") and [r.split(",")[0] for r in rows[1:]] == ["fp32", "uniform-w4a4"]
    assert (tmp_path / "b.png").stat().st_size > 1000 and (tmp_path / "s.svg").read_text().startswith("<?xml")
