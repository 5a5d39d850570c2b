"""Statistics of each expert's projections from exactly the tokens the model routes to it.

The rule (``docs/MOE.md``): expert e is a standalone linear layer per projection. Its calibration
samples are the calibration sequences: the tokens of sequence b that the model's router sends to
e (top-k as the model computes it), in token order, form one sample of e (a sequence with none of
them adds no sample). Its first projection's statistics are those tokens' block-level hidden
states; its down projection's statistics are its own input on those tokens, computed with the
dense weights (``act(gate) * up``, or whatever the model's experts module applies).

* fused experts: a forward pre-hook on the experts module reads its call,
  ``(hidden_states (N, H), top_k_index (N, k), top_k_weights (N, k))``, N = batch x seqlen;
  expert e's tokens are the rows with e in ``top_k_index``. The down projection's input is
  computed here with the module's own ``_apply_gate`` / ``act_fn``; in the first call the module's
  output is checked against a recomputation from these numbers, so a layout read wrongly is an
  error, not wrong statistics. This does not depend on the experts implementation (eager,
  grouped_mm, ...) the model runs.
* expert modules (``nn.ModuleList``): hooks on expert e's ``nn.Linear`` layers see only its rows;
  a pre-hook on the expert maps each row back to its token by exact match against the MoE
  block's input, so the rows are grouped into samples as above.

``expert_tokens="all"`` (fused experts only): every token is sent to every expert for the
statistics; the block's own output still follows the model's routing.
"""
from __future__ import annotations

import inspect
import time

import torch
import torch.nn.functional as F


