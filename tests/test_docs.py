"""The documentation's links, anchors and `ganpipe` command lines are real.

README.md is the front page and docs/ the manual; both are read on GitHub, so every relative link and
image must name a file in the repository, every `#anchor` a heading as GitHub slugs it, and every
`ganpipe <command> --option` written in them must be accepted by the CLI (checked against its --help).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# `ganpipe` as a command word, followed by a subcommand, option or <placeholder>: not part of a path,
# module or possessive (".ganpipe/", "ganpipe's"), nor a name in a table ("ganpipe `dcgan`").
COMMAND = re.compile(r"(?:^|(?<=[\s(`$]))ganpipe(?=\s+[a-z<-])((?:\s+[^\s;|&#)]+)*)")
SHELL_COMMENT = re.compile(r"(?:^|\s)#.*$")
COMMAND_END = re.compile(r"\s(?:#|;|&&|\|\|?)|\)|$")


def _lines(page: Path) -> list[tuple[int, str, bool]]:
    """(line number, text, inside a fenced code block) for every line of a page."""
    rows, fenced = [], False
    for number, text in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(text):
            fenced = not fenced
            continue
        rows.append((number, text, fenced))
    return rows


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation but '-' and '_' dropped,
    spaces to '-'."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@lru_cache(maxsize=None)
def anchors(page: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, text, fenced in _lines(page):
        match = HEADING.match(text)
        if fenced or not match:
            continue
        slug = github_slug(match.group(2))
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return frozenset(found)


def links(page: Path) -> list[tuple[int, str]]:
    """Every link and image target outside code, with its line number."""
    found = []
    for number, text, fenced in _lines(page):
        if fenced:
            continue
        prose = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), text)
        found += [(number, m.group(1)) for m in LINK.finditer(prose)]
    return found


def link_problem(page: Path, target: str) -> str | None:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ... are not checked here
        return None
    path_part, _, anchor = target.partition("#")
    destination = (page.parent / path_part).resolve() if path_part else page
    if not destination.exists():
        return f"{path_part} does not exist"
    if anchor and destination.suffix == ".md" and anchor not in anchors(destination):
        return f"#{anchor} is not a heading of {destination.relative_to(REPO)}"
    return None


def command_lines(page: Path) -> list[tuple[int, list[str]]]:
    """Every `ganpipe ...` command written in code (fenced blocks and inline code), as its words up to
    the first comment, `;`, `&&`, pipe or closing parenthesis."""
    found = []
    for number, text, fenced in _lines(page):
        # in a code block, a shell comment is prose: "# ... ganpipe commands ..." is not a command line
        snippets = [SHELL_COMMENT.sub("", text)] if fenced else [m.group(2) for m in INLINE_CODE.finditer(text)]
        for snippet in snippets:
            for match in COMMAND.finditer(snippet):
                rest = match.group(1)
                words = rest[: COMMAND_END.search(rest).start()].split()
                found.append((number, words))
    return found


@lru_cache(maxsize=None)
def help_text(subcommand: str | None) -> tuple[int, str]:
    args = [subcommand, "--help"] if subcommand else ["--help"]
    result = CliRunner().invoke(app, args, env={"TERMINAL_WIDTH": "240", "COLUMNS": "240", "NO_COLOR": "1"})
    return result.exit_code, result.output


def command_problems(words: list[str]) -> list[str]:
    if not words or words[0].startswith("<"):  # `ganpipe <command> --help`: a placeholder, not a command
        return []
    subcommand = None if words[0].startswith("-") else words[0]
    code, text = help_text(subcommand)
    if code != 0:
        return [f"`ganpipe {subcommand}` is not a ganpipe command (its --help exits {code})"]
    options = [w.split("=")[0] for w in (words if subcommand is None else words[1:]) if re.match(r"^--[a-z]", w)]
    where = f"ganpipe {subcommand}" if subcommand else "ganpipe"
    return [f"`{where}` has no option {option}" for option in options if not _shows_option(text, option)]


def _shows_option(help_output: str, option: str) -> bool:
    """Whole option names only: --sample is not --samples."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_output) is not None


def test_help_lists_options():
    """The check below reads option names from --help: make sure the help text really shows them."""
    code, text = help_text("evaluate")
    assert code == 0 and "--samples" in text and "--max-samples" in text
    assert help_text("no-such-command")[0] != 0


def test_slug_follows_githubs_rules():
    assert github_slug("Threads (`train.threads`, `evaluator.threads`)") == "threads-trainthreads-evaluatorthreads"
    assert github_slug("DVC's views") == "dvcs-views"
    assert github_slug("`ganpipe evaluate`: what it reads and writes") == "ganpipe-evaluate-what-it-reads-and-writes"
    assert github_slug("What the seed variants do: collapse rates over replicas") == (
        "what-the-seed-variants-do-collapse-rates-over-replicas"
    )


def test_manual_pages_exist_and_open_with_their_question():
    names = {p.name for p in PAGES if p.parent.name == "docs"}
    expected = {"README.md", "getting-started.md", "pipeline.md", "instrument.md", "results.md", "speed.md",
                "team.md", "grid.md", "troubleshooting.md", "development.md"}
    assert expected <= names, f"docs/ lacks {sorted(expected - names)}"
    for page in PAGES:
        if page.parent.name != "docs" or page.name == "README.md":
            continue
        lines = [t for _, t, _ in _lines(page) if t.strip()]
        assert lines[0].startswith("# ") and lines[1].startswith("*Answers: "), (
            f"{page.relative_to(REPO)}: the title must be followed by its '*Answers: ...*' line"
        )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_and_anchors_resolve(page):
    found = links(page)
    broken = [
        f"{page.relative_to(REPO)}:{number}: ({target}) {problem}"
        for number, target in found
        if (problem := link_problem(page, target))
    ]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_pages_link_to_something():
    """The link check must have something to check: the front page links into every manual page."""
    targets = {target.partition("#")[0] for _, target in links(REPO / "README.md")}
    manual = {f"docs/{p.name}" for p in PAGES if p.parent.name == "docs" and p.name != "grid.md"}
    assert manual <= targets, f"README.md does not link to {sorted(manual - targets)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_ganpipe_commands_exist(page):
    broken = [
        f"{page.relative_to(REPO)}:{number}: `ganpipe {' '.join(words)}`: {problem}"
        for number, words in command_lines(page)
        for problem in command_problems(words)
    ]
    assert not broken, "commands the CLI does not accept:\n" + "\n".join(broken)


def test_command_check_catches_a_wrong_command():
    assert command_problems(["evaluate", "--samples", "x.npz"]) == []
    assert command_problems(["evaluate", "--sample", "x.npz"]) == ["`ganpipe evaluate` has no option --sample"]
    assert command_problems(["evalute"])[0].startswith("`ganpipe evalute` is not a ganpipe command")
    assert command_problems(["--versio"]) == ["`ganpipe` has no option --versio"]
