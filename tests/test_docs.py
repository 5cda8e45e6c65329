"""The documentation: the site builds with `mkdocs build --strict` with the network refused and fetches
nothing when viewed, and every runnable example of the README and the docs runs and prints what it shows
(see tests/examples.py for what makes a block runnable)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from purejaxppo.config import PPOConfig

from conftest import CACHE, ROOT
from examples import Example, examples, matches, run_python, run_shell, workspace

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUNNABLE = {page: found for page in PAGES if (found := examples(page, ROOT))}


def check_corridor(namespace: dict) -> None:
    """The README's env of your own is short, and learns the shortest path."""
    env = namespace["Corridor"]()
    shortest = 1 - 0.01 * (env.length - 1)  # straight to the end
    assert namespace["result"].final_return == pytest.approx(shortest, abs=0.02)


def check_export(namespace: dict) -> None:
    """An exported policy under onnxruntime plays the episode the trained policy plays."""
    assert namespace["onnx_return"] == namespace["policy_return"]


# checks that follow a block, by a line the block holds
AFTER = {"class Corridor:": check_corridor, "onnxruntime.InferenceSession(": check_export}


@pytest.mark.parametrize("page", list(RUNNABLE), ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_the_runnable_examples_run_and_print_what_they_show(page: Path, tmp_path, monkeypatch):
    env = workspace(tmp_path, ROOT)
    home = tmp_path / "home"  # a reader's default compilation cache is the suite's
    (home / ".cache" / "purejaxppo").mkdir(parents=True)
    (home / ".cache" / "purejaxppo" / "jax").symlink_to(CACHE, target_is_directory=True)
    Path(CACHE).mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    for example in RUNNABLE[page]:
        if example.language == "python":
            printed = run_python(example, namespace)
            if example.output is not None:
                assert matches(example.output, printed), f"{example.where}: shown\n{example.output}\nprinted\n{printed}"
        else:
            run_shell(example, tmp_path, env)
        for line, check in AFTER.items():
            if line in example.code:
                check(namespace)


def test_the_examples_that_carry_checks_are_runnable():
    found = [e for page in RUNNABLE.values() for e in page]
    for line in AFTER:
        assert any(line in e.code and e.language == "python" for e in found), line
    corridor = next(e for e in found if "class Corridor:" in e.code)
    assert len(corridor.code.splitlines()) <= 35


def test_a_block_marked_runnable_is_a_fenced_block_of_a_language_we_run(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- runnable -->\n```python\nprint(1)\n```\n\n<!-- output -->\n```text\n1\n```\n")
    assert examples(page, tmp_path) == [Example("page.md", 2, "python", "print(1)\n", "1\n")]
    page.write_text("<!-- runnable -->\n```yaml\na: 1\n```\n")
    with pytest.raises(ValueError, match="must be python, bash or console"):
        examples(page, tmp_path)
    page.write_text("<!-- runnable -->\nprint(1)\n")
    with pytest.raises(ValueError, match="not followed by a code fence"):
        examples(page, tmp_path)


def test_shown_output_matches_with_ellipses():
    assert matches("start\n...\nreturn ...", "start\nline\nline\nreturn 500.0\n")
    assert matches("start\n...\nend", "start\nend\n")
    assert not matches("start\nend", "start\nmiddle\nend\n")
    assert not matches("a ... c", "a b\nc\n")  # within a line only
    assert matches("", "") and not matches("", "something\n")


# resources a page would load from elsewhere when viewed (plain links to other sites are fine)
FETCHED = re.compile(r"<(?:script|img|iframe|source|link)\b[^>]*\b(?:src|href)=[\"']?(?:https?:)?//|"
                     r"url\([\"']?(?:https?:)?//|@import\s+[\"']?(?:url\()?[\"']?(?:https?:)?//|"
                     r"fonts\.googleapis|fonts\.gstatic|cdn\.jsdelivr|unpkg\.com|cdnjs\.")

BUILD_OFFLINE = """
import socket, sys
def refused(*args, **kwargs):
    raise OSError("the docs build tried to reach the network")
socket.socket.connect = socket.socket.connect_ex = socket.create_connection = refused
from mkdocs.__main__ import cli
cli(["build", "--strict", "--site-dir", sys.argv[1]])
"""


def test_the_site_builds_strict_with_the_network_refused_and_fetches_nothing_when_viewed(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-c", BUILD_OFFLINE, str(site)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    assert {"index.html", "getting-started.html", "config.html", "api/index.html", "results/gymnax.html"} <= pages
    fetched = [(str(p.relative_to(site)), m.group(0)) for p in site.rglob("*") if p.suffix in (".html", ".css", ".js")
               for m in FETCHED.finditer(p.read_text(errors="replace"))]
    assert not fetched, fetched[:10]
    assert PPOConfig.__doc__.splitlines()[0] in (site / "api" / "config.html").read_text()  # read from the code