def split_samples(rows: torch.Tensor, tokens: torch.Tensor, seqlen: int, batch: int) -> list:
    """The rows (n, C) of ``tokens`` (n,) ascending, cut into per-sequence samples (empty ones dropped)."""
    counts = torch.bincount(tokens // seqlen, minlength=batch).tolist()
    return [c for c in rows.split(counts) if c.shape[0]]


def _int_view(x: torch.Tensor) -> torch.Tensor:
    kind = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
    return x.contiguous().view(kind).long()


def match_rows(ref: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Token index (n,) of every row of ``x`` (n, H) in ``ref`` (N, H): the rows must be copies of
    distinct rows of ref (equal rows are assigned in order). Raises ValueError otherwise."""
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=ref.device)
    if x.shape[-1] != ref.shape[-1] or x.dtype != ref.dtype:
        raise ValueError(f"an expert's input {tuple(x.shape)} {x.dtype} is not rows of its MoE block's input "
                         f"{tuple(ref.shape)} {ref.dtype}")
    coef = torch.randint(-2 ** 62, 2 ** 62, (ref.shape[-1],), generator=torch.Generator().manual_seed(7))
    coef = coef.to(ref.device)
    hk, xk = (_int_view(ref) * coef).sum(1), (_int_view(x) * coef).sum(1)
    hk_s, hperm = torch.sort(hk, stable=True)
    xk_s, xperm = torch.sort(xk, stable=True)
    pos = torch.searchsorted(hk_s, xk_s) + (torch.arange(len(xk_s), device=x.device)
                                            - torch.searchsorted(xk_s, xk_s))
    ok = bool((pos < len(hk_s)).all()) and bool((hk_s[pos.clamp(max=len(hk_s) - 1)] == xk_s).all())
    tok = torch.empty_like(xperm)
    if ok:
        tok[xperm] = hperm[pos]
    if not ok or not torch.equal(ref[tok], x):
        raise ValueError("an expert's input rows are not copies of its MoE block's input rows, so its routed "
                         "tokens cannot be told (dsnot_kernels supports experts called on hidden_states[tokens])")
    return tok


class _Collector:
    """Base: statistics of the projections of ``experts`` (ids) of one ``ExpertSet``.

    make_stats(cols, hessian) makes a statistics object; needs_m(name) says whether projection
    ``name`` needs the (cols, cols) second moment. share: expert Linear layers that read the same
    tensor share one statistics object (off under torch.distributed, where every rank must hold
    the same objects whatever its tokens).
    """

    def __init__(self, es, experts, make_stats, needs_m, mode="routed", share=True):
        self.es, self.experts, self.make, self.needs_m, self.mode = es, tuple(experts), make_stats, needs_m, mode
        self.share = share
        self.tokens = [0] * es.num_experts
        self.stats: dict = {}
        self.batch, self.calls, self.time_s = 1, 0, 0.0
        self._handles: list = []

    def begin_call(self, batch: int) -> None:
        self.batch = batch

    def end_call(self) -> None:
        self.calls += 1

    def hook(self, module, fn, kind: str, **kwargs) -> None:
        """Register ``fn`` as ``module``'s ``kind`` ("forward_pre" / "forward") hook, kept for
        ``detach``; overridden where hooks must go through another registry (llm-compressor's)."""
        self._handles.append(getattr(module, f"register_{kind}_hook")(fn, **kwargs))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def stats_of(self, name: str):
        """The statistics of projection ``name`` (None if the expert got no token)."""
        return self.stats.get(name)


class FusedCollector(_Collector):
    """Hooks on a fused experts module (see the module docstring)."""

    def attach(self) -> None:
        m = self.es.module
        self._params = list(inspect.signature(type(m).forward).parameters)[1:]
        for e in self.experts:
            for name in self.es.names_of(e):
                self.stats[name] = self.make(self.es.weight(name).shape[1], self.needs_m(name))
        self.hook(m, self._pre, "forward_pre", with_kwargs=True)
        self.hook(m, self._post, "forward", with_kwargs=True)

    def _call_args(self, args, kwargs):
        bound = dict(zip(self._params, args))
        bound.update(kwargs)
        vals = [bound.get(p) for p in self._params[:3]]
        if len(vals) < 3 or any(not isinstance(v, torch.Tensor) for v in vals):
            raise ValueError(f"experts module {self.es.path} was not called as (hidden_states, top_k_index, "
                             f"top_k_weights); got parameters {self._params}")
        hidden, idx, wts = vals
        flat = hidden.reshape(-1, hidden.shape[-1])
        return flat, idx.reshape(flat.shape[0], -1), wts.reshape(flat.shape[0], -1)

    def hidden_of(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e's down-projection input on rows x (dense weights, the module's own gate)."""
        m, lay = self.es.module, self.es.layout
        P = getattr(m, lay.first)[e]
        y = x @ P if lay.transposed else F.linear(x, P)
        if lay.bias:
            y = y + getattr(m, lay.biases[0])[e]
        return m._apply_gate(y) if lay.gated else m.act_fn(y)

    def output_of(self, e: int, h: torch.Tensor) -> torch.Tensor:
        m, lay = self.es.module, self.es.layout
        y = h @ m.down_proj[e] if lay.transposed else F.linear(h, m.down_proj[e])
        return y + m.down_proj_bias[e] if lay.bias else y

    def _pre(self, module, args, kwargs):
        t0 = time.perf_counter()
        hidden, idx, _ = self._call_args(args, kwargs)
        N = hidden.shape[0]
        if N % self.batch:
            raise ValueError(f"experts module {self.es.path} got {N} tokens for a batch of {self.batch} samples")
        T = N // self.batch
        for e in range(self.es.num_experts):
            routed = (idx == e).any(-1)
            self.tokens[e] += N if self.mode == "all" else int(routed.sum())
            if e not in self.experts:
                continue
            tok = torch.arange(N, device=hidden.device) if self.mode == "all" else routed.nonzero().squeeze(1)
            if tok.numel() == 0:
                continue
            x = hidden[tok]
            first, down = self.es.names_of(e)
            self._feed(first, split_samples(x, tok, T, self.batch))
            self._feed(down, split_samples(self.hidden_of(e, x), tok, T, self.batch))
        self.time_s += time.perf_counter() - t0

    def _feed(self, name, samples):
        for s in samples:
            self.stats[name].add_batch(s)

    def _post(self, module, args, kwargs, out):
        if self.calls:
            return
        hidden, idx, wts = self._call_args(args, kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        ref = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        for e in range(self.es.num_experts):
            tok, pos = (idx == e).nonzero(as_tuple=True)
            if tok.numel():
                y = self.output_of(e, self.hidden_of(e, hidden[tok]))
                if getattr(module, "has_post_expert_norm", False):
                    y = module.post_expert_norm(y)
                ref.index_add_(0, tok, (y * wts[tok, pos, None]).float())
        tol = 1e-3 if hidden.dtype in (torch.float32, torch.float64) else 5e-2
        err = float((out.reshape(ref.shape).float() - ref).abs().max()) if out.numel() else 0.0
        if not err <= tol * max(float(ref.abs().max()), 1e-6):
            raise ValueError(f"experts module {self.es.path} ({type(module).__name__}): its output differs from "
                             f"layout {self.es.layout.name!r} recomputed from its call (max error {err:.3g}); "
                             "its layout is not the one dsnot_kernels reads, refusing wrong statistics")


class ModulesCollector(_Collector):
    """Hooks on an ``nn.ModuleList`` of experts (see the module docstring)."""

    def attach(self) -> None:
        if self.mode == "all":
            raise ValueError('expert_tokens="all" needs fused experts; an nn.ModuleList of experts is only '
                             f'called on its routed tokens ({self.es.path})')
        self._ref, self._T, self._order = None, 1, {}
        self.owner: dict = {}
        if not self.share:
            for e in self.experts:
                for name in self.es.names_of(e):
                    self.owner[name] = name
                    self.stats[name] = self.make(self.es.weight(name).shape[1], self.needs_m(name))
        self.hook(self.es.parent, self._block_pre, "forward_pre")
        for e in range(self.es.num_experts):
            expert = self.es.module[e]
            self.hook(expert, self._expert_pre(e), "forward_pre")
            if e in self.experts:
                for name in self.es.names_of(e):
                    self.hook(expert.get_submodule(self.es.projections[name][1]), self._linear(e, name), "forward")

    def _block_pre(self, module, args):
        x = args[0]
        self._ref = x.reshape(-1, x.shape[-1])
        if self._ref.shape[0] % self.batch:
            raise ValueError(f"MoE block of {self.es.path} got {self._ref.shape[0]} tokens for {self.batch} samples")
        self._T = self._ref.shape[0] // self.batch

    def _expert_pre(self, e):
        def fn(module, args):
            t0 = time.perf_counter()
            if self._ref is None or not args:
                raise ValueError(f"expert {e} of {self.es.path} ran outside its MoE block's call")
            x = args[0].reshape(-1, args[0].shape[-1])
            self.tokens[e] += x.shape[0]
            if e in self.experts:
                tok = match_rows(self._ref, x)
                order = torch.sort(tok, stable=True)[1]
                self._order[e] = (order, tok[order], {})
            self.time_s += time.perf_counter() - t0
        return fn

    def _linear(self, e, name):
        def fn(module, inp, out):
            t0 = time.perf_counter()
            order, tok, seen = self._order[e]
            z = inp[0]
            owner = next((n for n, y in seen.items() if y is z), name) if self.share else name
            if self.owner.setdefault(name, owner) != owner:
                raise ValueError(f"{name} shared the input of {self.owner[name]} once but not in every call")
            seen[name] = z
            if owner == name:
                z2 = z.reshape(-1, z.shape[-1])
                if z2.shape[0] != order.shape[0]:
                    raise ValueError(f"{name} got {z2.shape[0]} rows, its expert {order.shape[0]}")
                if name not in self.stats:
                    self.stats[name] = self.make(z2.shape[-1], any(self.needs_m(n) for n in self.es.names_of(e)))
                for s in split_samples(z2[order], tok, self._T, self.batch):
                    self.stats[name].add_batch(s)
            self.time_s += time.perf_counter() - t0
        return fn

    def stats_of(self, name: str):
        return self.stats.get(self.owner.get(name, name))


def make_collector(es, experts, make_stats, needs_m, mode, share=True):
    cls = FusedCollector if es.kind == "fused" else ModulesCollector
    return cls(es, experts, make_stats, needs_m, mode, share)
