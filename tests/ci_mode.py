"""CI mode: under ``CI=true`` a skipped test fails, unless the CI script allowed that skip.

Every skip in this suite is for a missing tool or capability (shellcheck, Chromium, OpenBLAS,
user namespaces, …). On a developer's machine that is a skip; in CI it would let a green run
hide that the check never ran. So with ``CI=true`` a skip becomes a failure, except when its
reason contains a key of ``TB_LAZY_CI_ALLOW_SKIP``: entries ``key: why``, separated by ``;``
(``.ci/run`` builds that list from what it probed, and prints it). Allowed skips are listed
with their ``why`` at the end of the run.
"""

from __future__ import annotations

import os

import pytest

ALLOW_VARIABLE = "TB_LAZY_CI_ALLOW_SKIP"


def ci_mode() -> bool:
    """True when the run is a CI run (``CI`` set to true, as CI services and ``.ci/run`` do)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def allowed_skips(text: str | None = None) -> dict[str, str]:
    """The allow-list: ``{key: why}`` from ``key: why; key: why`` (``TB_LAZY_CI_ALLOW_SKIP`` by default)."""
    text = os.environ.get(ALLOW_VARIABLE, "") if text is None else text
    entries = {}
    for entry in text.split(";"):
        key, _, why = entry.partition(":")
        if key.strip():
            entries[key.strip()] = why.strip() or "(no reason given)"
    return entries


def skip_reason(report: pytest.TestReport) -> str:
    """The reason a skipped report gives (``pytest.skip``, ``skipif`` and ``importorskip`` alike)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def matching_key(reason: str, allowed: dict[str, str]) -> str | None:
    """The allow-list key that ``reason`` contains, if any."""
    return next((key for key in allowed if key in reason), None)


_allowed_seen: list[tuple[str, str, str]] = []  # (test id, key, why) of skips CI let through


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not (report.skipped and ci_mode()) or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report)
    allowed = allowed_skips()
    if key := matching_key(reason, allowed):
        _allowed_seen.append((report.nodeid, key, allowed[key]))
        return
    report.outcome = "failed"
    report.longrepr = (f"CI=true: this test would have skipped ({reason}). Install what it needs, or allow "
                       f"the skip in .ci/run ({ALLOW_VARIABLE}=\"key: why\") if it can't run on this machine.")


_skipped_modules: list[tuple[str, str]] = []  # (module, reason) of collection skips CI did not allow


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A whole module skipped (``importorskip`` at module level): turning its collection into an
    error would stop the whole run, so it is noted here and fails the session at its end."""
    if not (report.skipped and ci_mode()):
        return
    reason = skip_reason(report)
    allowed = allowed_skips()
    if key := matching_key(reason, allowed):
        _allowed_seen.append((report.nodeid, key, allowed[key]))
    else:
        _skipped_modules.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped_modules and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if not ci_mode():
        return
    allowed = allowed_skips()
    if _skipped_modules:
        terminalreporter.section("CI mode: skipped modules (a failure under CI=true)")
        for nodeid, reason in _skipped_modules:
            terminalreporter.write_line(f"FAILED {nodeid}: would have skipped ({reason})")
    terminalreporter.section("CI mode: allowed skips")
    if not allowed:
        terminalreporter.write_line("none allowed: every test that would skip failed instead")
    for key, why in allowed.items():
        hits = [nodeid for nodeid, seen, _ in _allowed_seen if seen == key]
        terminalreporter.write_line(f"{key!r} ({why}): {len(hits)} test(s) skipped")
        for nodeid in hits:
            terminalreporter.write_line(f"    {nodeid}")
