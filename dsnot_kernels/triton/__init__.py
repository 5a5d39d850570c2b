"""Triton backend of DSnoT (spec §2-§3): ``refine_mask_triton`` with the op's positional args.

Kernels, one file each with its launcher: ``select_unstructured`` (bisection threshold select),
``select_nm`` (rank within each M-group), ``refine`` (fused per-row refinement).
"""
from dsnot_kernels.triton.launch import refine_mask_triton

__all__ = ["refine_mask_triton"]
