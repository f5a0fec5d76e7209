"""The per-policy bit chart shows the stem and classifier with their real (not assumed) bits."""
import matplotlib

from mpq.figures import plot_policy_bits


def test_the_bit_chart_shows_stem_and_classifier_hatched(tmp_path):
    matplotlib.rcParams["svg.fonttype"] = "none"   # keep labels as text, to read them back
    paths = plot_policy_bits(["layer1.0.conv1", "layer1.0.conv2"], [3, 2], [4, 4], [tmp_path / "bits.svg"], "p",
                             fixed_bits=((4, 8), (3, 8)))   # OMPQ PTQ mode: searched stem/classifier weights
    svg = next(p for p in paths if p.suffix == ".svg").read_text()
    assert "stem (fixed)" in svg and "classifier (fixed)" in svg and "layer1.0.conv2" in svg
    assert svg.count("<pattern") >= 1   # the hatch of the fixed layers
    plain = plot_policy_bits(["a", "b"], [3, 2], [4, 4], [tmp_path / "plain.svg"], "p")
    assert "stem (fixed)" not in next(p for p in plain if p.suffix == ".svg").read_text()


def test_a_sweeps_points_are_one_curve_named_once(tmp_path):
    """Points of one front are joined by a line and labelled with the front's name at the cheapest
    point only; a policy outside a front keeps its own label."""
    import pandas as pd

    from mpq.figures import plot_front

    matplotlib.rcParams["svg.fonttype"] = "none"
    rows = [{"policy": "fp32", "front": "", "search": "", "importance": "", "bitops_g": 3.0, "top1": 99.0}]
    rows += [{"policy": f"rf-f{t}", "front": "rf", "search": "greedy", "importance": "rfquant",
              "bitops_g": 0.02 + 0.02 * t, "top1": 95.0 + 3 * t} for t in (0, 0.5, 1)]
    rows += [{"policy": "limpq-w3a3", "front": None, "search": "ilp", "importance": "limpq", "bitops_g": 0.04,
              "top1": 97.0}]
    [svg] = plot_front(pd.DataFrame(rows), "bitops_g", "BitOps (G)", [tmp_path / "f.svg"], "t")
    text = svg.read_text()
    assert text.count(">rf<") == 1 and "rf-f0.5" not in text and "limpq-w3a3" in text
