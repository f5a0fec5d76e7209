"""OMPQ: orthogonality (CKA) importance and LP bit allocation (docs/methods/ompq.md).

"OMPQ: Orthogonal Mixed Precision Quantization" (AAAI 2023): units.py (the layer groups sharing
a bit-width), cka.py (linear CKA, the ORM matrix), orthogonality.py (features, the importance
file), lp.py (the LP and its rounding), search.py (the `ompq` search method).
"""
