"""The runnable code blocks of the README and the docs, found and run as a reader would run them.

A block is runnable when the line before its opening fence is exactly `<!-- runnable -->`:
- `python` blocks of one page run in order in one namespace; an `<!-- output -->` marker after a block,
  then a `text` block, is what the block prints;
- `bash` blocks run with `bash -e -o pipefail` and must succeed;
- `console` blocks are transcripts: each `$ ` line is a command of one bash session, and the lines after
  it what it prints (stdout and stderr).
In expected output a line `...` stands for any lines (none included), and `...` inside a line for any
text within it. Every block of a page runs in one temporary folder, where `configs/` is the
repository's and `.venv/bin/purejaxppo` the installed command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

MARK = "<!-- runnable -->"
OUTPUT = "<!-- output -->"
FENCE = re.compile(r"^```(\w*)\s*$")
SENTINEL = "@@purejaxppo-docs-command@@"


@dataclasses.dataclass(frozen=True)
class Example:
    page: str
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    output: str | None  # the shown output of a python block, where the page shows it

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def _block(lines: list[str], start: int) -> tuple[str, str, int]:
    """(language, body, index after the closing fence) of the fenced block opening at `start`."""
    match = FENCE.match(lines[start])
    if match is None:
        raise ValueError(f"line {start + 1}: {MARK} is not followed by a code fence")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].rstrip() == "```"), None)
    if end is None:
        raise ValueError(f"line {start + 1}: the code block is not closed")
    return match.group(1), "\n".join(lines[start + 1:end]) + "\n", end + 1


def examples(path: Path, root: Path) -> list[Example]:
    """The runnable blocks of a Markdown file, in order."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].strip() != MARK:
            i += 1
            continue
        fence = i + 1
        language, code, i = _block(lines, fence)
        if language not in ("python", "bash", "console"):
            raise ValueError(f"{path}:{i}: a runnable block must be python, bash or console, not {language!r}")
        output, j = None, i
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j < len(lines) and lines[j].strip() == OUTPUT:
            _, output, i = _block(lines, j + 1)
        found.append(Example(str(path.relative_to(root)), fence + 1, language, code, output))
    return found


def matches(shown: str, printed: str) -> bool:
    """Whether printed output fits the shown output (see the module docstring for `...`)."""
    if not shown.strip():
        return not printed.strip()
    pattern = []
    for line in shown.strip("\n").splitlines():
        if line.strip() == "...":
            pattern.append(r"(?:.*\n)*?")
        else:
            pattern.append(".*?".join(re.escape(part) for part in line.rstrip().split("...")) + r"[ \t]*\n")
    return re.fullmatch("".join(pattern), printed.strip("\n") + "\n") is not None


def workspace(folder: Path, root: Path) -> dict[str, str]:
    """Make `folder` a reader's checkout (configs/ and .venv/bin/purejaxppo); the environment to run in."""
    (folder / "configs").symlink_to(root / "configs")
    (folder / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_python(example: Example, namespace: dict[str, Any]) -> str:
    """Run a python block in `namespace` (in the current directory); what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(example.code, example.where, "exec"), namespace)
    return printed.getvalue()


def run_shell(example: Example, folder: Path, env: dict[str, str], timeout: int = 600) -> None:
    """Run a bash or console block in `folder`; raise AssertionError, with what it printed, where it fails."""
    if example.language == "bash":
        proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", example.code], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{example.where}: exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        return
    commands, shown = [], []
    for line in example.code.splitlines():
        if line.startswith("$ "):
            commands.append(line[2:])
            shown.append([])
        elif commands:
            shown[-1].append(line)
    script = "".join(f"echo {SENTINEL}\n{command} 2>&1\n" for command in commands)
    proc = subprocess.run(["bash", "-c", script], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=timeout)
    printed = proc.stdout.split(SENTINEL + "\n")[1:]
    assert len(printed) == len(commands), f"{example.where}: the session ended early\n{proc.stderr[-2000:]}"
    for command, expected, got in zip(commands, shown, printed):
        assert matches("\n".join(expected), got), f"{example.where}: $ {command}\nshown:\n{expected}\nprinted:\n{got}"
