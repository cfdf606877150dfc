"""Every ```python block of README.md runs, so the README cannot rot.

The blocks run in order in one namespace, as a reader pasting them one after another would run
them, each from a temporary working directory. A block opts out when the line right before its
fence is ``<!-- skip-test -->`` (for code that needs a GPU, a download or minutes). A block that
needs an optional dependency which is not installed (JAX, SciPy, matplotlib, ...) is skipped, and
so is any later block that fails only because a name from a skipped block is missing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from typing import NamedTuple

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
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


BLOCKS = python_blocks(README.read_text(encoding="utf-8")) if README.exists() else []


@pytest.fixture(scope="module")
def namespace() -> dict[str, Any]:
    """The one namespace all blocks share, and the lines of the blocks skipped so far."""
    return {"__name__": "__readme__", "__skipped_blocks__": []}


def test_readme_has_python_blocks() -> None:
    assert README.exists(), f"{README} is missing"
    assert any(not block.skipped for block in BLOCKS), "README.md has no tested ```python block"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{b.line}" for b in BLOCKS])
def test_readme_block(block: Block, namespace: dict[str, Any], tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    if block.skipped:
        pytest.skip(f"opted out with {SKIP_MARKER}")
    monkeypatch.chdir(tmp_path)
    # padded so that a traceback's line numbers are README.md's own
    source = compile("\n" * (block.line - 1) + block.code, str(README), "exec")
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
