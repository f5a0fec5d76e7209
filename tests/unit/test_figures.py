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
