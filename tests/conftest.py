"""Options shared by the test suites (pytest_addoption must live in the root conftest).

--seed N   run only simulation seed N (to replay a failure exactly)
--seeds N  run N simulation seeds (0 .. N-1)
"""

import pytest

# About 15 s of simulation on one core; the 10,000-seed run is done by hand.
DEFAULT_SIMULATION_SEEDS = 500


def pytest_addoption(parser):
    group = parser.getgroup("raft simulation")
    group.addoption("--seed", type=int, default=None, help="run only this simulation seed")
    group.addoption(
        "--seeds",
        type=int,
        default=DEFAULT_SIMULATION_SEEDS,
        help=f"number of simulation seeds to run (default {DEFAULT_SIMULATION_SEEDS})",
    )


def pytest_generate_tests(metafunc):
    if "simulation_seed" in metafunc.fixturenames:
        only_seed = metafunc.config.getoption("--seed")
        if only_seed is not None:
            seeds = [only_seed]
        else:
            seeds = range(metafunc.config.getoption("--seeds"))
        metafunc.parametrize("simulation_seed", seeds)


@pytest.fixture(scope="session")
def tessera_cluster(tmp_path_factory):
    """One Tessera cluster (meta + 3 data groups x 3 replicas + router) shared by a session's tests.

    Its shard map: /registry/pods/ -> group 2, /registry/events/ -> group 3, all else -> group 1.
    Tests that kill processes start a cluster of their own.
    """
    from cluster import ClusterThread

    with ClusterThread(tmp_path_factory.mktemp("tessera-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def netns_cluster(tmp_path_factory):
    """The same cluster with each replica and the router in a network namespace of its own, started by
    the per-host commands (docs/deploy.md); skipped where namespaces cannot be made."""
    from cluster import ClusterThread
    from tessera import netns

    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    with ClusterThread(tmp_path_factory.mktemp("tessera-netns"), netns=True) as cluster:
        yield cluster
