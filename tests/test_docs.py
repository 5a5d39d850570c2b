"""The repository stands on its own: its docs exist, nothing points outside it, every relative link
and every cited file in the Markdown files resolves, user docs name no issue numbers, and the
README's objective x backend table says what the code says."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked(*patterns):
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.stdout.split()]


def test_own_spec_and_api_exist():
    for name in ("ALGORITHM.md", "API.md", "KERNEL_CONTRACT.md"):
        assert (ROOT / "docs" / name).stat().st_size > 2000


def test_nothing_cites_a_spec_outside_the_repository():
    offenders = []
    for path in _tracked("*.py", "*.md", "*.h", "*.cuh", "*.cu", "*.cpp", "*.sh", "Makefile"):
        if path.name == "test_docs.py" or not path.exists():
            continue
        text = path.read_text(errors="replace")
        if "shared/spec" in text:
            offenders.append(str(path.relative_to(ROOT)))
        for m in re.finditer(r"(?<![\w/.])(ALGORITHM|API)\.md", text):
            # a bare name is fine inside docs/ (same folder); elsewhere it must say docs/
            if path.parent != ROOT / "docs" and text[max(0, m.start() - 5):m.start()] != "docs/":
                offenders.append(f"{path.relative_to(ROOT)}: bare {m.group(0)}")
    assert not offenders, offenders


USER_DOCS = ["README.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))
MARKDOWN = USER_DOCS + ["benchmarks/RESULTS.md"]


@pytest.mark.parametrize("md", MARKDOWN)
def test_relative_links_resolve(md):
    path = ROOT / md
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        assert (path.parent / target).exists(), f"{md} links to missing {target}"


# A file of this repository named in prose: benchmarks/bench_swap.py, tests/test_stats.py::test_x, ...
CITED = re.compile(r"(?<![\w/.])((?:benchmarks|python|tests|dsnot_kernels|csrc|docs)/[\w./-]*\w"
                   r"\.(?:py|sh|json|md|cpp|cu|cuh|h|pt|txt))")


@pytest.mark.parametrize("md", MARKDOWN)
def test_cited_files_exist(md):
    path = ROOT / md
    missing = [p for p in CITED.findall(path.read_text())
               if not (ROOT / p).exists() and not (path.parent / p).exists()]
    assert not missing, f"{md} cites files that do not exist: {missing}"


@pytest.mark.parametrize("md", USER_DOCS)
def test_user_docs_name_no_issue_numbers(md):
    """History belongs in the git log: "issue 15", "issue #21", "(#20)" are not user documentation
    (an upstream reference such as vllm#36799 is)."""
    text = (ROOT / md).read_text()
    found = re.findall(r"\bissues? #?\d+|(?<![\w/#])#\d+\b", text, re.I)
    assert not found, f"{md} names issue numbers: {found}"


def test_every_experiment_is_cited_as_reproducible():
    """benchmarks/experiments/ holds only what the results cite (scripts and their raw data), and the
    private helpers those scripts import."""
    folder = ROOT / "benchmarks" / "experiments"
    cited = "\n".join((ROOT / md).read_text() for md in MARKDOWN)
    scripts = {p.name: p.read_text() for p in folder.glob("*.py")}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(("_", ".")) and path.suffix == ".py":
            stem = path.stem
            assert any(re.search(rf"^\s*(import|from) {stem}\b", text, re.M) for text in scripts.values()), \
                f"{path.name} is imported by no experiment script"
        elif path.name != "__pycache__":
            assert f"benchmarks/experiments/{path.name}" in cited, \
                f"benchmarks/experiments/{path.name} is cited nowhere: delete it or cite it with its command"


def test_cli_help_points_at_the_api_doc():
    res = subprocess.run([sys.executable, "-m", "dsnot_kernels", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 0 and "docs/API.md" in res.stdout
    assert (ROOT / "docs" / "API.md").exists()


def test_readme_objective_table_matches_the_code():
    """The README's objective x backend table says what ``ops.OBJECTIVES`` says."""
    import re
    from pathlib import Path

    from dsnot_kernels.ops import BACKENDS, OBJECTIVES

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| objective | a row swaps"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert set(columns[3:]) == set(BACKENDS)
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| `(\w+)` \|", line)
        if m and m.group(1) in OBJECTIVES and line.count("|") == len(columns) + 1:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[m.group(1)] = cells
    assert set(rows) == set(OBJECTIVES)
    for name, cells in rows.items():
        served = {b for b, cell in zip(columns[3:], cells[3:]) if cell == "yes"}
        assert served == set(OBJECTIVES[name].backends), name
        needs = set(re.findall(r"`(\w+)`", cells[2]))
        assert needs == set(OBJECTIVES[name].needs), name
