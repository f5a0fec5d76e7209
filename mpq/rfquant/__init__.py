"""RFQuant: a weight-sharing bit supernet searched without retraining (docs/methods/rfquant.md).

"Retraining-free Model Quantization via One-Shot Weight-Coupling Learning" (CVPR 2024):
supernet.py (the supernet and its candidate state), training.py (supernet training), losses.py
(IDM, QE, ARWD), bit_scheduler.py (turbulence and freezing), ema.py (the averaged model),
greedy_search.py (bidirectional greedy search), subnet.py (exporting the searched subnet).
"""
