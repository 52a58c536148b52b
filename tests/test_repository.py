"""The repository documents itself: nothing it tracks points to files outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

# Spelled so that this file does not match itself.
OUTSIDE = re.compile(r"\.\./shared|" + "DEVELOPERS" + r"\.md")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked_files() -> list[Path]:
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in listing.decode().split("\0") if name]


def test_no_tracked_file_names_what_lies_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in tracked_files()
        if path.is_file()
        for match in OUTSIDE.finditer(path.read_text(errors="ignore"))
    ]
    assert offenders == []


def test_relative_links_in_the_documentation_resolve_inside_the_repository() -> None:
    checked = 0
    for path in tracked_files():
        if path.suffix != ".md":
            continue
        for target in MARKDOWN_LINK.findall(path.read_text()):
            if re.match(r"[a-z]+:|#", target):
                continue  # a URL or an anchor
            resolved = (path.parent / target.split("#")[0]).resolve()
            assert resolved.is_relative_to(ROOT), f"{path.relative_to(ROOT)} links {target}"
            assert resolved.exists(), f"{path.relative_to(ROOT)} links {target}, which is missing"
            checked += 1
    assert checked > 0  # README.md links docs/api.md
