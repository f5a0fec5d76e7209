"""Training loops, optimizers, checkpoints and progress reporting."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .loop import NonFiniteLoss, evaluate, recalibrate_bn, train_epoch
from .optim import build_optimizer, lr_factor, param_groups, set_epoch_lr
from .progress import EpochProgress
