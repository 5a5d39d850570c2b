"""Tiny random models of each supported family, built from configs (no download).

``FAMILY_TABLE``: one entry per family (add a family by adding an entry): what is special about it,
its config class and options, and the expected kind of each linear sub-layer of a block
("self_attn" or "mlp", the authors' skip rule, ``sublayer_kind``). docs/MODELS.md lists the same.
"""
from dataclasses import dataclass, field

import torch

VOCAB = 96
BOS = 2  # the BOS id of the BOS-trained families' configs (and of tests' word-level tokenizers)

_LLAMA_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_LLAMA_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass
class Family:
    name: str
    special: str
    config_class: str
    options: dict
    attention: tuple = _LLAMA_ATTN
    mlp: tuple = _LLAMA_MLP
    common: bool = True          # the shared hidden 64 / inter 128 / 4 heads options apply
    extra: dict = field(default_factory=dict)

    def config(self, layers: int):
        import transformers as tf

        opts = dict(self.options)
        if self.common:
            opts.update(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                        num_attention_heads=4, max_position_embeddings=128)
        else:
            opts[opts.pop("_layers_key")] = layers
        if "layer_types" in opts:  # an explicit pattern, repeated to the number of layers
            opts["layer_types"] = [opts["layer_types"][i % len(opts["layer_types"])] for i in range(layers)]
        return getattr(tf, self.config_class)(**opts)


_GEMMA = dict(num_key_value_heads=2, head_dim=16, bos_token_id=BOS, eos_token_id=1, pad_token_id=0)
FAMILY_TABLE = {f.name: f for f in [
    Family("llama", "Llama 2 style, GQA (4 query / 2 key-value heads)", "LlamaConfig",
           dict(num_key_value_heads=2)),
    Family("mistral", "sliding-window attention config, GQA", "MistralConfig", dict(num_key_value_heads=2)),
    Family("qwen2", "biases on q/k/v", "Qwen2Config", dict(num_key_value_heads=2)),
    Family("opt", "decoder.layers, fc1/fc2, learned positions, biases", "OPTConfig",
           dict(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_attention_heads=4, word_embed_proj_dim=64,
                max_position_embeddings=128, _layers_key="num_hidden_layers"),
           attention=("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj"),
           mlp=("fc1", "fc2"), common=False),
    Family("gpt2", "transformer.h, transposed Conv1D weights, fused c_attn", "GPT2Config",
           dict(vocab_size=VOCAB, n_embd=64, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0,
                _layers_key="n_layer"),
           attention=("attn.c_attn", "attn.c_proj"), mlp=("mlp.c_fc", "mlp.c_proj"), common=False),
    Family("llama3", "Llama 3 style: GQA 4:1, llama3 RoPE scaling, head_dim 16, untied embeddings",
           "LlamaConfig", dict(num_key_value_heads=1, head_dim=16, tie_word_embeddings=False, bos_token_id=1,
                               eos_token_id=2, rope_parameters={
                                   "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 64})),
    Family("qwen3", "RMSNorm on q and k per head (q_norm, k_norm), GQA", "Qwen3Config",
           dict(num_key_value_heads=2, head_dim=16)),
    Family("gemma2", "sandwich norms (pre/post feed-forward), attention and final logit soft-capping, "
           "alternating sliding-window (8) / full attention layers, tied embeddings, BOS-trained",
           "Gemma2Config", dict(sliding_window=8, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                **_GEMMA)),
    Family("gemma3", "sandwich norms, q/k norms, sliding-window (8) layers with their own RoPE base beside "
           "full-attention layers (a different mask per layer type), tied embeddings, BOS-trained",
           "Gemma3TextConfig", dict(sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                                    **_GEMMA)),
    Family("phi3", "fused qkv_proj and gate_up_proj", "Phi3Config",
           dict(num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0),
           attention=("self_attn.o_proj", "self_attn.qkv_proj"), mlp=("mlp.gate_up_proj", "mlp.down_proj")),
]}

FAMILIES = ["llama", "mistral", "qwen2", "opt", "gpt2"]  # the first five (the older tests' set)
ALL_FAMILIES = list(FAMILY_TABLE)


def tiny_model(family: str, seed: int = 0, layers: int = 2):
    from transformers import AutoModelForCausalLM

    if family not in FAMILY_TABLE:
        raise ValueError(family)
    torch.manual_seed(seed)
    cfg = FAMILY_TABLE[family].config(layers)
    return AutoModelForCausalLM.from_config(cfg).eval()


def calibration(nsamples=6, seqlen=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (nsamples, seqlen), generator=g)


def word_tokenizer(adds_bos: bool = True, words: int = VOCAB - 4):
    """An offline word-level tokenizer: ids 0-3 are <pad>, <eos>, <bos> (= BOS), <unk>, then "w0" ...;
    ``adds_bos``: it prepends <bos> to every encoded text (as Gemma's and Llama 2's do)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<bos>", "<unk>"] + [f"w{k}" for k in range(words)])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if adds_bos:
        tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def word_text(nwords: int, seed: int = 0, words: int = VOCAB - 4) -> str:
    """Random text of ``nwords`` words that ``word_tokenizer`` encodes one id per word."""
    g = torch.Generator().manual_seed(seed)
    return " ".join(f"w{int(k)}" for k in torch.randint(0, words, (nwords,), generator=g))
