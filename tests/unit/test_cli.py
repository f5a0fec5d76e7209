"""The `mpq` command-line tool: show, compare, convert (lossless round trips), cost; progress output."""
import io
import json
import logging
import subprocess
import sys

import pytest
import yaml

from mpq import models
from mpq.cli import main
from mpq.cost import CostModel
from mpq.policy import Policy
from mpq.train.progress import EpochProgress

RESNET8 = ["--arch", "resnet8", "--num-classes", "10", "--image-size", "16"]


def cli(capsys, *argv):
    """(exit code, stdout, stderr) of one `mpq` call in this process."""
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code, err, *phrases):
    assert code == 1, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.fixture(scope="module")
def cost8():
    return CostModel.from_model(models.create("resnet8", num_classes=10), 16)


@pytest.fixture
def policies(tmp_path, cost8):
    n = len(cost8.names)
    w = [2, 3, 4, 5, 6, 4][:n]
    a = [4, 4, 3, 6, 2, 8][:n]
    pa = Policy("resnet8", 10, 16, cost8.names, w, a, meta={"budget": {"bitops_g": 0.0421}})
    b_w = list(w)
    b_w[2] = 6
    pb = Policy("resnet8", 10, 16, cost8.names, b_w, a)
    pa.save(tmp_path / "a.yaml", cost8)
    pb.save(tmp_path / "b.yaml", cost8)
    return pa, pb, tmp_path / "a.yaml", tmp_path / "b.yaml"


# ------------------------------------------------------------------------------------- cost

