"""The BOS rule of calibration and evaluation windows (docs/MODELS.md): BOS-trained families (tiny
random Gemma configs and an offline word-level tokenizer that adds BOS) evaluate as a plain
transformers loop that prepends BOS to each window; bos="never" is the protocol of before, bit for bit."""
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

import dsnot_kernels as dk
from dsnot_kernels.bos import calibration_bos, resolve_bos, tokenizer_adds_bos
from dsnot_kernels.data import calibration_windows, tokenize
from pruning_models import BOS, tiny_model, word_text, word_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

SEQLEN = 16


@torch.no_grad()
def plain_bos_loop(model, stream_without_bos, seqlen, bos_id):
    """Reference: each window is BOS + the next seqlen - 1 stream tokens, the loss is over its seqlen - 1
    predicted (stream) tokens, windows weighted equally; written with nothing but the model's forward."""
    body = seqlen - 1
    losses = []
    for k in range(stream_without_bos.numel() // body):
        piece = stream_without_bos[k * body:(k + 1) * body]
        x = torch.cat([torch.tensor([bos_id]), piece]).unsqueeze(0)
        logits = model(input_ids=x).logits[0]
        losses.append(F.cross_entropy(logits[:-1].float(), piece))   # position j predicts piece[j]
    return math.exp(float(torch.stack(losses).mean()))


@torch.no_grad()
def perplexity_before(model, ids, seqlen, max_windows=None, batch_size=1):
    """The perplexity protocol as it was before the BOS option (a transcription of that code)."""
    ids = ids.reshape(-1).long()
    windows = ids.numel() // seqlen
    if max_windows is not None:
        windows = min(windows, int(max_windows))
    total = 0.0
    for start in range(0, windows, batch_size):
        stop = min(start + batch_size, windows)
        inputs = ids[start * seqlen: stop * seqlen].reshape(stop - start, seqlen)
        logits = model(input_ids=inputs, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1, :].float().reshape(-1, logits.shape[-1]), inputs[:, 1:].reshape(-1))
        total += float(loss) * seqlen * (stop - start)
    return math.exp(total / (windows * seqlen))


