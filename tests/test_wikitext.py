"""WikiText-2 with the published protocol, offline: local copies (raw file, parquet, datasets' arrow
folder) give the dataset's rows; the perplexity equals today's protocol (``dk.perplexity`` of
``"\\n\\n".join(rows)``, all ``len // seqlen`` windows) and a transcription of eval_ppl_wikitext."""
import math
import sys

import pytest
import torch
import torch.nn.functional as F

import dsnot_kernels as dk
from dsnot_kernels import wikitext
from dsnot_kernels.data import tokenize, wikitext2_test_text

from eval_fixtures import tiny_lm, wikitext_rows, write_arrow_dataset, write_parquet, write_raw


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


def test_raw_file_rows_are_the_datasets_rows(tmp_path):
    rows = wikitext_rows()
    got, source = wikitext.load_test_rows(write_raw(tmp_path / "wiki.test.raw", rows))
    assert got == rows and "wiki.test.raw" in source
    assert wikitext2_test_text(tmp_path / "wiki.test.raw") == "\n\n".join(rows)


def test_parquet_and_arrow_copies(tmp_path):
    pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    rows = wikitext_rows(seed=3)
    hub = tmp_path / "hub" / "wikitext-2-raw-v1"
    hub.mkdir(parents=True)
    write_parquet(hub / "test-00000-of-00001.parquet", rows)
    write_parquet(hub / "train-00000-of-00001.parquet", ["not", "this"])
    write_arrow_dataset(tmp_path / "saved", rows)
    for local in (hub / "test-00000-of-00001.parquet", tmp_path / "hub", tmp_path / "saved",
                  tmp_path / "saved" / "test" / "data-00000-of-00001.arrow"):
        assert wikitext.load_test_rows(local)[0] == rows, local


def test_datasets_library_path(monkeypatch):
    datasets = pytest.importorskip("datasets", reason="datasets is not installed")
    rows = wikitext_rows(seed=5)
    calls = []

    def fake_load(*args, split=None):
        calls.append((args, split))
        return datasets.Dataset.from_dict({"text": rows})
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert wikitext2_test_text() == "\n\n".join(rows)
    assert calls == [(("wikitext", "wikitext-2-raw-v1"), "test")]

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)\nmore lines")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(wikitext.WikiTextUnavailable) as info:
        wikitext.load_test_rows()
    assert "\n" not in str(info.value) and "Couldn't reach" in str(info.value) and "local copy" in str(info.value)


def test_no_library_and_no_copy_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(wikitext.WikiTextUnavailable, match=r"needs the `datasets` library .* or a local copy"):
        wikitext.load_test_rows()
    with pytest.raises(wikitext.WikiTextUnavailable, match="no such file"):
        wikitext.load_test_rows(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(wikitext.WikiTextUnavailable, match="no test split"):
        wikitext.load_test_rows(tmp_path / "empty")


def eval_ppl_wikitext_transcribed(model, ids, seqlen):
    """The authors' loop: nsamples = numel // seqlen windows, loss * seqlen each, exp(sum / (n * seqlen))."""
    n = ids.numel() // seqlen
    nlls = []
    for i in range(n):
        x = ids[i * seqlen:(i + 1) * seqlen].reshape(1, seqlen)
        with torch.no_grad():
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits[0, :-1].float(), x[0, 1:])
        nlls.append(float(loss) * seqlen)
    return math.exp(sum(nlls) / (n * seqlen)), n


def test_perplexity_is_todays_protocol_on_the_same_text(tmp_path, lm):
    model, tok = lm
    rows = wikitext_rows(n_articles=4)
    raw = write_raw(tmp_path / "wiki.test.raw", rows)
    seqlen = 64
    out = wikitext.wikitext2_perplexity(model, tok, seqlen, local=raw)
    ids = tokenize(tok, "\n\n".join(rows))
    assert out["ppl"] == pytest.approx(dk.perplexity(model, ids, seqlen), rel=1e-12)
    want, n = eval_ppl_wikitext_transcribed(model, ids, seqlen)
    assert out["windows"] == n == ids.numel() // seqlen and n >= 3
    assert out["ppl"] == pytest.approx(want, rel=1e-5)
    assert f"{n} windows x {seqlen} tokens (len // seqlen" in out["description"]
    assert '"\\n\\n".join(test["text"])' in out["description"]


def test_cli_eval_wikitext2_from_a_local_copy(tmp_path, lm, capsys):
    """dsnot-prune --eval wikitext2 --eval-file COPY: every window, the protocol stated, the same figure."""
    from dsnot_kernels.cli import main

    model, tok = lm
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    rows = wikitext_rows(n_articles=4)
    raw = write_raw(tmp_path / "wiki.test.raw", rows)
    report = tmp_path / "r.json"
    main(["--model", str(folder), "--nsamples", "2", "--seqlen", "64", "--no-refine", "--eval", "wikitext2",
          "--eval-file", str(raw), "--quiet", "--json", str(report)])
    out = capsys.readouterr().out
    import json
    result = json.loads(report.read_text())
    assert "len // seqlen" in result["evaluation"] and "windows x 64 tokens" in out
    dense = result["rows"][0]
    assert dense["method"] == "dense"
    assert dense["ppl"] == pytest.approx(dk.perplexity(model, tokenize(tok, "\n\n".join(rows)), 64), rel=1e-6)
