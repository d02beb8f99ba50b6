"""Two-host ZeRO-3 pretraining without a cluster: two network namespaces joined by a veth pair.

Each "host" has its own network stack and address (10.77.0.1 and 10.77.0.2) and runs the
DeepSpeed launcher in its multi-node mode without ssh, one rank per host:

    deepspeed --hostfile H --no_ssh --node_rank N --num_nodes 2 --num_gpus 1 \
        --master_addr 10.77.0.1 --master_port P launchers/pretrain.py ...

(DeepSpeed 0.19.8 needs the hostfile even with --no_ssh: without one it only knows localhost
and refuses --num_nodes 2; the names in it need not resolve, they only fix the node count and
slots.) Gloo is pinned to the veth with GLOO_SOCKET_IFNAME, so every byte between the ranks
crosses the link. The hosts share this machine's file system, as cluster nodes share theirs.

Shown: the same losses and weights as a single-node 2-rank run; a host whose training process
is killed, or hangs, makes the other host's launcher exit non-zero within a bounded time; and
--resume on both hosts ends bit-identical to the uninterrupted run. The shipped cluster files
run here too: launchers/cluster/pretrain.sbatch through a stand-in `srun` (one task per
namespace, with the SLURM_* variables srun sets), and launchers/cluster/openmpi.hostfile through
the real mpirun with a stand-in `ssh` (OpenMPI's plm_rsh_agent) that enters the namespace. The
hosts are named node-a / node-b (per-namespace /etc/hosts, and each launch gets its own UTS
host name, as MPI's local-rank discovery compares host names). Needs root and iproute2 (CI runs
as root); skipped with the reason otherwise.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.distributed import run_ranks
from tests.helpers import assert_same_tensors, crash_then_resume, loss_log

pytestmark = pytest.mark.faults

BIN = os.path.dirname(sys.executable)
MASTER = "10.77.0.1"
OVERRIDES = ["train.save_every=2", "train.grad_accum=1", "model.hidden_dropout=0.1", "train.collective_timeout_s=20"]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """([(namespace, interface, host name)] for node ranks 0 and 1, DeepSpeed hostfile), torn down after."""
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (Debian: apt-get install iproute2)")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = f"dsm{os.getpid() % 100000}"
    made = [(f"{tag}a", f"{tag}va", "node-a"), (f"{tag}b", f"{tag}vb", "node-b")]
    try:
        for ns, _, _ in made:
            _ip("netns", "add", ns)
            etc = Path("/etc/netns") / ns  # `ip netns exec` mounts this over /etc: names resolve
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(f"127.0.0.1 localhost\n{MASTER} node-a\n10.77.0.2 node-b\n")
        _ip("link", "add", made[0][1], "type", "veth", "peer", "name", made[1][1])
        for (ns, dev, _), addr in zip(made, (MASTER, "10.77.0.2")):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, OSError) as e:
        _teardown(made)
        pytest.skip(f"cannot create network namespaces here: {getattr(e, 'stderr', '') or e}".strip())
    hostfile = tmp_path_factory.mktemp("hosts") / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    yield made, hostfile
    _teardown(made)


def _teardown(made) -> None:
    for ns, _, _ in made:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:  # only what our launches left behind (e.g. a SIGSTOPped rank)
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # removes its veth end too
        shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


_PORT = [29600]


def launch_two_hosts(hosts, data, out: Path, *, resume=False, fault_on_b=None, logs: Path) -> list:
    """Start the DeepSpeed launcher on both hosts; returns their Popen objects (node 0, node 1)."""
    made, hostfile = hosts
    _PORT[0] += 1  # a fresh port per run: no TIME_WAIT surprises
    procs = []
    for node, (ns, dev, _) in enumerate(made):
        env = {**os.environ, "GLOO_SOCKET_IFNAME": dev, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        env.pop("DSM_FAULT", None)
        if fault_on_b and node == 1:
            env["DSM_FAULT"] = fault_on_b
        cmd = ["ip", "netns", "exec", ns, f"{BIN}/deepspeed", "--hostfile", str(hostfile), "--no_ssh",
               "--node_rank", str(node), "--num_nodes", "2", "--num_gpus", "1", "--master_addr", MASTER,
               "--master_port", str(_PORT[0]), "launchers/pretrain.py", "--deepspeed", "ds_configs/z3.json",
               "--config", "configs/pretrain-tiny.yaml", f"data.path={data}", f"train.out_dir={out}", *OVERRIDES,
               *(["--resume"] if resume else [])]
        log = open(logs / f"{out.name}-{'resume' if resume else 'run'}-node{node}.log", "w")
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))  # own group: we can kill a whole "host"
    return procs


def wait_all(procs, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            codes.append(p.wait())
            pytest.fail(f"a launcher did not exit within {timeout} s")
    return codes


def _single_node_rank(rank, data, out):
    from ds_minimodel.config import PretrainConfig, load_config
    from ds_minimodel.steps import pretrain

    cfg = load_config(PretrainConfig, REPO / "configs/pretrain-tiny.yaml",
                      [f"data.path={data}", f"train.out_dir={out}", *OVERRIDES])
    pretrain.run(cfg, str(REPO / "ds_configs/z3.json"))


@pytest.fixture(scope="module")
def single_node(tiny_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    run_ranks(_single_node_rank, 2, args=(tiny_corpus, out))
    return out


def assert_same_run(a: Path, b: Path) -> None:
    assert loss_log(a) == loss_log(b), "losses differ between the runs"
    assert_same_tensors(torch.load(a / "final" / "model.pt", weights_only=True),
                        torch.load(b / "final" / "model.pt", weights_only=True), "weights")


def test_two_hosts_train_like_one_node(hosts, tiny_corpus, single_node, tmp_path):
    out = tmp_path / "two_hosts"
    codes = wait_all(launch_two_hosts(hosts, tiny_corpus, out, logs=tmp_path), timeout=400)
    assert codes == [0, 0], (tmp_path / "two_hosts-run-node0.log").read_text()[-3000:]
    import json

    assert json.loads((out / "checkpoints" / "step_00000006" / "meta.json").read_text())["world_size"] == 2
    assert len(loss_log(out)) == 6
    assert_same_run(out, single_node)


@pytest.mark.crash_resume
def test_killed_host_stops_the_other_and_both_resume(hosts, tiny_corpus, single_node, tmp_path, record_property):
    out = tmp_path / "crash"

    def crash():
        procs = launch_two_hosts(hosts, tiny_corpus, out, fault_on_b="kill:step:5:1", logs=tmp_path)
        b_code = procs[1].wait(timeout=400)  # host b's rank dies at step 5; its launcher follows
        t_b = time.monotonic()
        a_code = wait_all(procs[:1], timeout=120)[0]
        record_property("detect_seconds", round(time.monotonic() - t_b, 1))
        assert time.monotonic() - t_b < 60, "host a outlived host b's crash by a minute"
        assert a_code != 0 and b_code != 0, (a_code, b_code)
        return f"host a exit {a_code}, host b exit {b_code}"

    def resume():
        assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000004"
        codes = wait_all(launch_two_hosts(hosts, tiny_corpus, out, resume=True, logs=tmp_path), timeout=400)
        assert codes == [0, 0], (tmp_path / "crash-resume-node0.log").read_text()[-3000:]

    crash_then_resume(record_property, out, crash, resume, steps=6)
    assert_same_run(out, single_node)


def test_hung_host_times_out_instead_of_hanging(hosts, tiny_corpus, tmp_path, record_property):
    """Host b's rank freezes (SIGSTOP: its sockets stay open, nothing is reset), so only the
    collective timeout (train.collective_timeout_s=20) can free host a."""
    out = tmp_path / "hang"
    procs = launch_two_hosts(hosts, tiny_corpus, out, fault_on_b="stop:step:5:1", logs=tmp_path)
    a_code = wait_all(procs[:1], timeout=400)[0]
    a_exit = time.time()
    os.killpg(procs[1].pid, signal.SIGKILL)  # the frozen host: a cluster scheduler would reap it
    procs[1].wait()
    from ds_minimodel.training.metrics import read_metrics

    last = read_metrics(out, "train")[-1]
    assert last["step"] == 4, "the fault did not strike at step 5"
    waited = a_exit - last["time"]  # from host a's last logged step to its exit
    record_property("exit_seconds", round(waited, 1))
    assert a_code != 0
    assert 20 <= waited < 60, f"host a exited {waited:.0f} s after its last step (timeout 20 s)"


# ---- the shipped cluster files, on the two hosts ----------------------------------------------

FAKE_SRUN = r"""#!/bin/bash
# srun stand-in (--ntasks-per-node=1): the command once per "node" of FAKE_HOSTS, each in its
# namespace under its own host name, with the SLURM_* variables srun sets; fails if a task fails.
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
i=0; pids=()
for host in $FAKE_HOSTS; do
    IFS=: read -r name ns dev <<< "$host"
    SLURM_NODEID=$i SLURM_PROCID=$i SLURM_LOCALID=0 GLOO_SOCKET_IFNAME=$dev FAKE_HOST=$name \
        ip netns exec "$ns" unshare --uts sh -c 'hostname "$FAKE_HOST" && exec "$@"' sh "$@" &
    pids+=($!); i=$((i + 1))
