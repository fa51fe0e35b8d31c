"""The front door stays a front door: README.md is short, every link in it and in docs/ leads somewhere, its code
map names only paths that exist and leaves out no folder a newcomer must know, and docs/configuration.md names
every configuration key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

README_MAX_BYTES = 15_000
TOP_LEVEL = ("flashsearch", "kernels", "proxies", "search_spaces", "experiments", "tests", "docs")
PACKAGE_ROOTS = ("flashsearch", "kernels", "proxies")  # every subpackage below these must be on the map

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_MAP_NAME = re.compile(r"[A-Za-z0-9_.\-]+/?")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def relative_links(path: Path) -> list[str]:
    """Targets of the inline links and images of a markdown file, outside code, that point into the repository."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", path.read_text(encoding="utf-8")))
    targets = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.\-]*:", target, re.I) or target.startswith("#"):
            continue  # http(s), mailto, ...: not ours to check; a bare #anchor stays in the same file
        targets.append(target)
    return targets


def code_map(readme_text: str) -> list[str]:
    """Repository paths named by the fenced block under '## Code map'.

    One entry per line: an indented name, then two or more spaces and a description. A name ending in '/' is a
    folder, and deeper-indented lines below it are inside it."""
    section = re.search(r"^## Code map[ \t]*\n(.*?)(?=^## |\Z)", readme_text, re.S | re.M)
    assert section, "README.md has no '## Code map' section"
    block = re.search(r"^```[^\n]*\n(.*?)^```", section.group(1), re.S | re.M)
    assert block, "README.md's '## Code map' section has no fenced code block"
    paths: list[str] = []
    folders: list[tuple[int, str]] = []  # (indent, path) of the enclosing folders
    for n, line in enumerate(block.group(1).splitlines(), 1):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        name = line.split()[0]
        assert _MAP_NAME.fullmatch(name), (
            f"code map line {n} does not start with a file or folder name: {line.strip()!r} "
            "(write one entry per line: name, two spaces, description)")
        while folders and folders[-1][0] >= indent:
            folders.pop()
        path = (folders[-1][1] if folders else "") + name
        if name.endswith("/"):
            folders.append((indent, path))
        paths.append(path)
    return paths


def subpackages() -> list[str]:
    """Every folder holding an __init__.py below flashsearch/, kernels/ and proxies/, as 'a/b/'."""
    found = []
    for root in PACKAGE_ROOTS:
        for init in sorted((ROOT / root).rglob("__init__.py")):
            folder = init.parent
            if folder == ROOT / root or any(p.startswith((".", "__")) for p in folder.relative_to(ROOT).parts):
                continue
            found.append(folder.relative_to(ROOT).as_posix() + "/")
    return found


def test_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size:,} bytes, over the {README_MAX_BYTES:,} limit: move reference material to docs/")


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(md: Path) -> None:
    broken = []
    for target in relative_links(md):
        file_part = target.split("#", 1)[0]
        if not (md.parent / file_part).exists():
            broken.append(target)
    assert not broken, f"{md.relative_to(ROOT)} links to missing paths: {', '.join(broken)}"


def test_link_parser_sees_links_and_skips_code(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text("see [a](a.md#top), ![img](pics/b.png) and [web](https://example.org)\n"
                  "`[not](code.md)`\n```\n[nor](fenced.md)\n```\n[anchor](#here)\n", encoding="utf-8")
    assert relative_links(md) == ["a.md#top", "pics/b.png"]


def test_code_map_names_only_existing_paths() -> None:
    missing = [p for p in code_map(README.read_text(encoding="utf-8")) if not (ROOT / p).exists()]
    assert not missing, f"README.md's code map names paths that do not exist: {', '.join(missing)}"


@pytest.mark.parametrize("folder", [f"{d}/" for d in TOP_LEVEL] + subpackages())
def test_code_map_lists_folder(folder: str) -> None:
    assert folder in code_map(README.read_text(encoding="utf-8")), (
        f"README.md's code map does not list {folder}; add a line for it under its parent folder")


def test_code_map_parser_nests_by_indent() -> None:
    text = ("## Code map\n\n```\npkg/        the package\n  a.py      module\n  sub/      sub\n    b.py    module\n"
            "  c.py      module\nother/      top\n```\n\n## Next\n")
    assert code_map(text) == ["pkg/", "pkg/a.py", "pkg/sub/", "pkg/sub/b.py", "pkg/c.py", "other/"]


def _config_keys(obj: object, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        if f.name == "config_path":  # set by load_config from the file name, not a key a user writes
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += _config_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def test_configuration_page_names_every_key() -> None:
    from flashsearch.config import RunConfig

    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = [k for k in _config_keys(RunConfig()) if f"`{k}`" not in page]
    assert not missing, f"docs/configuration.md does not document: {', '.join(missing)}"


def test_docs_index_lists_every_page() -> None:
    linked = {(DOCS / t.split("#", 1)[0]).resolve() for t in relative_links(DOCS / "index.md")}
    unlisted = [p.name for p in sorted(DOCS.glob("*.md")) if p.name != "index.md" and p.resolve() not in linked]
    assert not unlisted, f"docs/index.md does not link: {', '.join(unlisted)}"