def windows_before(ids, nsamples, seqlen, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(nsamples):
        i = rng.randint(0, ids.numel() - seqlen - 1)
        rows.append(ids[i:i + seqlen])
    return torch.stack(rows)


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_bos_trained_model_evaluates_as_a_plain_loop_that_prepends_bos(family):
    model = tiny_model(family)
    tok = word_tokenizer(adds_bos=True)
    stream = tokenize(tok, word_text(64, seed=3))
    assert stream[0] == BOS and (stream[1:] != BOS).all()   # one BOS, at the start of the stream only
    want = plain_bos_loop(model, stream[1:], SEQLEN, BOS)
    for kw in (dict(bos="auto", tokenizer=tok), dict(bos="auto"), dict(bos="always", bos_token_id=BOS, batch_size=3)):
        got = dk.perplexity(model, stream, SEQLEN, **kw)
        assert got == pytest.approx(want, rel=1e-5), kw
    # a stream without the tokenizer's BOS: "always" adds one per window all the same
    assert dk.perplexity(model, stream[1:], SEQLEN, bos="always") == pytest.approx(want, rel=1e-5)
    # and the figure is not the plain-slice one (the test would not see a missing BOS otherwise)
    assert dk.perplexity(model, stream, SEQLEN, bos="never") != pytest.approx(want, rel=1e-3)


def test_gemma_with_bos_and_max_windows():
    model = tiny_model("gemma3")
    stream = tokenize(word_tokenizer(), word_text(64, seed=4))
    full = plain_bos_loop(model, stream[1:], SEQLEN, BOS)
    two = plain_bos_loop(model, stream[1:1 + 2 * (SEQLEN - 1)], SEQLEN, BOS)
    assert dk.perplexity(model, stream, SEQLEN, max_windows=2) == pytest.approx(two, rel=1e-5)
    assert two != pytest.approx(full, rel=1e-4)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_never_is_the_protocol_of_before_bit_for_bit(family):
    model = tiny_model(family)
    stream = tokenize(word_tokenizer(adds_bos=True), word_text(80, seed=5))
    for max_windows, batch_size in ((None, 1), (3, 2)):
        assert dk.perplexity(model, stream, SEQLEN, bos="never", max_windows=max_windows,
                             batch_size=batch_size) == perplexity_before(model, stream, SEQLEN, max_windows, batch_size)
    assert torch.equal(calibration_windows(stream, 5, SEQLEN, seed=2, bos="never"),
                       windows_before(stream, 5, SEQLEN, 2))


def test_auto_without_a_bos_tokenizer_is_the_protocol_of_before():
    """SmolLM2-like: the tokenizer adds no BOS; "auto" changes nothing, whatever the config's bos id."""
    model = tiny_model("llama")  # config bos_token_id 1
    tok = word_tokenizer(adds_bos=False)
    assert not tokenizer_adds_bos(tok)
    stream = tokenize(tok, word_text(80, seed=6))
    stream[0] = 1  # even a stream that happens to begin with the config's BOS id: the tokenizer decides
    assert dk.perplexity(model, stream, SEQLEN, tokenizer=tok) == perplexity_before(model, stream, SEQLEN)
    assert torch.equal(calibration_windows(stream, 4, SEQLEN, tokenizer=tok), windows_before(stream, 4, SEQLEN, 0))
    assert torch.equal(calibration_windows(stream, 4, SEQLEN), windows_before(stream, 4, SEQLEN, 0))


@pytest.mark.parametrize("bos", ["auto", "always"])
def test_calibration_windows_start_with_bos_for_a_bos_tokenizer(bos):
    tok = word_tokenizer(adds_bos=True)
    stream = tokenize(tok, word_text(200, seed=7))
    calib, rule = calibration_windows(stream, 6, SEQLEN, seed=3, bos=bos, tokenizer=tok, return_rule=True)
    assert rule.use and rule.bos_token_id == BOS
    assert calib.shape == (6, SEQLEN) and calib.dtype == torch.long
    assert (calib[:, 0] == BOS).all() and (calib[:, 1:] != BOS).all()  # one BOS each, never doubled
    body = stream[1:]
    rng = random.Random(3)                       # the authors' draw, on the stream without its BOS
    for row in calib:
        i = rng.randint(0, body.numel() - (SEQLEN - 1) - 1)
        assert torch.equal(row[1:], body[i:i + SEQLEN - 1])


def test_bos_rule_errors_and_decisions():
    with pytest.raises(ValueError, match="bos must be one of"):
        resolve_bos("yes")
    with pytest.raises(ValueError, match='bos="always" needs a BOS token id'):
        calibration_windows(torch.arange(4, 90), 2, 8, bos="always")
    with pytest.raises(ValueError, match="bos must be one of"):
        dk.PruneConfig(bos="sometimes")
    with pytest.raises(ValueError, match="bos_token_id must be"):
        dk.PruneConfig(bos_token_id=-1)
    assert not resolve_bos("auto").use                       # nothing known: no BOS
    assert resolve_bos("auto", bos_token_id=2, stream=torch.tensor([2, 5, 6])).use
    assert not resolve_bos("auto", bos_token_id=2, stream=torch.tensor([5, 2, 6])).use
    model = tiny_model("gemma2")
    model.config.bos_token_id = None
    model.generation_config.bos_token_id = 7
    assert resolve_bos("always", model=model).bos_token_id == 7
    model.generation_config.bos_token_id = None
    with pytest.raises(ValueError, match="needs a BOS token id"):
        dk.perplexity(model, torch.arange(4, 60), SEQLEN, bos="always")


def test_prune_model_bos_always_starts_every_window_with_bos():
    model, ref = tiny_model("gemma3"), tiny_model("gemma3")
    g = torch.Generator().manual_seed(9)
    calib = torch.randint(4, 96, (4, SEQLEN), generator=g)
    calib[1, 0] = BOS                                                  # this one already starts with BOS
    config = dict(sparsity=0.5, skip="none", batch_size=2, progress=False)
    seen = {}
    report = dk.prune_model(model, calib, dk.PruneConfig(bos="always", **config),
                            on_mask=lambda i, n, m: seen.__setitem__((i, n), m.clone()))
    assert report["bos"] == {"rule": "always", "bos_token_id": BOS, "windows_prefixed": 3, "windows_with_bos": 4,
                             "used": True}
    expected = calib.clone()
    expected[[0, 2, 3]] = torch.cat([torch.full((3, 1), BOS), calib[[0, 2, 3], :-1]], dim=1)
    same = {}
    ref_report = dk.prune_model(ref, expected, dk.PruneConfig(bos="never", **config),
                                on_mask=lambda i, n, m: same.__setitem__((i, n), m.clone()))
    assert ref_report["bos"]["rule"] == "never" and ref_report["bos"]["windows_prefixed"] == 0
    assert seen.keys() == same.keys() and all(torch.equal(seen[k], same[k]) for k in seen)
    # "auto" uses the windows as given (the tokenizer's rule is applied where windows are made)
    auto, entry = calibration_bos(calib, "auto", model)
    assert auto is calib and entry["windows_with_bos"] == 1 and entry["windows_prefixed"] == 0
    model.config.bos_token_id = model.generation_config.bos_token_id = None
    with pytest.raises(ValueError, match="bos_token_id"):
        dk.prune_model(model, calib, dk.PruneConfig(bos="always", **config))


def _gemma_folder(tmp_path):
    from dsnot_kernels.models import save_model
    folder = tmp_path / "tiny-gemma"
    save_model(tiny_model("gemma2"), word_tokenizer(adds_bos=True), folder)
    (tmp_path / "calib.txt").write_text(word_text(400, seed=1))
    (tmp_path / "eval.txt").write_text(word_text(80, seed=2))
    return folder


@pytest.mark.parametrize("bos", ["auto", "never"])
def test_cli_bos_on_a_bos_trained_model(tmp_path, bos, capsys):
    """dsnot-prune --bos: the printed table and the JSON say which rule ran, and the dense figure is
    the plain BOS loop's (auto) or the plain slices' (never)."""
    folder = _gemma_folder(tmp_path)
    from dsnot_kernels import cli
    assert cli.main(["--model", str(folder), "--calib", str(tmp_path / "calib.txt"),
                     "--eval", str(tmp_path / "eval.txt"),
                     "--nsamples", "4", "--seqlen", str(SEQLEN), "--eval-windows", "0", "--no-refine", "--bos", bos,
                     "--quiet", "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["bos"]["rule"] == bos and result["bos"]["used"] == (bos == "auto")
    assert f"windows: BOS {bos}:" in capsys.readouterr().out
    report = result["reports"][0]
    assert report["config"]["bos"] == bos
    assert report["bos"]["windows_with_bos"] == (4 if bos == "auto" else 0)
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    stream = tokenize(word_tokenizer(), (tmp_path / "eval.txt").read_text())
    want = plain_bos_loop(model, stream[1:], SEQLEN, BOS) if bos == "auto" else perplexity_before(model, stream, SEQLEN)
    assert result["rows"][0]["method"] == "dense" and result["rows"][0]["ppl"] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("bos,used", [("auto", True), ("never", False)])
def test_authors_main_bos_flag(tmp_path, bos, used, capsys, monkeypatch):
    """python/main.py --bos: the windows line and the result line say which rule ran; the figure is the
    plain BOS loop's (auto) or the plain slices' (never) on the dense tiny Gemma 2."""
    import runpy
    import sys
    from pathlib import Path
    folder = _gemma_folder(tmp_path)
    monkeypatch.setattr(sys, "argv", [
        "main.py", "--model", str(folder), "--prune_method", "dense", "--seqlen", str(SEQLEN),
        "--eval", str(tmp_path / "eval.txt"), "--bos", bos, "--output_results_file", str(tmp_path / "r.txt")])
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "python" / "main.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert f"windows: BOS {bos}:" in out and f"BOS {bos}: {'used' if used else 'not used'}" in out
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    stream = tokenize(word_tokenizer(), (tmp_path / "eval.txt").read_text())
    want = plain_bos_loop(model, stream[1:], SEQLEN, BOS) if used else perplexity_before(model, stream, SEQLEN)
    got = float((tmp_path / "r.txt").read_text().split("\t")[6])
    assert got == pytest.approx(want, abs=1e-4)
