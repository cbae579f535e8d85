"""Rates for the hot-path suites: pytest-benchmark times calls, these say what a call did.

A benchmark test calls `report_rate(amount_per_call, unit)` after timing; the
derived rates (MB/s, entries/s) are printed after pytest-benchmark's table.
A load-generator test calls `report_load(result, **more_figures)` with a
bench.loadgen.LoadResult: its figures (and more_figures, e.g. the server's CPU
per request) go to `benchmark.extra_info`, its summary line to a "load" section.
"""

import pytest

RATES: list[tuple[str, float, str]] = []
LOADS: list[tuple[str, str]] = []  # (test name, LoadResult.summary())


@pytest.fixture
def report_rate(benchmark, request):
    def report(amount_per_call: float, unit: str) -> None:
        if benchmark.stats is None:  # benchmarks disabled: nothing was timed
            return
        rate = amount_per_call / benchmark.stats.stats.mean
        benchmark.extra_info[f"{unit}/s"] = rate
        RATES.append((request.node.name, rate, unit))

    return report


@pytest.fixture
def report_load(benchmark, request):
    def report(result, **more_figures) -> None:
        benchmark.extra_info.update(result.figures(), **more_figures)
        more = "".join(f"  {name} {value:,.0f}" for name, value in more_figures.items())
        LOADS.append((request.node.name, result.summary() + more))

    return report


def pytest_terminal_summary(terminalreporter):
    if RATES:
        terminalreporter.section("rates")
        width = max(len(name) for name, _, _ in RATES)
        for name, rate, unit in RATES:
            terminalreporter.write_line(f"{name:<{width}}  {rate:>14,.0f} {unit}/s")
    if LOADS:
        terminalreporter.section("load")
        width = max(len(name) for name, _ in LOADS)
        for name, summary in LOADS:
            terminalreporter.write_line(f"{name:<{width}}  {summary}")
