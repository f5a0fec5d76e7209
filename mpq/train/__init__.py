"""Training loops, optimizers and progress reporting."""
from .loop import NonFiniteLoss, evaluate, recalibrate_bn, train_epoch
from .optim import build_optimizer, lr_factor, param_groups, set_epoch_lr
from .progress import EpochProgress
