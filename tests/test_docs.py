"""The user documentation (README.md, docs/): short README, no history or ../shared, links and names that exist."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
USER_DOCS = [README, *DOCS]
MAX_README_LINES = 300

#: Words that tell the story of how kface was made instead of what it is: history goes to CHANGELOG.md.
HISTORY = re.compile(r"\bround\b|\buntil now\b|\bthis session\b|\bpreviously\b|\bno longer\b", re.IGNORECASE)
#: A bare version ("v3 had been", "v2's recipe"); shipped files are named in full (korean-v4).
BARE_VERSION = re.compile(r"(?<![\w-])v\d+\b")
#: A model named with its version: it must be a file or recipe that ships today.
VERSIONED_NAME = re.compile(r"\b[a-z][a-z0-9]*(?:-[a-z][a-z0-9]*)*-v\d+(?:-int8)?\b")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
MODULE_COMMAND = re.compile(r"python -m (kface(?:\.\w+)+)")
REPO_PATH = re.compile(r"`((?:kface|bench|tests|reports|examples|pairs)/[\w./-]+)`")
CODE_SPAN = re.compile(r"`([^`]+)`")
DOTTED_NAME = re.compile(r"(?<![\w/.-])kface(?:\.\w+)+")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _doc_id(path: Path) -> str:
    return str(path.relative_to(REPO))


def _shipped_names() -> set[str]:
    """Stems of the shipped model files, their cards and recipes (e.g. korean-v4, korean-v4-int8), and the
    backbone names they run under (kface-korean-v4)."""
    models = REPO / "kface" / "models"
    stems = {path.stem for pattern in ("*.onnx", "*.json", "recipes/*.json") for path in models.glob(pattern)}
    return stems | {f"kface-{stem}" for stem in stems}


def test_readme_is_short() -> None:
    lines = _text(README).count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES}); move detail to docs/"


def test_there_are_docs_pages() -> None:
    assert DOCS, "docs/ holds no page"


@pytest.mark.parametrize("path", USER_DOCS, ids=_doc_id)
def test_no_history_in_user_docs(path: Path) -> None:
    text = _text(path)
    found = [m.group(0) for m in HISTORY.finditer(text)] + [m.group(0) for m in BARE_VERSION.finditer(text)]
    assert not found, (f"{_doc_id(path)} tells history ({', '.join(sorted(set(found)))}): say what is, "
                       f"move the rest to CHANGELOG.md")


@pytest.mark.parametrize("path", USER_DOCS, ids=_doc_id)
def test_versioned_names_are_shipped(path: Path) -> None:
    shipped = _shipped_names()
    stale = sorted({name for name in VERSIONED_NAME.findall(_text(path)) if name not in shipped})
    assert not stale, (f"{_doc_id(path)} names versions that do not ship ({', '.join(stale)}); "
                       f"history goes to CHANGELOG.md")


@pytest.mark.parametrize("path", USER_DOCS, ids=_doc_id)
def test_no_path_into_shared(path: Path) -> None:
    text = _text(path)
    assert "../shared" not in text, f"{_doc_id(path)} points into ../shared, which a user's install lacks"


@pytest.mark.parametrize("path", [*USER_DOCS, REPO / "CHANGELOG.md"], ids=_doc_id)
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in MARKDOWN_LINK.findall(_text(path)):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (path.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert not broken, f"{_doc_id(path)} links to missing files: {', '.join(broken)}"


@pytest.mark.parametrize("path", USER_DOCS, ids=_doc_id)
def test_named_modules_and_files_exist(path: Path) -> None:
    """Every `python -m kface....` command and every repository path in backticks names something real."""
    text = _text(path)
    missing = []
    for module in MODULE_COMMAND.findall(text):
        stem = REPO.joinpath(*module.split("."))
        if not (stem.with_suffix(".py").is_file() or (stem / "__main__.py").is_file()):
            missing.append(f"python -m {module}")
    for name in REPO_PATH.findall(text):
        if not any(char in name for char in "*|") and not (REPO / name.rstrip("/.")).exists():
            missing.append(name)
    assert not missing, f"{_doc_id(path)} names what does not exist: {', '.join(sorted(set(missing)))}"


def _python_name_exists(dotted: str) -> bool:
    """Whether ``kface.a.b.name`` is a module of the source tree, or a name defined, imported or lazily
    exported (named in a string) in one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        stem = REPO.joinpath(*parts[:cut])
        source = stem.with_suffix(".py") if stem.with_suffix(".py").is_file() else stem / "__init__.py"
        if source.is_file():
            if cut == len(parts):
                return True
            name = re.escape(parts[cut])
            return re.search(rf"^\s*(?:def|class)\s+{name}\b|^{name}\s*[:=]|^\s*from .* import "
                             rf".*\b{name}\b|[\"']{name}[\"']",
                             source.read_text(encoding="utf-8"), re.MULTILINE) is not None
    return False


@pytest.mark.parametrize("path", USER_DOCS, ids=_doc_id)
def test_named_python_objects_exist(path: Path) -> None:
    """Every `kface.module.name` the docs show in code resolves in the source tree (after a move too)."""
    named = {m for span in CODE_SPAN.findall(_text(path)) for m in DOTTED_NAME.findall(span)}
    stale = sorted(name for name in named if not _python_name_exists(name))
    assert not stale, f"{_doc_id(path)} names Python objects that do not exist: {', '.join(stale)}"


def _fenced_block_after(text: str, heading: str) -> list[str]:
    """The command lines of the first fenced code block under ``heading``."""
    section = text.split(f"\n{heading}\n", 1)[1]
    block = section.split("```", 2)[1]
    return [line.strip() for line in block.splitlines()[1:] if line.strip()]


@pytest.mark.parametrize("heading", ["## Install", "## Test"])
def test_ci_runs_the_readmes_commands(heading: str) -> None:
    """.ci/run is the README's set-up, then the README's test command: the two never drift apart."""
    ci_lines = {line.strip() for line in _text(REPO / ".ci" / "run").splitlines()}
    commands = _fenced_block_after(_text(README), heading)
    assert commands, f"README.md's {heading} section has no command block"
    assert all(command in ci_lines for command in commands), \
        f"README.md's {heading} commands {commands} are not what .ci/run runs"


def test_commands_table_names_real_commands() -> None:
    """Each row of the README's commands table starts with a command the CLI has."""
    import click

    from kface.cli import cli

    table = _text(README).split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    named = {m.group(1) for m in re.finditer(r"^\| `kface ([\w-]+)", table, re.MULTILINE)}
    assert named, "README.md's commands table lists no command"
    unknown = sorted(named - set(cli.list_commands(click.Context(cli))))
    assert not unknown, f"README.md's commands table names commands the CLI lacks: {', '.join(unknown)}"
