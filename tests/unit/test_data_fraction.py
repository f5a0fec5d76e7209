"""data_fraction: a fixed share of the training split for QAT recipes and the RFQuant supernet."""
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from mpq import models
from mpq.build import quantize_for_policy
from mpq.data import build_data
from mpq.data.seeding import generator
from mpq.data.splits import fraction_subset
from mpq.policy import Policy
from mpq.quant import split_layers
from mpq.rfquant.training import rfquant_config, supernet_training_split
from mpq.train.qat import finetune

TRAIN_SIZE = 256


@pytest.fixture(scope="module")
def data():
    return build_data({"name": "synthetic", "image_size": 8, "train_size": TRAIN_SIZE, "test_size": 32})


def expected_indices(total, n, seed):
    """Re-derivation of the draw: the first n of a seeded permutation (subset stream 1), sorted."""
    return torch.randperm(total, generator=generator(seed, 1))[:n].sort().values


def test_a_share_has_the_requested_size_and_is_fixed_by_the_seed(data):
    share = fraction_subset(data.train, 0.25, batch_size=16, seed=3)
    assert len(share) == TRAIN_SIZE // 4
    picked = expected_indices(TRAIN_SIZE, TRAIN_SIZE // 4, 3)
    assert torch.equal(share.labels, data.train.labels[picked])
    assert torch.equal(share.images, data.train.images[picked])
    again = fraction_subset(data.train, 0.25, batch_size=16, seed=3)
    other = fraction_subset(data.train, 0.25, batch_size=16, seed=4)
    assert torch.equal(again.images, share.images) and not torch.equal(other.images, share.images)


def test_the_whole_split_at_one_and_at_least_one_batch_below(data):
    assert fraction_subset(data.train, 1.0, batch_size=16, seed=0) is data.train
    assert len(fraction_subset(data.train, 0.01, batch_size=64, seed=0)) == 64
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="data_fraction"):
            fraction_subset(data.train, bad, batch_size=16, seed=0)


def count_steps(run):
    """Optimizer steps taken while `run()` executes (a global post-step hook on every optimizer)."""
    steps = [0]
    handle = register_optimizer_step_post_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
    try:
        out = run()
    finally:
        handle.remove()
    return steps[0], out


def finetune_once(data, fraction):
    torch.manual_seed(0)
    model = models.create("resnet8", num_classes=10)
    names = split_layers(model)[1]
    policy = Policy("resnet8", 10, 8, names, [4] * len(names), [4] * len(names))
    recipe = {"method": "lsq", "epochs": 1, "lr": 0.01, "bn_recalibration_images": TRAIN_SIZE}
    if fraction is not None:
        recipe["data_fraction"] = fraction
    quantize_for_policy(model, policy, {}, recipe)
    return count_steps(lambda: finetune(model, data, recipe, torch.device("cpu"), batch_size=16, seed=0,
                                        workers=0))


def test_a_finetune_epoch_at_half_the_data_runs_half_the_steps_and_bn_still_sees_everything(data):
    full_steps, full = finetune_once(data, None)
    half_steps, half = finetune_once(data, 0.5)
    assert full_steps == TRAIN_SIZE // 16 and half_steps == full_steps // 2
    assert full["bn_images"] == half["bn_images"] == TRAIN_SIZE   # BN re-estimation: the whole split


def test_supernet_trains_on_a_share_of_what_the_holdout_leaves(data):
    assert rfquant_config({})["data_fraction"] == 1.0
    whole, none = supernet_training_split(data.train, rfquant_config({}), batch_size=16, seed=0)
    assert whole is data.train and none is None
    cfg = rfquant_config({"holdout_fraction": 0.25, "data_fraction": 0.5})
    train, held = supernet_training_split(data.train, cfg, batch_size=16, seed=0)
    _, held_alone = supernet_training_split(data.train, rfquant_config({"holdout_fraction": 0.25}),
                                            batch_size=16, seed=0)
    assert len(held) == TRAIN_SIZE // 4 and torch.equal(held.images, held_alone.images)   # scoring unchanged
    assert len(train) == (TRAIN_SIZE - TRAIN_SIZE // 4) // 2
    held_images = {tuple(x.flatten().tolist()) for x in held_alone.images}
    assert not any(tuple(x.flatten().tolist()) in held_images for x in train.images)
