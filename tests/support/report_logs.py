# SPDX-License-Identifier: LGPL-2.1-or-later
"""A pytest plugin: a failing test's report shows what the processes under test logged
during that test.

A daemon shared by a module logs for many tests; printing its log when it stops shows nothing
for a failure in the middle of the module, and everything for the last test. Here each failing
test (in setup, call or teardown) gets one report section per log that grew while it ran
(tests.support.logs), titled "<label> log during this test (<path>)". tests/conftest.py loads
it for the whole suite; `pytest -p tests.support.report_logs` loads it anywhere else.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.support import logs


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    logs.begin_test()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for written in logs.written_during_test():
            title = f"{written.label} log during this test ({written.path})"
            text = written.text
            if written.left_out:
                text = f"[the first {written.left_out} lines of it are left out]\n{text}"
            report.sections.append((title, text))
    return report
