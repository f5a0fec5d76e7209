"""The accuracy target's path and bisection (mpq.rfquant.accuracy_target)."""
import itertools

import pytest

from mpq import models
from mpq.cost import CostModel
from mpq.rfquant.accuracy_target import last_within, path_limits


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16])
def test_bisection_finds_the_last_point_within_the_target_in_about_log2_steps(n):
    for boundary in range(-1, n):   # ok(i) holds for i <= boundary
        chosen, tried = last_within(lambda i: i <= boundary, n)
        assert chosen == (None if boundary < 0 else boundary)
        assert len(tried) <= 2 + max(0, (n - 2).bit_length()), (n, boundary, tried)
        assert len(set(tried)) == len(tried)


def test_the_path_runs_geometrically_from_uniform_start_bits_to_every_layer_at_its_floor():
    cost = CostModel.from_model(models.create("resnet8", num_classes=10), 16)
    n = len(cost.names)
    lists = [[6, 5, 4, 3, 2]] * n
    limits = path_limits(cost, lists, lists, start_bits=5, min_bits=2, points=8)
    assert limits[0] == cost.uniform_bitops(5, 5) and limits[-1] == cost.uniform_bitops(2, 2)
    assert len(limits) == 8 and limits == sorted(limits, reverse=True)
    ratios = [b / a for a, b in itertools.pairwise(limits)]
    assert max(ratios) - min(ratios) < 1e-3
    frozen = [[6, 5, 4]] + [[6, 5, 4, 3, 2]] * (n - 1)   # a layer whose candidates stop at 4
    assert path_limits(cost, frozen, lists, 5, 2, 8)[-1] == cost.bitops([4] + [2] * (n - 1), [2] * n)
