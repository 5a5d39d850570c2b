"""Drop-in entry points for other pruning libraries.

Each submodule is imported on demand and imports nothing heavy at package import time:

* ``dsnot_kernels.integrations.neural_compressor``: ``DSnoT``, a function with the signature and
  return value of Intel Neural Compressor's ``compression.pruner.dsnot.DSnoT``, and ``patch()`` /
  ``unpatch()`` to swap it into an installed neural-compressor.
* ``dsnot_kernels.integrations.torch_ao``: ``DSnoTSparsifier``, a ``torch.ao.pruning`` sparsifier
  (prepare -> calibrate -> step -> squash_mask).
* ``dsnot_kernels.integrations.llmcompressor``: ``DSnoTModifier``, an llm-compressor ``oneshot`` recipe
  modifier. Needs llmcompressor (its own venv: ``make llmcompressor-venv``); importing it without
  llmcompressor raises ImportError, and nothing else here imports it.

Libraries that already compute their own metric or mask (RIA, OWL ratios, SparseGPT) need no
adapter: pass it to ``dsnot_kernels.refine_mask`` as ``initial_metric=`` or ``initial_mask=``
(worked examples in ``python/examples/functional_recipes.py``).
"""
