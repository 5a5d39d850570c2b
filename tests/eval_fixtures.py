"""Offline fixtures for the evaluation tests: a tiny Llama with a byte-level BPE tokenizer trained
here, a WikiText-like test split (raw file, parquet, arrow), and a local lm-eval multiple-choice task."""
import json
import random

import torch

WORDS = ("the river valley town music album song season game player team city film war ship army "
         "church station road bridge school north south early later record").split()


def tiny_lm(seed=0, layers=2):
    """(model, tokenizer): a random LlamaForCausalLM (hidden 64) and a 320-token BPE tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from dsnot_kernels.data import pydoc_text

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([pydoc_text()[:20000]], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, eos_token_id=1, bos_token_id=1))
    return model.eval(), fast


def wikitext_rows(n_articles=6, seed=0):
    """Rows shaped as the wikitext dataset's: ' = Title = \\n', '', paragraph lines, blank rows."""
    rng = random.Random(seed)
    rows = [""]
    for a in range(n_articles):
        rows += [f" = {rng.choice(WORDS).title()} {a} = \n", ""]
        for _ in range(rng.randint(2, 4)):
            rows += [" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) + " . \n", ""]
        rows += [f" = = Section {a} = = \n", ""]
    return rows


def write_raw(path, rows):
    path.write_text("".join(r if r else "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": rows}), str(path))
    return path


def write_arrow_dataset(folder, rows):
    """The layout ``datasets``' ``DatasetDict.save_to_disk`` writes: test/data-00000-of-00001.arrow (stream)."""
    import pyarrow as pa
    (folder / "test").mkdir(parents=True)
    table = pa.table({"text": rows})
    with pa.OSFile(str(folder / "test" / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": ["test"]}))
    return folder


def write_mc_task(folder, name="dsnot_local_mc", n=12, seed=0):
    """A multiple-choice lm-eval task over a local jsonl file; returns (folder, docs)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        question = "Question: " + " ".join(rng.choice(WORDS) for _ in range(6)) + "?\nAnswer:"
        choices = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(3)]
        docs.append({"question": question, "choices": choices, "label": rng.randrange(3)})
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return folder, docs
