"""`pytest --compile-report`: where the suite's time goes to XLA. After the run, per test file, the seconds
its test process spent compiling programs or loading them from the persistent cache, and how many it
compiled (cache misses) and loaded (hits). Subprocesses a test starts are not counted (their time is in the
test's duration). Works with pytest-xdist: each test's figures travel to the controller in its report."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import pytest
from jax import monitoring

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # a compile, or a load from the cache
HIT, MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"
PROPERTY = "compile_report"

_totals = {"seconds": 0.0, "hits": 0, "misses": 0}


def _on_duration(event: str, duration: float, **kwargs: Any) -> None:
    if event == COMPILE_EVENT:
        _totals["seconds"] += duration


def _on_event(event: str, **kwargs: Any) -> None:
    if event == HIT:
        _totals["hits"] += 1
    elif event == MISS:
        _totals["misses"] += 1


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--compile-report", action="store_true",
                     help="after the run, the compile seconds and cache hits and misses of each test file")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("compile_report"):
        monitoring.register_event_duration_secs_listener(_on_duration)
        monitoring.register_event_listener(_on_event)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    if item.config.getoption("compile_report"):
        item.user_properties.append((PROPERTY, {"start": dict(_totals), **{key: 0 for key in _totals}}))
    return (yield)


def _phase(item: pytest.Item) -> Iterator[None]:
    """After setup, call and teardown: the test's figures so far, which its next report carries."""
    try:
        return (yield)
    finally:
        for name, value in item.user_properties:
            if name == PROPERTY:
                value.update({key: _totals[key] - value["start"][key] for key in _totals})


pytest_runtest_setup = pytest.hookimpl(wrapper=True)(_phase)
pytest_runtest_call = pytest.hookimpl(wrapper=True)(_phase)
pytest_runtest_teardown = pytest.hookimpl(wrapper=True)(_phase)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not config.getoption("compile_report"):
        return
    files: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "teardown":
                continue
            for name, value in report.user_properties:
                if name == PROPERTY:
                    files[report.nodeid.split("::")[0]].update({k: value[k] for k in _totals})
    terminalreporter.section("compile report: seconds compiling or loading, programs compiled / loaded")
    for path, c in sorted(files.items(), key=lambda kv: -kv[1]["seconds"]):
        terminalreporter.write_line(f"{c['seconds']:8.1f} s  {c['misses']:4d} compiled  {c['hits']:4d} loaded  {path}")
    total = sum(files.values(), collections.Counter())
    terminalreporter.write_line(f"{total['seconds']:8.1f} s  {total['misses']:4d} compiled  {total['hits']:4d} loaded  "
                                f"in all")
