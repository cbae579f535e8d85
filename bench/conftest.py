"""Rates for the hot-path suites: pytest-benchmark times calls, these say what a call did.

A benchmark test calls `report_rate(amount_per_call, unit)` after timing; the
derived rates (MB/s, entries/s) are printed after pytest-benchmark's table.
"""

import pytest

RATES: list[tuple[str, float, str]] = []


@pytest.fixture
def report_rate(benchmark, request):
    def report(amount_per_call: float, unit: str) -> None:
        if benchmark.stats is None:  # benchmarks disabled: nothing was timed
            return
        rate = amount_per_call / benchmark.stats.stats.mean
        benchmark.extra_info[f"{unit}/s"] = rate
        RATES.append((request.node.name, rate, unit))

    return report


def pytest_terminal_summary(terminalreporter):
    if not RATES:
        return
    terminalreporter.section("rates")
    width = max(len(name) for name, _, _ in RATES)
    for name, rate, unit in RATES:
        terminalreporter.write_line(f"{name:<{width}}  {rate:>14,.0f} {unit}/s")
