"""Every ```python block of the documentation runs, so the documentation cannot rot.

The documents are README.md, docs/design.md and benchmarks/results/README.md. The blocks of one
document run in order in one namespace (one namespace per document), as a reader pasting them
one after another would run them, each from a temporary working directory. A block opts out when
the line right before its fence is ``<!-- skip-test -->`` (for code that needs a GPU, a download
or minutes). A block that needs an optional dependency which is not installed (JAX, SciPy,
matplotlib, ...) is skipped, and so is any later block that fails only because a name from a
skipped block is missing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCUMENTS = [README, ROOT / "docs" / "design.md", ROOT / "benchmarks" / "results" / "README.md"]
SKIP_MARKER = "<!-- skip-test -->"
OPTIONAL_MODULES = {"jax", "jaxlib", "scipy", "matplotlib", "ml_dtypes", "torch", "transformers"}


class Block(NamedTuple):
    line: int  # 1-based line of the first line of code
    code: str
    skipped: bool


def python_blocks(text: str) -> list[Block]:
    """The ```python fenced blocks of a markdown text, with their line numbers and opt-outs.

    Example:
        >>> python_blocks("<!-- skip-test -->\\n```python\\nx = 1\\n```\\n```python\\ny = 2\\n```\\n")
        [Block(line=3, code='x = 1\\n', skipped=True), Block(line=6, code='y = 2\\n', skipped=False)]
    """
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = re.fullmatch(r"(\s*)(```+|~~~+)\s*python\s*", lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening.group(1), opening.group(2)
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        code = "".join(line.removeprefix(indent) + "\n" for line in lines[i + 1:end])
        blocks.append(Block(i + 2, code, previous == SKIP_MARKER))
        i = end + 1
    return blocks


BLOCKS = [(document, block) for document in DOCUMENTS if document.exists()
          for block in python_blocks(document.read_text(encoding="utf-8"))]


@pytest.fixture(scope="module")
def namespaces() -> dict[Path, dict[str, Any]]:
    """One namespace per document, each holding the lines of its blocks skipped so far."""
    return {document: {"__name__": "__readme__", "__skipped_blocks__": []} for document in DOCUMENTS}


def test_documents_exist_and_readme_has_python_blocks() -> None:
    missing = [str(document.relative_to(ROOT)) for document in DOCUMENTS if not document.exists()]
    assert not missing, f"documents missing: {missing}"
    assert any(d == README and not b.skipped for d, b in BLOCKS), "README.md has no tested ```python block"


def test_readme_starts_with_the_two_commands() -> None:
    """The demo and test commands come first, verbatim: CI runs the second exactly as written."""
    commands = re.findall(r"```bash\n(.*?)\n```", README.read_text(encoding="utf-8"), re.S)
    assert commands[:2] == ["python -m pip install . && python -m agnostic_sampling demo",
                            'python -m pip install ".[test]" && python -m pytest -q']
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8") if (ROOT / ".ci" / "run").exists() else ""
    assert not ci or commands[1] in ci.splitlines()


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a markdown text's headings (lower case, punctuation dropped).

    Example:
        >>> sorted(anchors("# Speed\n## The API at a glance\n### `smp.generate`: loops"))
        ['smpgenerate-loops', 'speed', 'the-api-at-a-glance']
    """
    headings = re.findall(r"^#+ +(.+?) *$", re.sub(r"```.*?```", "", text, flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(d.relative_to(ROOT)) for d in DOCUMENTS])
def test_relative_links_resolve(document: Path) -> None:
    """Every relative link of a document names a file of the repository, and a heading there."""
    text = document.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        file = (document.parent / path).resolve() if path else document
        if not file.exists() or (anchor and file.suffix == ".md"
                                 and anchor not in anchors(file.read_text(encoding="utf-8"))):
            broken.append(target)
    assert not broken, f"{document.relative_to(ROOT)}: links to nothing: {broken}"


@pytest.mark.parametrize("document, block", BLOCKS,
                         ids=[f"{d.relative_to(ROOT)}:{b.line}" for d, b in BLOCKS])
def test_documentation_block(document: Path, block: Block, namespaces: dict[Path, dict[str, Any]],
                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if block.skipped:
        pytest.skip(f"opted out with {SKIP_MARKER}")
    monkeypatch.chdir(tmp_path)
    namespace = namespaces[document]
    # padded so that a traceback's line numbers are the document's own
    source = compile("\n" * (block.line - 1) + block.code, str(document), "exec")
    skipped_before = namespace["__skipped_blocks__"]
    try:
        exec(source, namespace)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in OPTIONAL_MODULES:
            raise
        skipped_before.append(block.line)
        pytest.skip(f"needs {error.name}, which is not installed")
    except NameError as error:
        if not skipped_before:
            raise
        pytest.skip(f"{error}: defined in a block skipped earlier (lines {skipped_before})")


def test_python_blocks_extraction() -> None:
    text = "\n".join([
        "# Title",                      # 1
        "```bash",                      # 2
        "pip install x",                # 3
        "```",                          # 4
        "<!-- skip-test -->",           # 5
        "",                             # 6
        "```python",                    # 7
        "raise SystemExit('GPU only')",  # 8
        "```",                          # 9
        "1. a list item:",              # 10
        "   ```python",                 # 11
        "   x = 1",                     # 12
        "   ```",                       # 13
        "```python",                    # 14
        "y = x + 1",                    # 15
        "```",                          # 16
    ])
    blocks = python_blocks(text)
    assert [(b.line, b.skipped) for b in blocks] == [(8, True), (12, False), (15, False)]
    assert blocks[1].code == "x = 1\n"
    namespace: dict[str, Any] = {}
    for block in blocks:
        if not block.skipped:
            exec(compile("\n" * (block.line - 1) + block.code, "README.md", "exec"), namespace)
    assert namespace["y"] == 2
    with pytest.raises(ZeroDivisionError) as info:
        exec(compile("\n" * 14 + "1 / 0\n", "README.md", "exec"), {})
    assert info.traceback[-1].lineno + 1 == 15  # tracebacks name the README's own line


def test_anchors_and_the_link_check() -> None:
    assert anchors("# Speed\n## The API at a glance\n```python\n# not a heading\n```\n"
                   "### `smp.generate`: loops") == {"speed", "the-api-at-a-glance", "smpgenerate-loops"}
    assert "design-notes" in anchors((ROOT / "docs" / "design.md").read_text(encoding="utf-8"))
