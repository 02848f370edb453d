# This file is part of meas_rbnet.
"""pytest hooks of the test suite.

Tests marked ``postgres`` need a PostgreSQL server (``./dev test`` starts a throw-away
one through ``.ci/services.sh``). Under a plain ``pytest`` they skip; so that a green run
without them is not mistaken for a full one, the terminal summary then says, loudly,
how many were skipped, why, and how to run them.
"""

__all__ = ["pytest_terminal_summary"]

#: How to get the PostgreSQL tests to run (shown when they were skipped).
HOW_TO_RUN = (
    "run './dev test' (it starts a throw-away PostgreSQL server and stops it afterwards), or "
    "'source .ci/services.sh && start_services' and then pytest in that shell "
    "(or set RBNET_TEST_POSTGRES_URL=postgresql://USER@HOST:PORT/DB for a server of your own)"
)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    reports = terminalreporter.stats.get("skipped", [])
    skipped = [r for r in reports if "postgres" in getattr(r, "keywords", {})]
    if not skipped:
        return
    reasons = sorted({_skip_reason(r) for r in skipped})
    tr = terminalreporter
    tr.write_sep("!", f"{len(skipped)} PostgreSQL test(s) were SKIPPED, not run", red=True, bold=True)
    for reason in reasons:
        tr.write_line(f"  reason: {reason}", red=True, bold=True)
    tr.write_line(f"  To run them, {HOW_TO_RUN}.", red=True, bold=True)
    for report in skipped:
        tr.write_line(f"  skipped: {report.nodeid}", red=True)
