"""dsnot_kernels: fast, exact DSnoT mask refinement (CPU C++, CUDA, Triton, PyTorch reference)."""
from dsnot_kernels import _extension  # noqa: F401  (loads the compiled ops when present)
from dsnot_kernels.metrics import authors_sqrt_scaler, initial_metric, magnitude_metric, sparsegpt_metric, wanda_metric
from dsnot_kernels.ops import available_backends, backend_report, refine_mask
from dsnot_kernels.stats import CalibrationStats
from dsnot_kernels.sparse24 import check_nm, nm_violations, to_sparse_24
from dsnot_kernels.pruning import PruneConfig, prune_model
from dsnot_kernels.eval import perplexity
from dsnot_kernels.weights.sparsegpt import sparsegpt
from dsnot_kernels.weights.reconstruct import reconstruct

__version__ = "0.1.0"

__all__ = [
    "CalibrationStats", "refine_mask", "available_backends", "backend_report", "initial_metric", "wanda_metric",
    "authors_sqrt_scaler", "magnitude_metric", "sparsegpt_metric", "prune_model", "PruneConfig", "perplexity",
    "nm_violations", "check_nm", "to_sparse_24", "sparsegpt", "reconstruct",
]
