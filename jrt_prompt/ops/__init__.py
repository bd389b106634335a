"""Operations, each a plain PyTorch reference (``<op>/naive.py``) plus optional fast paths.

``<op>/__init__.py`` exports the function layers call; it picks a fast path when the tensors are on
CUDA and the kernel imports, else the reference. ``backend.reference_ops()`` forces the reference.
"""
