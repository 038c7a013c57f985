"""dmt.distributed.links: the NCCL variables of each emulated link, and that each host's ranks get them.

The transports themselves need GPUs (benchmarks/gpu_suite.sh's hier_check part shows NCCL's choice:
"via P2P" inside a host, "via NET/Socket" between hosts); here the launcher's side is checked with
real torchrun agents: every rank of emulated host h sees NCCL_HOSTID=host<h>.
"""

from __future__ import annotations

import json

import pytest
import torch

from dmt.choices import LinkKind
from dmt.distributed.launch import launch_local
from dmt.distributed.links import SOCKETS_ENV, EmulatedLink
from dmt.errors import DmtError


def test_each_kind_sets_its_variables():
    assert EmulatedLink().host_env(0) == {} and not EmulatedLink().uses_nccl_env
    hier = EmulatedLink(LinkKind.HIERARCHICAL)
    assert [hier.host_env(h) for h in (0, 1)] == [
        {"NCCL_HOSTID": "host0", "NCCL_IB_DISABLE": "1"},
        {"NCCL_HOSTID": "host1", "NCCL_IB_DISABLE": "1"},
    ]
    sockets = EmulatedLink("sockets", socket_threads=4, sockets_per_thread=2)
    assert sockets.host_env(1) == {**SOCKETS_ENV, "NCCL_SOCKET_NTHREADS": "4", "NCCL_NSOCKS_PERTHREAD": "2"}
    assert sockets.label().startswith("sockets:") and "4 socket threads x 2 sockets each" in sockets.label()
    assert hier.host_launch(1).env == hier.host_env(1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="fast"), "--link='fast' is not one of"),
        (dict(kind="nvlink", socket_threads=2), "tune NCCL's socket transport"),
        (dict(kind="sockets", socket_threads=0), "between 1 and 16"),
        (dict(kind="sockets", sockets_per_thread=0), ">= 1"),
        (dict(kind="hierarchical", socket_threads=8, sockets_per_thread=16), "at most 64"),
    ],
)
def test_bad_links_are_one_clear_error(kwargs, message):
    with pytest.raises(DmtError, match=message):
        EmulatedLink(**kwargs)


def test_cpu_refuses_nccl_links():
    EmulatedLink().check_device(cuda=False)  # NCCL's defaults: nothing to refuse
    with pytest.raises(DmtError, match="--shaped-link"):
        EmulatedLink("hierarchical").check_device(cuda=False)
    EmulatedLink("hierarchical").check_device(cuda=True)


def test_a_rank_checks_its_environment():
    hier = EmulatedLink("hierarchical")
    hier.check_rank_env({"NCCL_HOSTID": "host1", "NCCL_IB_DISABLE": "1"}, host=1)
    with pytest.raises(DmtError, match="needs NCCL_HOSTID=host1"):
        hier.check_rank_env({"NCCL_HOSTID": "host0", "NCCL_IB_DISABLE": "1"}, host=1)
    with pytest.raises(DmtError, match="NCCL_P2P_DISABLE=1"):
        EmulatedLink("sockets").check_rank_env({}, host=0)


def test_every_rank_of_an_emulated_host_gets_its_host_id(tmp_path):
    """Real torchrun agents, 2 hosts x 2 ranks: the launcher hands each host's agent its link env."""
    script = tmp_path / "report_env.py"
    script.write_text(
        "import json, os, sys\n"
        "keys = ('RANK', 'NCCL_HOSTID', 'NCCL_IB_DISABLE')\n"
        "out = os.path.join(sys.argv[1], f\"rank{os.environ['RANK']}.json\")\n"
        "json.dump({k: os.environ.get(k) for k in keys}, open(out, 'w'))\n"
    )
    link = EmulatedLink("hierarchical")
    rc = launch_local([str(tmp_path)], hosts=2, ranks_per_host=2, host_launch=link.host_launch, target=(str(script),))
    assert rc == 0
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    assert [s["NCCL_HOSTID"] for s in seen] == ["host0", "host0", "host1", "host1"]
    assert {s["NCCL_IB_DISABLE"] for s in seen} == {"1"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CPU the NCCL links are refused; a GPU box would train")
def test_train_takes_the_link_and_refuses_it_where_it_cannot_apply(tmp_path, capsys):
    """`dmt train --link`: NCCL links need GPUs, and a link needs emulated hosts to connect."""
    from dmt.cli import main
    from dmt.data import generate_criteo

    data = tmp_path / "rows.tsv"
    generate_criteo(data, rows=200, seed=0)
    common = ["train", "--data", str(data), "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "a"), "--link", "hierarchical", "--hosts", "2"]) == 2
    assert "--link hierarchical chooses NCCL transports and needs GPUs" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "b"), "--link", "nvlink"]) == 2
    assert "--link connects emulated hosts" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
