"""Fixtures of the end-to-end suite (see egret.py): one release build per
run, one topology per module (torn down after it, also on failure), the
internet-side servers, and a gateway whose plan each test gets back as it
found it. Prints "pytest: N passed, M failed" last, the line scripts/test.sh
sums."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import egret  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--no-build", action="store_true", help="use the release binaries already built")


@pytest.fixture(scope="session", autouse=True)
def release_build(request):
    if not request.config.getoption("--no-build"):
        egret.build_release()


@pytest.fixture(scope="module")
def queues(request):
    """Queues (and workers) of the module's topology: a module sets
    `QUEUES = n` to change it."""
    return getattr(request.module, "QUEUES", 1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("egret")


@pytest.fixture(scope="module")
def topo(queues):
    with egret.Topology(queues) as t:
        yield t


@pytest.fixture(scope="module")
def servers(topo, workdir):
    with egret.Servers(topo, workdir) as s:
        yield s


@pytest.fixture(scope="module")
def gateway(topo, servers, workdir):
    """A running gateway on the default plan (egret.plan())."""
    gw = egret.Gateway(topo, workdir, egret.plan()).start()
    yield gw
    gw.stop()


@pytest.fixture
def restore_plan(gateway):
    """Gives the plan back as the test found it, and waits until the
    gateway serves it again (pod-a egresses from its own prefix)."""
    before = (gateway.dir / "plan.yaml").read_text()
    yield gateway
    gateway.write_plan(before)
    a, b = gateway.topo.pa, gateway.topo.pb
    egret.poll(
        lambda: egret.in_pool(a.curl("http://198.19.0.254/", 1), "198.19.100")
        and egret.in_pool(b.curl("http://198.19.0.254/", 1), "198.19.101"),
        timeout=10,
        what="the original plan serving again",
    )


def pytest_terminal_summary(terminalreporter):
    stats = terminalreporter.stats
    passed = len(stats.get("passed", []))
    failed = len(stats.get("failed", [])) + len(stats.get("error", []))
    terminalreporter.write_line(f"pytest: {passed} passed, {failed} failed")
