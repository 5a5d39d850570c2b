"""Tiny random models of each supported family, built from configs (no download)."""
import torch

VOCAB = 96


def tiny_model(family: str, seed: int = 0, layers: int = 2):
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, max_position_embeddings=128)
    if family == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(num_key_value_heads=2, **common))
    elif family == "mistral":
        model = tf.MistralForCausalLM(tf.MistralConfig(num_key_value_heads=2, **common))
    elif family == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(num_key_value_heads=2, **common))
    elif family == "opt":
        model = tf.OPTForCausalLM(tf.OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128,
                                               num_hidden_layers=layers, num_attention_heads=4,
                                               word_embed_proj_dim=64, max_position_embeddings=128))
    elif family == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=layers, n_head=4,
                                                 n_positions=128, bos_token_id=0, eos_token_id=0))
    else:
        raise ValueError(family)
    return model.eval()


FAMILIES = ["llama", "mistral", "qwen2", "opt", "gpt2"]


def calibration(nsamples=6, seqlen=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (nsamples, seqlen), generator=g)
