"""LIMPQ: learned layer-wise importance indicators (docs/methods/limpq.md).

"Mixed-Precision Neural Network Quantization via Learned Layer-wise Importance" (ECCV 2022):
indicators.py trains the multi-bit indicator model and extracts its learned steps; the file
format is mpq.importance_file and the ILP search over them is mpq.search.ilp.
"""
