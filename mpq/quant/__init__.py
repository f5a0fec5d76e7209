"""Quantizers, quantized layers, switchable BN and model conversion."""
from .convert import (DEFAULT_FIXED_BITS, conv_bn_pairs, convert_model, quant_modules, searchable_layers,
                      set_layer_bits, set_policy_bits, set_uniform_bits, split_layers)
from .layers import QuantConv2d, QuantLinear
from .lsq import LsqQuantizer, int_range, lsq_fake_quant, round_ste, scale_grad
from .switchable_bn import SwitchableBatchNorm2d, bn_key
