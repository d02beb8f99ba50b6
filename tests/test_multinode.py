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
--resume on both hosts ends bit-identical to the uninterrupted run. Needs root and iproute2
(CI runs as root); skipped with the reason otherwise.
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
from tests.test_faults import assert_same_tensors, crash_then_resume, loss_log

pytestmark = pytest.mark.faults

BIN = os.path.dirname(sys.executable)
MASTER = "10.77.0.1"
OVERRIDES = ["train.save_every=2", "train.grad_accum=1", "model.hidden_dropout=0.1", "train.collective_timeout_s=20"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """[(namespace, interface)] for node ranks 0 and 1, torn down afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (Debian: apt-get install iproute2)")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = f"dsm{os.getpid() % 100000}"
    made = [(f"{tag}a", f"{tag}va"), (f"{tag}b", f"{tag}vb")]
    try:
        for ns, _ in made:
            _ip("netns", "add", ns)
        _ip("link", "add", made[0][1], "type", "veth", "peer", "name", made[1][1])
        for (ns, dev), addr in zip(made, (MASTER, "10.77.0.2")):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as e:
        _teardown(made)
        pytest.skip(f"cannot create network namespaces here: {e.stderr.strip()}")
    hostfile = tmp_path_factory.mktemp("hosts") / "hostfile"
    hostfile.write_text("host-a slots=1\nhost-b slots=1\n")
    yield made, hostfile
    _teardown(made)


def _teardown(made) -> None:
    for ns, _ in made:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:  # only what our launches left behind (e.g. a SIGSTOPped rank)
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # removes its veth end too


_PORT = [29600]


def launch_two_hosts(hosts, data, out: Path, *, resume=False, fault_on_b=None, logs: Path) -> list:
    """Start the DeepSpeed launcher on both hosts; returns their Popen objects (node 0, node 1)."""
    made, hostfile = hosts
    _PORT[0] += 1  # a fresh port per run: no TIME_WAIT surprises
    procs = []
    for node, (ns, dev) in enumerate(made):
        env = {**os.environ, "GLOO_SOCKET_IFNAME": dev, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        env.pop("DSM_FAULT", None)
        if fault_on_b and node == 1:
            env["DSM_FAULT"] = fault_on_b
        cmd = ["ip", "netns", "exec", ns, f"{BIN}/deepspeed", "--hostfile", str(hostfile), "--no_ssh",
               "--node_rank", str(node), "--num_nodes", "2", "--num_gpus", "1", "--master_addr", MASTER,
               "--master_port", str(_PORT[0]), "launchers/pretrain.py", "--deepspeed", "ds_configs/z3.json",
               "--config", "configs/tiny.yaml", f"data.path={data}", f"train.out_dir={out}", *OVERRIDES,
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
    from ds_minimodel import pretrain
    from ds_minimodel.config import PretrainConfig, load_config

    cfg = load_config(PretrainConfig, REPO / "configs/tiny.yaml",
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
    from ds_minimodel.metrics import read_metrics

    last = read_metrics(out, "train")[-1]
    assert last["step"] == 4, "the fault did not strike at step 5"
    waited = a_exit - last["time"]  # from host a's last logged step to its exit
    record_property("exit_seconds", round(waited, 1))
    assert a_code != 0
    assert 20 <= waited < 60, f"host a exited {waited:.0f} s after its last step (timeout 20 s)"
