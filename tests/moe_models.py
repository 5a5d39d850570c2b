"""Tiny random mixture-of-experts models (no download) and an independent per-expert reference.

The reference prunes expert e of one block as a standalone linear layer per projection: the MoE
block's input hidden states are captured with a pre-hook, the routed tokens are computed here from
the router's weight (softmax, top-k, as the family's router does), each calibration sequence's
routed tokens (in token order) are one sample of ``dk.CalibrationStats``, and the mask comes from
``dk.refine_mask`` / ``dk.sparsegpt`` with the config's arguments.
"""
import torch
import torch.nn.functional as F
from torch import nn

import dsnot_kernels as dk
from dsnot_kernels.objectives.reference import initial_selection

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=128)


def tiny_moe(family: str, seed: int = 0, layers: int = 2):
    import transformers as tf
    torch.manual_seed(seed)
    c = dict(COMMON, num_hidden_layers=layers)
    if family == "mixtral":
        cfg = tf.MixtralConfig(intermediate_size=128, num_local_experts=4, num_experts_per_tok=2, **c)
    elif family == "qwen3_moe":
        cfg = tf.Qwen3MoeConfig(intermediate_size=128, moe_intermediate_size=32, num_experts=4,
                                num_experts_per_tok=2, head_dim=16, **c)
    elif family == "olmoe":
        cfg = tf.OlmoeConfig(intermediate_size=32, num_experts=4, num_experts_per_tok=2, **c)
    elif family == "qwen2_moe":
        cfg = tf.Qwen2MoeConfig(intermediate_size=128, moe_intermediate_size=32, shared_expert_intermediate_size=64,
                                num_experts=4, num_experts_per_tok=2, **c)
    elif family == "deepseek_v3":
        cfg = tf.DeepseekV3Config(intermediate_size=128, moe_intermediate_size=32, n_routed_experts=4,
                                  num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, n_group=1,
                                  topk_group=1, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8,
                                  qk_nope_head_dim=8, v_head_dim=16, **c)
    elif family == "gpt_oss":
        cfg = tf.GptOssConfig(intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, head_dim=16, **c)
    elif family == "linear_experts":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(intermediate_size=128, **c))
        for layer in model.model.layers:
            layer.mlp = LinearExpertsMoE(64, 32, experts=4, top_k=2)
        return model.eval()
    else:
        raise ValueError(family)
    return tf.AutoModelForCausalLM.from_config(cfg).eval()


