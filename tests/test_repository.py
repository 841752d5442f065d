"""The repository stands alone: nothing in it points at documents outside it.

Regression: the README sent readers to `../shared/ARCHITECTURE.md` and module docstrings cited
design notes (`SCHEDULING.md`, `PEERS.md`, a contracts file under `/work/shared`) that a clone does
not have. Every `NAME.md` a tracked file mentions must be a document of the repository, every
relative Markdown link must resolve, and no file may name a path outside the checkout.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "xtts-venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
OUTSIDE = re.compile(r"\.\./shared|/work/")  # where the design notes live, outside any clone
URL = re.compile(r"https?://\S+")
MD_NAME = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.md)\b")
MD_LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True, timeout=30)
        names = [n for n in out.stdout.decode().split("\0") if n]
    except (OSError, subprocess.SubprocessError):  # not a git checkout (an sdist): walk the tree
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not SKIP_DIRS & set(p.relative_to(ROOT).parts)]
    return [ROOT / n for n in names if (ROOT / n).is_file()]


def text_of(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def test_no_file_points_outside_the_repository() -> None:
    files = tracked_files()
    assert any(f.name == "README.md" for f in files)
    markdown = {f.name for f in files if f.suffix == ".md"}
    problems: list[str] = []
    for path in files:
        text = text_of(path)
        if text is None or path == Path(__file__).resolve():
            continue
        rel = path.relative_to(ROOT)
        for n, line in enumerate(text.splitlines(), 1):
            local = URL.sub("", line)
            if OUTSIDE.search(local):
                problems.append(f"{rel}:{n}: names a path outside the repository: {line.strip()[:120]}")
            for name in MD_NAME.findall(local):
                if Path(name).name not in markdown:
                    problems.append(f"{rel}:{n}: cites {name}, which is not in the repository")
            if path.suffix == ".md":
                for link in MD_LINK.findall(local):
                    if not (path.parent / link).resolve().is_file():
                        problems.append(f"{rel}:{n}: links to {link}, which does not exist")
    assert not problems, "\n".join(problems)


def test_the_check_sees_an_outside_reference() -> None:
    line = "See `../shared/ARCHITECTURE.md` for the design."
    assert OUTSIDE.search(line) and MD_NAME.findall(line) == ["../shared/ARCHITECTURE.md"]
    assert MD_NAME.findall("(contracts.md §3.1) and docs/scheduler.md") == ["contracts.md", "docs/scheduler.md"]
    assert not MD_NAME.findall(URL.sub("", "https://huggingface.co/x/blob/main/LICENSE.md"))


def test_every_cited_contract_section_exists() -> None:
    """Code cites docs/contracts.md by section (`contracts.md §3.1`, `§2.3`); each must be a heading."""
    doc = (ROOT / "docs" / "contracts.md").read_text()
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", doc, re.MULTILINE))
    missing: list[str] = []
    for path in tracked_files():
        text = text_of(path)
        if text is None or path.suffix not in (".py", ".md"):
            continue
        for section in re.findall(r"§ ?(\d+(?:\.\d+)?)(?<!\.)", text):
            if section not in headings:
                missing.append(f"{path.relative_to(ROOT)}: §{section}")
    assert not missing, f"sections of docs/contracts.md cited but absent: {missing}"
