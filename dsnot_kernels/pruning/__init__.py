"""Layer-by-layer pruning of whole models (spec §4): ``prune_model`` and ``PruneConfig``."""
from dsnot_kernels.pruning.adapters import (UnsupportedModelError, find_blocks, find_sublayers,
                                            is_refined, sublayer_kind, weight_view)
from dsnot_kernels.pruning.config import PruneConfig, parse_pattern
from dsnot_kernels.pruning.driver import PruningError, prune_model

__all__ = ["prune_model", "PruneConfig", "PruningError", "UnsupportedModelError", "find_blocks",
           "find_sublayers", "is_refined", "sublayer_kind", "weight_view", "parse_pattern"]