done
rc=0; for p in "${pids[@]}"; do wait "$p" || rc=$?; done; exit $rc
"""

FAKE_SCONTROL = r"""#!/bin/bash
# scontrol stand-in: `scontrol show hostnames LIST` prints the names of FAKE_HOSTS
for host in $FAKE_HOSTS; do echo "${host%%:*}"; done
"""

FAKE_SSH = r"""#!/bin/bash
# ssh stand-in for OpenMPI (plm_rsh_agent): run the command on the named host of FAKE_HOSTS
while [[ $# -gt 0 && $1 == -* ]]; do case $1 in -p|-l|-i|-o) shift 2;; *) shift;; esac; done
target=$1; shift
for host in $FAKE_HOSTS; do
    IFS=: read -r name ns dev <<< "$host"
    if [[ $name == "$target" ]]; then
        export GLOO_SOCKET_IFNAME=$dev FAKE_HOST=$name FAKE_CMD="$*"
        exec ip netns exec "$ns" unshare --uts sh -c 'hostname "$FAKE_HOST" && exec sh -c "$FAKE_CMD"'
    fi
done
echo "fake ssh: unknown host $target" >&2; exit 255
"""


def fake_bin(tmp_path, hosts) -> tuple[Path, str]:
    """A bin/ directory with srun, scontrol and ssh stand-ins, and the FAKE_HOSTS they read."""
    made, _ = hosts
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("ssh", FAKE_SSH)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir, " ".join(f"{name}:{ns}:{dev}" for ns, dev, name in made)


def test_slurm_script_runs_on_two_hosts(hosts, tiny_corpus, single_node, tmp_path):
    bin_dir, fake_hosts = fake_bin(tmp_path, hosts)
    out = tmp_path / "slurm"
    env = {**os.environ, **ENV, "PATH": f"{bin_dir}:{BIN}:{os.environ['PATH']}", "FAKE_HOSTS": fake_hosts,
           "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2", "SLURM_JOB_ID": str(4000 + os.getpid() % 1000),
           "SLURM_SUBMIT_DIR": str(REPO), "GPUS_PER_NODE": "1", "TMPDIR": str(tmp_path)}
    env.pop("MASTER_ADDR", None), env.pop("MASTER_PORT", None)
    proc = subprocess.run(["bash", str(REPO / "launchers/cluster/pretrain.sbatch"), "--config", "configs/pretrain-tiny.yaml",
                           f"data.path={tiny_corpus}", f"train.out_dir={out}", *OVERRIDES],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "node_rank=1" in proc.stdout + proc.stderr  # two launchers, one per node
    assert_same_run(out, single_node)


def test_openmpi_hostfile_runs_on_two_hosts(hosts, tiny_corpus, single_node, tmp_path):
    if shutil.which("mpirun") is None:
        pytest.skip("no MPI installed (Debian: openmpi-bin)")
    pytest.importorskip("mpi4py", reason="mpi4py not installed (extra [mpi])")
    bin_dir, fake_hosts = fake_bin(tmp_path, hosts)
    ns_a, dev_a, _ = hosts[0][0]
    out = tmp_path / "mpi"
    env = {**os.environ, **ENV, "FAKE_HOSTS": fake_hosts, "GLOO_SOCKET_IFNAME": dev_a,
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    cmd = ["ip", "netns", "exec", ns_a, "mpirun", "--allow-run-as-root", "-np", "2", "--hostfile",
           "launchers/cluster/openmpi.hostfile", "--map-by", "ppr:1:node", "--mca", "plm_rsh_agent",
           str(bin_dir / "ssh"), "-x", "MASTER_PORT=29517", "-x", "PATH", "-x", "PYTHONPATH", "-x", "OMP_NUM_THREADS",
           "-x", "TORCH_EXTENSIONS_DIR", "-x", "DS_ACCELERATOR", sys.executable, "launchers/pretrain.py",
           "--deepspeed", "ds_configs/z3.json", "--config", "configs/pretrain-tiny.yaml", f"data.path={tiny_corpus}",
           f"train.out_dir={out}", *OVERRIDES]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_same_run(out, single_node)
