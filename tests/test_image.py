"""The image, built and run the way a cluster runs it: deploy/build-image.sh
builds it FROM scratch with buildah (nothing pulled) from the release
binaries pytest built, exports it as an OCI archive, and the image loaded
back from that archive runs with podman in the topology's gateway namespace
(the node's host network) with the DaemonSet's own command, capabilities,
seccomp profile, read-only root and no privilege escalation, all read from
deploy/gateway.yaml, on the plan egret-control serves it from the same
image, run as deploy/control.yaml runs it (its user, no capabilities, a
read-only root). Pods' traffic goes through it; without any one of its
capabilities, or under the runtime's default seccomp profile, it stops at
start with a line that names what is missing.

Two things of this machine (a VM without CAP_SYS_RESOURCE in its bounding
set, cgroup v1 with the v2 hierarchy holding a controller) are worked
around here, not in the image: runc instead of crun (crun 1.8 refuses such
hybrid cgroups), and ulimits podman does not have to raise. The image's
storage is this module's own (vfs, in a temporary directory), removed after
it; podman never sets up a network of its own (each container joins egt-gw's
namespace or none)."""

import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import egret
import pytest
import yaml

DEPLOY = egret.ROOT / "deploy"
PACKAGES = ("buildah", "podman", "runc")


def manifest(name: str) -> dict:
    """deploy/NAME's objects by (kind, name)."""
    docs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def gateway_container() -> dict:
    return manifest("gateway.yaml")[("DaemonSet", "egret-gateway")]["spec"]["template"]["spec"]["containers"][0]


def control_pod() -> dict:
    return manifest("control.yaml")[("Deployment", "egret-control")]["spec"]["template"]["spec"]


def kustomized_image() -> str:
    images = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["images"]
    (image,) = [i for i in images if i["name"] == "egret"]
    return f"{image['newName']}:{image['newTag']}"


GATEWAY_CAPS = gateway_container()["securityContext"]["capabilities"]["add"]


def tools() -> None:
    """buildah, podman and runc, installed from Debian if missing
    (scripts/install-deps.sh installs them too); the module is skipped
    only when that fails."""
    missing = [p for p in PACKAGES if not shutil.which(p)]
    why = ""
    if missing:
        r = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        why = r.stderr.strip()[-300:]
    still = [p for p in PACKAGES if not shutil.which(p)]
    if still:
        pytest.skip(f"{', '.join(still)} not installed, and apt-get could not install them: {why}")


class Podman:
    """podman (and buildah) on this module's own storage."""

    def __init__(self, workdir: Path):
        # A short path: conmon's sockets under the run root must fit a
        # socket address (108 bytes), which pytest's directories overflow.
        self.storage = Path(tempfile.mkdtemp(prefix="egret-image."))
        conf = workdir / "storage.conf"
        conf.write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{self.storage}/root"\nrunroot = "{self.storage}/run"\n'
        )
        self.env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)}
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        # Limits at or below this process's own: podman's defaults (1M
        # files) need CAP_SYS_RESOURCE, which this VM does not grant.
        # memlock: the kernel's default 8 MiB, below the test's UMEM (32 MiB).
        self.limits = [f"--ulimit=nofile={nofile}:{nofile}", "--ulimit=nproc=4096:4096"]
        self.limits.append("--ulimit=memlock=8388608:8388608")
        self.names: list[str] = []

    def __call__(self, *args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        cmd = ["podman", "--runtime", "runc", *args]
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=check)

    def run(
        self, image: str, *args: str, opts: list[str] = (), name: str | None = None, detach: bool = False
    ) -> subprocess.CompletedProcess:
        """`podman run` with this machine's limits; a named container is
        removed at the end of the module."""
        if name:
            self.names.append(name)
        head = ["run", *(["-d"] if detach else ["--rm"]), *(["--name", name] if name else []), *self.limits]
        return self(*head, *opts, image, *args)

    def wait_exit(self, name: str, timeout: float = 20) -> int:
        return int(self("wait", name, timeout=timeout, check=True).stdout.strip())

    def logs(self, name: str) -> str:
        r = self("logs", name)
        return r.stdout + r.stderr

    def close(self) -> None:
        for n in self.names:
            self("rm", "-f", n)
        self("rmi", "-a", "-f")
        shutil.rmtree(self.storage, ignore_errors=True)


@pytest.fixture(scope="module")
def podman(workdir):
    tools()
    p = Podman(workdir)
    yield p
    p.close()