class _Expert(nn.Module):
    def __init__(self, hidden, inter):
        super().__init__()
        self.w1, self.w3 = nn.Linear(hidden, inter, bias=False), nn.Linear(hidden, inter, bias=False)
        self.w2 = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class LinearExpertsMoE(nn.Module):
    """Older Mixtral-style MoE: a Linear router and an nn.ModuleList of experts, each called on its
    routed tokens (gathered top-k slot first, as transformers 4 did)."""

    def __init__(self, hidden, inter, experts, top_k):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.experts = nn.ModuleList(_Expert(hidden, inter) for _ in range(experts))

    def route(self, x):
        probs = F.softmax(self.gate(x), dim=-1, dtype=torch.float)
        w, idx = torch.topk(probs, self.top_k, dim=-1)
        return w / w.sum(-1, keepdim=True), idx

    def forward(self, h):
        B, T, H = h.shape
        x = h.reshape(-1, H)
        w, idx = self.route(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            slot, tok = torch.where((idx == e).t())
            if tok.numel():
                out.index_add_(0, tok, expert(x[tok]) * w[tok, slot, None])
        return out.reshape(B, T, H)


def moe_inputs(model, calib, batch_size, block):
    """Per batch: the (B, T, H) hidden states entering block ``block``'s MoE layer."""
    out = []
    mlp = model.model.layers[block].mlp
    h = mlp.register_forward_pre_hook(lambda m, a: out.append(a[0].detach().clone()))
    try:
        with torch.no_grad():
            for ids in calib.split(batch_size):
                model(input_ids=ids, use_cache=False)
    finally:
        h.remove()
    return out


def routed(mlp, x, mode="routed"):
    """(N, k) top-k expert ids of x (N, H), computed from the router's weight as the family does."""
    if mode == "all":
        return None
    if isinstance(mlp, LinearExpertsMoE):
        return mlp.route(x)[1]
    logits = F.linear(x, mlp.gate.weight)
    return torch.topk(F.softmax(logits, dim=-1, dtype=torch.float), mlp.gate.top_k, dim=-1)[1]


def routed_counts(mlp, batches, experts):
    """Routed calibration tokens per expert, from the router's weight."""
    idx = torch.cat([routed(mlp, h.reshape(-1, h.shape[-1])) for h in batches])
    return [int((idx == e).any(-1).sum()) for e in range(experts)]


def expert_samples(mlp, batches, e, mode="routed"):
    """[(first-projection samples, down-projection samples)] of expert e, one pair per batch."""
    per_batch = []
    for h in batches:
        B, T, H = h.shape
        x = h.reshape(-1, H)
        idx = routed(mlp, x, mode)
        tok = torch.arange(x.shape[0]) if idx is None else (idx == e).any(-1).nonzero().squeeze(1)
        if isinstance(mlp, LinearExpertsMoE):  # the model's own order (top-k slot first), then sorted
            slot, mtok = torch.where((idx == e).t())
            ex = mlp.experts[e]
            a = F.silu(ex.w1(x[mtok])) * ex.w3(x[mtok])
            down = a[torch.sort(mtok, stable=True)[1]]
        else:
            gu = F.linear(x[tok], mlp.experts.gate_up_proj[e])
            g, u = gu.chunk(2, dim=-1)
            down = mlp.experts.act_fn(g) * u
        counts = torch.bincount(tok // T, minlength=B).tolist()
        per_batch.append(([s for s in x[tok].split(counts) if len(s)], [s for s in down.split(counts) if len(s)]))
    return per_batch


def reference_expert_masks(mlp, batches, config, mode="routed"):
    """``{driver sub-layer name: (mask, new_weight or None)}`` of every expert of one MoE layer."""
    out = {}
    fused = not isinstance(mlp, LinearExpertsMoE)
    E = mlp.experts.gate_up_proj.shape[0] if fused else len(mlp.experts)
    need_m = config.initial in ("sparsegpt", "sparsegpt_metric") or config.objective in ("cov", "cov_window", "swap")
    for e in range(E):
        if fused:
            layers = {"gate_up_proj": (0, mlp.experts.gate_up_proj.data[e]), "down_proj": (1, mlp.experts.down_proj.data[e])}
        else:
            ex = mlp.experts[e]
            layers = {"w1": (0, ex.w1.weight.data), "w3": (0, ex.w3.weight.data), "w2": (1, ex.w2.weight.data)}
        samples = expert_samples(mlp, batches, e, mode)
        for key, (which, W) in layers.items():
            st = dk.CalibrationStats(W.shape[1], hessian=need_m)
            for pair in samples:
                for s in pair[which]:
                    st.add_batch(s)
            out[f"mlp.experts.{e}.{key}"] = standalone_mask(W, st, config)
    return out


def standalone_mask(W, st, config):
    if st.nsamples == 0:
        return initial_selection(W.float().abs(), config.sparsity, config.prune_n, config.prune_m), None
    if config.initial == "sparsegpt":
        return dk.sparsegpt(W, st.hessian, sparsity=config.sparsity, prune_n=config.prune_n,
                            prune_m=config.prune_m)
    metric = None if config.initial == "wanda" else dk.initial_metric(config.initial, W, st)
    mask = dk.refine_mask(W, st.sum_metric_row, st.var, st.scaler_row, initial_metric=metric,
                          sparsity=config.sparsity, prune_n=config.prune_n, prune_m=config.prune_m,
                          max_cycle_time=config.max_cycle_time if config.refine else 0,
                          objective=config.objective, mean=st.mean if config.objective == "mse" else None,
                          second_moment=st.hessian if config.objective in ("cov", "cov_window", "swap") else None,
                          window=config.window)
    return mask, None
