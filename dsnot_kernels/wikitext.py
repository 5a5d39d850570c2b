"""WikiText-2 (raw, test split) for perplexity with the Wanda/SparseGPT/DSnoT protocol.

The protocol (their ``eval_ppl_wikitext``): ``"\\n\\n".join(test["text"])`` of
``load_dataset("wikitext", "wikitext-2-raw-v1", split="test")``, tokenized once, cut into
``len // seqlen`` consecutive windows of ``seqlen`` tokens (the tail is dropped); perplexity =
exp(mean next-token loss over the windows) (``dsnot_kernels.eval.perplexity``).

Where the rows come from, in order: ``local`` when given (a raw text file such as ``wiki.test.raw``,
a ``.parquet`` or ``.arrow`` file, or a folder holding the test split as parquet or as
``datasets``' ``save_to_disk`` arrow files), else the ``datasets`` library (its cache, or the hub
when it can reach it). A raw text file is split into rows as the ``wikitext`` dataset was built
from it: one row per line, the line's newline kept, blank lines as empty rows.
"""
from __future__ import annotations

from pathlib import Path

NAME = "wikitext2"
HF_ID = ("wikitext", "wikitext-2-raw-v1")
PROTOCOL = ('"\\n\\n".join(test["text"]), tokenized once, {n} windows x {seqlen} tokens (len // seqlen; '
            "the Wanda/SparseGPT/DSnoT eval_ppl_wikitext protocol)")


class WikiTextUnavailable(RuntimeError):
    """Neither a local copy nor the ``datasets`` library could give the test split (one-line message)."""


def rows_from_raw(text: str) -> list:
    """The dataset's rows of a raw WikiText file: one per line (newline kept), blank lines empty."""
    return [line if line.strip() else "" for line in text.splitlines(keepends=True)]


def _arrow_table(path: Path):
    import pyarrow as pa
    import pyarrow.ipc as ipc
    with pa.memory_map(str(path)) as source:
        try:
            return ipc.open_stream(source).read_all()  # datasets' save_to_disk writes the stream format
        except pa.ArrowInvalid:
            return ipc.open_file(source).read_all()


def _rows_of_file(path: Path) -> list:
    if path.suffix in (".parquet", ".arrow"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise WikiTextUnavailable(f"{path}: reading {path.suffix} needs pyarrow (pip install pyarrow)") from None
        table = pq.read_table(str(path)) if path.suffix == ".parquet" else _arrow_table(path)
        if "text" not in table.column_names:
            raise WikiTextUnavailable(f"{path}: no 'text' column (columns: {table.column_names})")
        return table.column("text").to_pylist()
    return rows_from_raw(path.read_text(encoding="utf-8"))


def _test_files(folder: Path) -> list:
    """The test split's files in a folder: parquet (hub layout), arrow (save_to_disk), or wiki.test.raw."""
    for pattern in ("**/test-*.parquet", "**/test/*.parquet", "**/*test*.parquet", "test/*.arrow",
                    "**/test/data-*.arrow", "data-*.arrow", "**/wiki.test.raw"):
        found = sorted(p for p in folder.glob(pattern) if "train" not in p.name and "valid" not in p.name)
        if found:
            return found
    return []


def load_test_rows(local=None) -> tuple:
    """``(rows, source)``: the test split's ``text`` column and where it came from (for the output).

    Raises ``WikiTextUnavailable`` with a one-line reason when there is no way to get it."""
    if local is not None:
        path = Path(local).expanduser()
        if not path.exists():
            raise WikiTextUnavailable(f"WikiText-2 local copy {local}: no such file or folder")
        files = [path] if path.is_file() else _test_files(path)
        if not files:
            raise WikiTextUnavailable(f"WikiText-2 local copy {local}: no test split in the folder (expected "
                                      "test-*.parquet, test/data-*.arrow as datasets saves it, or wiki.test.raw)")
        rows = [row for f in files for row in _rows_of_file(f)]
        return rows, f"WikiText-2 raw test split from {local}"
    try:
        import datasets
    except ImportError:
        raise WikiTextUnavailable("WikiText-2 needs the `datasets` library (pip install datasets) or a local copy "
                                  "(--eval-file wiki.test.raw, or a folder with the test split as parquet/arrow)") from None
    try:
        test = datasets.load_dataset(*HF_ID, split="test")
    except Exception as exc:  # offline, no cache, hub errors: all mean the same to the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WikiTextUnavailable(f"WikiText-2 could not be loaded with datasets ({first}); give a local copy "
                                  "(--eval-file wiki.test.raw, or a folder with the test split as parquet/arrow)") from None
    return list(test["text"]), "WikiText-2 raw test split (datasets: wikitext/wikitext-2-raw-v1)"


def wikitext2_test_text(local=None) -> str:
    """The evaluation text of the protocol: ``"\\n\\n".join`` of the test split's rows (see ``load_test_rows``)."""
    return "\n\n".join(load_test_rows(local)[0])


def describe(source: str, ntokens: int, seqlen: int, windows=None) -> str:
    """The line that states the protocol in the output."""
    n = ntokens // seqlen if windows is None else min(windows, ntokens // seqlen)
    return f"{source}: " + PROTOCOL.format(n=n, seqlen=seqlen) + (
        f" [first {n} windows only]" if windows is not None and n < ntokens // seqlen else "")


def wikitext2_perplexity(model, tokenizer, seqlen: int, local=None, *, max_windows=None, progress=False) -> dict:
    """``{"ppl", "windows", "tokens", "description"}``: the protocol's perplexity of ``model``."""
    from dsnot_kernels.data import tokenize
    from dsnot_kernels.eval import perplexity

    rows, source = load_test_rows(local)
    ids = tokenize(tokenizer, "\n\n".join(rows))
    ppl = perplexity(model, ids, seqlen, max_windows=max_windows, progress=progress, desc="perplexity (WikiText-2)")
    return {"ppl": ppl, "windows": min(ids.numel() // seqlen, max_windows or 10**12), "tokens": int(ids.numel()),
            "description": describe(source, ids.numel(), seqlen, max_windows)}