@pytest.fixture(scope="module")
def image(podman, workdir):
    """deploy/build-image.sh's image under its default name, exported to
    an OCI archive, removed, and loaded back from the archive: what runs
    below is what the archive holds. Yields (name, archive)."""
    archive = workdir / "egret-image.tar"
    t0 = time.monotonic()
    r = subprocess.run(
        [str(DEPLOY / "build-image.sh"), "--no-build", "", str(archive)],
        env=podman.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    name = f"localhost/{kustomized_image()}"
    podman("rmi", name, check=True)
    podman("load", "-q", "-i", str(archive), check=True)
    print(f"image {name}: built and exported in {time.monotonic() - t0:.1f} s, archive {archive.stat().st_size / 2**20:.1f} MiB")
    yield name, archive


def security(sc: dict, caps: list[str] | None = None, seccomp: str | None = "manifest") -> list[str]:
    """podman's options for a Kubernetes securityContext (the pod's and the
    container's merged): its user, capabilities (`caps` instead of the
    added ones when given), seccomp profile (`seccomp` instead, None for the
    runtime's default), escalation and read-only root."""
    opts = [f"--user={sc['runAsUser']}"] if "runAsUser" in sc else []
    c = sc.get("capabilities", {})
    opts += [f"--cap-drop={d}" for d in c.get("drop", [])]
    opts += [f"--cap-add={a}" for a in (c.get("add", []) if caps is None else caps)]
    profile = sc.get("seccompProfile", {}).get("type") if seccomp == "manifest" else seccomp
    if profile == "Unconfined":
        opts.append("--security-opt=seccomp=unconfined")
    if sc.get("allowPrivilegeEscalation") is False:
        opts.append("--security-opt=no-new-privileges")
    if sc.get("readOnlyRootFilesystem"):
        opts += ["--read-only", "--read-only-tmpfs=false"]
    return opts


def control_security() -> dict:
    pod = control_pod()
    return {**pod["securityContext"], **pod["containers"][0]["securityContext"]}


def egret_in(podman: Podman, image, *args: str, network: str = "none") -> subprocess.CompletedProcess:
    """A command in the image as control.yaml runs egret-control (its user,
    a read-only root, no capabilities); no network unless given."""
    return podman.run(image[0], *args, opts=["--network", network, *security(control_security())])


# The ConfigMap's gateway.toml on the topology: its paths, @NODE_NAME@ and
# @NODE_IP@ filled in by the DaemonSet's sed, egret-control (from the image
# too) on loopback without TLS, the suites' UMEM (32 MiB: more than the
# 8 MiB memlock limit).
def template(queues: int) -> str:
    return egret.gateway_toml(
        {
            "router_ip": "@NODE_IP@",
            "drain_secs": 0,
            "status_file": "/run/egret/status.json",
            "state_file": "/var/lib/egret/sessions.json",
            "sessions_per_worker": 262144,
            "interfaces": {"inside": "gw-in", "outside": "gw-out", "queues": queues},
            "umem": egret.UMEM,
            "control": {"url": "http://127.0.0.1:50051", "node": "@NODE_NAME@"},
        }
    )


class ImageGateway:
    """egret-gateway from the image, as deploy/gateway.yaml runs it, in
    egt-gw (its host network): the ConfigMap's template mounted read-only,
    /run/egret and /var/lib/egret as the pod's volumes (no bpffs: nothing
    is pinned, the program lives as long as its link); its plan from
    egret-control, run from the image as control.yaml runs it, on the
    manifests of egret.plan()."""

    def __init__(self, podman: Podman, topo: egret.Topology, workdir: Path, image: str):
        self.podman, self.topo, self.image = podman, topo, image
        self.name, self.control = f"egret-gateway-test-{os.getpid()}", f"egret-control-test-{os.getpid()}"
        self.network = f"ns:/run/netns/{topo.gw.name}"
        self.template, self.run_dir, self.state = workdir / "template", workdir / "run", workdir / "state"
        self.manifests = workdir / "image-manifests"
        for d in (self.template, self.run_dir, self.state, self.manifests):
            d.mkdir(exist_ok=True)
        (self.template / "gateway.toml").write_text(template(topo.queues))
        (self.manifests / "cluster.yaml").write_text(egret.plan())

    def start_control(self) -> None:
        opts = ["--network", self.network, *security(control_security()), "-v", f"{self.manifests}:/manifests:ro"]
        r = self.podman.run(
            self.image, "egret-control", "--manifests", "/manifests", "--listen", "127.0.0.1:50051",
            opts=opts, name=self.control, detach=True,
        )
        assert r.returncode == 0, r.stderr
        egret.poll(lambda: self.ctl("configs").returncode == 0, timeout=10, what="egret-control from the image answering")

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        """egretctl from the image, in egt-gw."""
        return egret_in(self.podman, (self.image, None), "egretctl", *args, network=self.network)

    def start(self, caps: list[str] | None = None, seccomp: str | None = "manifest") -> subprocess.CompletedProcess:
        """The DaemonSet's container: its command, env and security context
        (`caps` and `seccomp` instead of its own when given)."""
        c = gateway_container()
        opts = ["--network", self.network, *security(c["securityContext"], caps, seccomp)]
        opts += ["-e", "NODE_NAME=gw-0", "-e", "NODE_IP=198.18.0.1"]
        opts += ["-v", f"{self.template}:/etc/egret/template:ro", "-v", f"{self.run_dir}:/run/egret"]
        opts += ["-v", f"{self.state}:/var/lib/egret", "--entrypoint", json.dumps(c["command"])]
        (self.run_dir / "status.json").unlink(missing_ok=True)
        self.podman("rm", "-f", self.name)
        return self.podman.run(self.image, *c["args"], opts=opts, name=self.name, detach=True)

    def status(self) -> egret.Status | None:
        try:
            return egret.Status(json.loads((self.run_dir / "status.json").read_text()))
        except (OSError, ValueError):
            return None

    def pid(self) -> int:
        return int(self.podman("inspect", "--format", "{{.State.Pid}}", self.name, check=True).stdout)


@pytest.fixture(scope="module")
def image_gateway(podman, image, topo, servers, workdir):
    gw = ImageGateway(podman, topo, workdir, image[0])
    gw.start_control()
    return gw


def test_the_manifests_name_the_image_the_build_makes(image, podman):
    name, _ = image
    want = kustomized_image()
    assert gateway_container()["image"] == want
    assert [c["image"] for c in control_pod()["containers"]] == [want]
    assert name == f"localhost/{want}", "deploy/build-image.sh's default name is kustomization.yaml's"
    # The tag is the release's version, as the binaries in it say.
    tag = want.rsplit(":", 1)[1]
    for binary in ("egret-gateway", "egret-control", "egretctl"):
        r = egret_in(podman, image, binary, "--version")
        # (egretctl's clap name is egret-control's; the version is what counts)
        assert r.returncode == 0 and r.stdout.split()[-1] == tag, r.stdout + r.stderr


def test_the_oci_archive_is_small_and_holds_only_what_runs(image, podman):
    _, archive = image
    assert archive.stat().st_size < 40 * 2**20, f"{archive.stat().st_size} bytes"
    # The gateway's helpers run in it (nft for the forward guard, ip, and
    # sh with sed for the DaemonSet's start); no other tool is there.
    script = 'nft --version; ip -V; echo a | sed s/a/b/; for t in apt dpkg bash cat ls; do command -v $t; done; true'
    r = egret_in(podman, image, "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("nftables v") and lines[1].startswith("ip utility") and lines[2] == "b", r.stdout
    assert lines[3:] == [], f"tools a scratch image should not hold: {lines[3:]}"


def test_the_gateway_runs_from_the_image_with_the_daemonsets_capabilities(image_gateway, topo):
    gw = image_gateway
    assert gateway_container()["securityContext"]["capabilities"]["drop"] == ["ALL"]
    r = gw.start()
    assert r.returncode == 0, r.stderr
    try:
        status = egret.poll(gw.status, timeout=15, what="the image's gateway status")
        filled = (gw.run_dir / "gateway.toml").read_text()
        assert 'router_ip = "198.18.0.1"' in filled and 'node = "gw-0"' in filled, "sh and sed filled the template in"
        assert status.doc["forward_guard"]["installed"], "nft from the image installed the forward guard"
        # The process holds exactly the DaemonSet's capabilities.
        proc = Path(f"/proc/{gw.pid()}/status").read_text().splitlines()
        eff = next(l for l in proc if l.startswith("CapEff:"))
        bits = {"NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "SYS_ADMIN": 21, "SYS_RESOURCE": 24, "BPF": 39}
        assert int(eff.split()[1], 16) == sum(1 << bits[c] for c in GATEWAY_CAPS), eff
        # Pods egress through it, each from its config's pool, on the plan
        # egret-control (from the image) served it.
        a = egret.poll(lambda: topo.pa.curl("http://198.19.0.254/", 2), timeout=10, what="pod-a through the image")
        assert egret.in_pool(a, "198.19.100"), a
        assert egret.in_pool(topo.pb.curl("http://198.19.0.254/"), "198.19.101")
        assert topo.pc.curl("http://198.19.0.254/", 1) is None, "an unbound pod is not forwarded"
        nodes = gw.ctl("-o", "json", "nodes")
        assert nodes.returncode == 0 and "gw-0" in nodes.stdout, nodes.stdout + nodes.stderr
    finally:
        log = gw.podman.logs(gw.name)
        gw.podman("stop", "-t", "15", gw.name)
    assert gw.podman.wait_exit(gw.name) == 0, log[-2000:]
    assert "prog/xdp" not in topo.gw.run("ip", "-d", "link", "show", "gw-in").stdout, "XDP detached on stop"


def last_line(gw: ImageGateway) -> str:
    """The gateway's exit status and the last line it wrote."""
    code = gw.podman.wait_exit(gw.name)
    return f"{code} {gw.podman.logs(gw.name).strip().splitlines()[-1]}"


@pytest.mark.parametrize("cap", GATEWAY_CAPS)
def test_without_each_capability_the_gateway_says_which_is_missing(image_gateway, cap):
    r = image_gateway.start(caps=[c for c in GATEWAY_CAPS if c != cap])
    assert r.returncode == 0, r.stderr
    last = last_line(image_gateway)
    assert last.startswith("1 egret-gateway: ") and f"this process lacks CAP_{cap} (" in last, last
    assert image_gateway.status() is None


def test_under_the_runtimes_default_seccomp_profile_it_says_so(image_gateway):
    r = image_gateway.start(seccomp=None)
    assert r.returncode == 0, r.stderr
    last = last_line(image_gateway)
    assert last.startswith("1 egret-gateway: ") and "Operation not permitted" in last, last
    assert "seccomp Unconfined" in last, last
