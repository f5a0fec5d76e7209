"""Quantizers, quantized layers, switchable BN and model conversion."""
from .base import Quantizer, int_range, is_full_precision
from .convert import (DEFAULT_FIXED_BITS, conv_bn_pairs, convert_model, replace_module, searchable_layers,
                      set_layer_bits, set_policy_bits, set_uniform_bits, split_layers)
from .layers import QuantConv2d, QuantLinear, quant_modules
from .lsq import LsqQuantizer
from .lsq_kernels import lsq_fake_quant, round_ste, scale_grad
from .switchable_bn import SwitchableBatchNorm2d, bn_key