def test_cost_resnet18_w4a4_is_34_71_gbops(capsys):
    code, out, err = cli(capsys, "cost", "--arch", "resnet18", "--num-classes", 1000, "--image-size", 224,
                         "--uniform", 4, 4, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert round(doc["bitops_g"], 2) == 34.71
    cost = CostModel.from_model(models.create("resnet18", num_classes=1000), 224)
    assert doc["bitops_g"] == round(cost.uniform_bitops(4, 4) / 1e9, 6)
    assert doc["size_mb"] == round(cost.size_mib([4] * len(cost.names)), 6)


def test_cost_lists_match_cost_model(capsys, cost8):
    n = len(cost8.names)
    w, a = [2, 3, 4, 5, 6, 8][:n], [8, 6, 5, 4, 3, 2][:n]
    code, out, err = cli(capsys, "cost", *RESNET8, "--w", *w, "--a", *a, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["bitops_g"] == round(cost8.bitops(w, a) / 1e9, 6)
    assert doc["compression_ratio"] == round(cost8.compression_ratio(w), 4)
    code, out, _ = cli(capsys, "cost", *RESNET8, "--w", 4, "--a", 4, "--json")
    assert json.loads(out)["bitops_g"] == round(cost8.uniform_bitops(4, 4) / 1e9, 6)


def test_cost_of_policy_file_and_fixed_bits(capsys, policies, cost8):
    pa, _, path_a, _ = policies
    code, out, err = cli(capsys, "cost", "--policy", path_a, "--json")
    assert code == 0, err
    assert json.loads(out)["bitops_g"] == round(cost8.bitops(pa.w_bits, pa.a_bits) / 1e9, 6)
    code, out, _ = cli(capsys, "cost", *RESNET8, "--uniform", 4, 4, "--fixed-bits", 4, 4, "--json")
    lower = CostModel.from_model(models.create("resnet8", num_classes=10), 16, fixed_bits=((4, 4), (4, 4)))
    assert json.loads(out)["bitops_g"] == round(lower.uniform_bitops(4, 4) / 1e9, 6)


@pytest.mark.parametrize("argv, phrase", [
    (["cost", *RESNET8], "exactly one of"),
    (["cost", *RESNET8, "--w", 4, 4, "--a", 4], "has 2 values"),
    (["cost", "--uniform", 4, 4], "needs --arch"),
    (["cost", "--arch", "nonet", "--num-classes", 10, "--image-size", 16, "--uniform", 4, 4], "unknown model"),
    (["show", "missing.yaml"], "not found"),
    (["cost", "--uniform", "x", 4], "invalid int"),
])
def test_errors_are_one_line_exit_1(capsys, argv, phrase):
    one_error(*cli(capsys, *argv)[::2], phrase)


def test_console_entry_point_reports_errors(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mpq.cli", "show", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True)
    one_error(proc.returncode, proc.stderr, "nope.yaml")


@pytest.fixture
def not_policies(tmp_path, policies):
    """A checkpoint, a JPEG, a folder holding a policy.yaml, a policy missing a layer and one with
    a YAML syntax error: what a user passes by mistake."""
    import torch
    from PIL import Image

    torch.save({"state_dict": {"w": torch.zeros(3)}}, tmp_path / "model.pt")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "policy.yaml").write_text(policies[2].read_text())
    doc = yaml.safe_load(policies[2].read_text())
    dropped = doc["layers"].pop(2)["name"]
    (tmp_path / "missing.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    lines = policies[2].read_text().splitlines()
    lines[4] = lines[4] + " ["   # an unclosed bracket on line 5
    (tmp_path / "broken.yaml").write_text("\n".join(lines) + "\n")
    return tmp_path, dropped


@pytest.mark.parametrize("argv, phrases", [
    (["show", "{d}/model.pt"], ["model.pt: is binary data", "not a policy.yaml", "pass a policy.yaml"]),
    (["show", "{d}/photo.jpg"], ["photo.jpg: is binary data"]),
    (["compare", "{d}/run/policy.yaml", "{d}/model.pt"], ["model.pt: is binary data"]),
    (["convert", "{d}/photo.jpg", "--to", "limpq"], ["photo.jpg: is binary data"]),
    (["convert", "{d}/model.pt", "--to", "limpq"], ["model.pt: is binary data"]),
    (["show", "{d}/run"], ["run: is a folder", "did you mean", "run/policy.yaml"]),
    (["show", "{d}"], ["is a folder, not a policy.yaml"]),
    (["show", "{d}/missing.yaml"], ["missing.yaml", "no entry for layer {dropped}"]),
    (["show", "{d}/broken.yaml"], ["broken.yaml: YAML syntax error at line 5", "fix that line"]),
    (["convert", "{d}/broken.yaml", "--to", "limpq"], ["broken.yaml", "as YAML: line 5"]),
])
def test_wrong_files_name_the_file_and_the_fix(capsys, not_policies, argv, phrases):
    d, dropped = not_policies
    one_error(*cli(capsys, *[a.format(d=d) for a in argv])[::2], *[p.format(dropped=dropped) for p in phrases])


@pytest.mark.parametrize("argv, phrase", [
    (["cost", *RESNET8, "--uniform", 9, 9], "has W9A9; bit-widths must be 2..8"),
    (["cost", *RESNET8, "--uniform", 1, 1], "has W1A1; bit-widths must be 2..8"),
    (["cost", *RESNET8, "--w", 4, 4, 4, 4, 4, 9, "--a", 4], "has W9A4; bit-widths must be 2..8"),
    (["cost", *RESNET8, "--uniform", 4, 4, "--fixed-bits", 9, 8], "fixed stem has W9A8"),
    (["cost", "--arch", "resnet8", "--num-classes", 10, "--image-size", 0, "--uniform", 4, 4],
     "--image-size: 0 is not an image size"),
])
def test_cost_refuses_bits_and_sizes_out_of_range(capsys, argv, phrase):
    one_error(*cli(capsys, *argv)[::2], phrase)


LIMPQ_W9 = "weight_bits: [9, 4, 4, 4, 4, 4]\nact_bits: [4, 4, 4, 4, 4, 4]\n"
RECORD_W9 = "[0.1, [9, 4, 4, 4, 4, 4], [4, 4, 4, 4, 4, 4]]\n"


@pytest.mark.parametrize("text, to", [(LIMPQ_W9, "policy"), (LIMPQ_W9, "rfquant"), (RECORD_W9, "policy"),
                                      (RECORD_W9, "limpq")])
def test_convert_refuses_bits_out_of_range(capsys, tmp_path, text, to):
    (tmp_path / "in.txt").write_text(text)
    one_error(*cli(capsys, "convert", tmp_path / "in.txt", "--to", to, *RESNET8)[::2],
              "in.txt: layer", "has W9A4; bit-widths must be 2..8")


def test_policy_files_with_bits_out_of_range_are_refused(capsys, policies, tmp_path):
    doc = yaml.safe_load(policies[2].read_text())
    doc["layers"][0]["w_bits"] = 9
    (tmp_path / "w9.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    for argv in (["show", tmp_path / "w9.yaml"], ["convert", tmp_path / "w9.yaml", "--to", "limpq"]):
        one_error(*cli(capsys, *argv)[::2], "w9.yaml: layer", "bit-widths must be 2..8")


# ------------------------------------------------------------------------------ show, compare

def test_show_table_and_totals(capsys, policies, cost8):
    pa, _, path_a, _ = policies
    code, out, err = cli(capsys, "show", path_a)
    assert code == 0, err
    for name in ["conv1", *cost8.names, "fc"]:
        assert name in out
    assert "BitOps" in out and "compression" in out
    code, out, _ = cli(capsys, "show", path_a, "--json")
    doc = json.loads(out)
    assert [r["name"] for r in doc["layers"]] == [cost8.stem.name, *cost8.names, cost8.classifier.name]
    assert sum(r["bitops_share"] for r in doc["layers"]) == pytest.approx(100.0)
    assert doc["totals"] == pa.cost_summary(cost8)
    assert [r["w_bits"] for r in doc["layers"][1:-1]] == pa.w_bits


def test_compare_marks_differences(capsys, policies, cost8):
    pa, pb, path_a, path_b = policies
    code, out, err = cli(capsys, "compare", path_a, path_b, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [r["name"] for r in doc["layers"] if r["differs"]] == [cost8.names[2]]
    assert doc["totals"]["a"] == pa.cost_summary(cost8) and doc["totals"]["b"] == pb.cost_summary(cost8)
    code, out, _ = cli(capsys, "compare", path_a, path_b)
    marked = [ln for ln in out.splitlines() if ln.startswith("*")]
    assert len(marked) == 1 and cost8.names[2] in marked[0]
    assert "1 of 8 layers differ" in out


def test_compare_refuses_different_models(capsys, policies, tmp_path):
    cost20 = CostModel.from_model(models.create("resnet20", num_classes=10), 32)
    n = len(cost20.names)
    Policy("resnet20", 10, 32, cost20.names, [4] * n, [4] * n).save(tmp_path / "r20.yaml", cost20)
    one_error(*cli(capsys, "compare", policies[2], tmp_path / "r20.yaml")[::2], "different layer lists")


# ------------------------------------------------------------------------------------ convert

def same_policy(p: Policy, q: Policy):
    assert (p.arch, p.num_classes, p.image_size, p.names, p.w_bits, p.a_bits) == \
        (q.arch, q.num_classes, q.image_size, q.names, q.w_bits, q.a_bits)
    assert tuple(map(tuple, p.fixed_bits)) == tuple(map(tuple, q.fixed_bits))


@pytest.mark.parametrize("form", ["limpq", "rfquant"])
def test_convert_round_trips_are_lossless(capsys, policies, tmp_path, form):
    pa, _, path_a, _ = policies
    lists, back = tmp_path / f"lists.{form}", tmp_path / "back.yaml"
    code, _, err = cli(capsys, "convert", path_a, "--to", form, "--out", lists)
    assert code == 0, err
    code, _, err = cli(capsys, "convert", lists, "--to", "policy", *RESNET8, "--out", back)
    assert code == 0, err
    same_policy(pa, Policy.load(back))
    again = tmp_path / f"again.{form}"
    code, _, err = cli(capsys, "convert", back, "--to", form, "--out", again)
    assert code == 0, err
    assert again.read_text() == lists.read_text()


def test_convert_text_forms(capsys, policies):
    pa, _, path_a, _ = policies
    _, out, _ = cli(capsys, "convert", path_a, "--to", "limpq")
    assert yaml.safe_load(out) == {"weight_bits": pa.w_bits, "act_bits": pa.a_bits}
    _, out, _ = cli(capsys, "convert", path_a, "--to", "rfquant")
    assert json.loads(out) == [0.0421, pa.w_bits, pa.a_bits]   # the budget limit the policy was searched for


def test_convert_reads_python_forms_and_fixed_bits(capsys, tmp_path, cost8):
    n = len(cost8.names)
    w, a = [3] * n, [5] * n
    (tmp_path / "l.py").write_text(f"weight_bits = {w}\nact_bits = {a}\n")
    code, out, err = cli(capsys, "convert", tmp_path / "l.py", "--to", "policy", *RESNET8, "--fixed-bits", 6, 8)
    assert code == 0, err
    p = Policy.from_dict(yaml.safe_load(out))
    assert p.w_bits == w and p.a_bits == a and p.fixed_bits == ((6, 8), (6, 8))
    records = tmp_path / "r.txt"
    records.write_text(f"(0.05, {w}, {a})\n(0.04, {[2] * n}, {a})\n")
    one_error(*cli(capsys, "convert", records, "--to", "policy", *RESNET8)[::2], "--record")
    code, out, err = cli(capsys, "convert", records, "--to", "policy", *RESNET8, "--record", 1)
    assert code == 0, err
    p = Policy.from_dict(yaml.safe_load(out))
    assert p.w_bits == [2] * n and p.meta["budget"] == {"bitops_g": 0.04}


@pytest.mark.parametrize("text, extra, phrase", [
    ("weight_bits: [4, 4]\nact_bits: [4, 4]\n", RESNET8, "2/2 entries"),
    ("weight_bits: [4, 4]\n", RESNET8, "need both"),
    ("weight_bits: [4, 4, 4, 4, 4, 4]\nact_bits: [4, 4, 4, 4, 4, 4]\n", [], "needs --arch"),
    ("[0.1, [4, 4], [4]]\n", RESNET8, "differ in length"),
    ("hello: world: [\n", RESNET8, "neither"),
])
def test_convert_bad_input(capsys, tmp_path, text, extra, phrase):
    (tmp_path / "in.txt").write_text(text)
    one_error(*cli(capsys, "convert", tmp_path / "in.txt", "--to", "policy", *extra)[::2], phrase)


# ------------------------------------------------------------------------------------ progress

def test_progress_logs_one_line_per_epoch_without_a_terminal(caplog, monkeypatch):
    monkeypatch.delenv("MPQ_PROGRESS", raising=False)
    with caplog.at_level(logging.INFO, logger="mpq"):
        progress = EpochProgress(3, "finetune", stream=io.StringIO())
        for epoch in range(3):
            progress.report(epoch, loss=0.5, train_acc=90.0, lr=0.01)
    lines = [r.getMessage() for r in caplog.records if "finetune epoch" in r.getMessage()]
    assert len(lines) == 3
    assert lines[1].startswith("finetune epoch 2/3 loss=0.5 train_acc=90 lr=0.01 elapsed=")
    assert "eta=" in lines[1]


def test_progress_bar_on_a_terminal(monkeypatch, caplog):
    monkeypatch.setenv("MPQ_PROGRESS", "bar")
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="mpq"):
        progress = EpochProgress(2, "pretrain", stream=stream)
        progress.report(0, loss=1.0)
        progress.report(1, loss=0.5)
    text = stream.getvalue()
    assert "pretrain epoch 1/2 loss=1" in text and "pretrain epoch 2/2 loss=0.5" in text
    assert "2/2" in text and progress.bar is None   # the bar reached the end and closed
    assert not [r for r in caplog.records if "pretrain epoch" in r.getMessage()]
