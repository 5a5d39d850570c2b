"""Weight updates for a mask: SparseGPT as published (``sparsegpt.py``: its mask and its updated
weights) and the exact re-solve of a row's kept weights for any mask (``reconstruct.py``; the
direct batched solves in ``reconstruct_direct.py``). Both read the layer's second moment M
(docs/KERNEL_CONTRACT.md, "Weight updates")."""
