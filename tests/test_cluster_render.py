"""Rendering of the embedded cluster's slurm.conf, gres.conf and slurmdbd.conf (pure: no daemons, no files)."""

import copy
import re
from pathlib import Path

import pytest
from aifl_hub import cluster
from aifl_hub.site import load_site

REPO = Path(__file__).resolve().parents[1]
SITE = load_site(REPO / "hub_config" / "site.yaml")
SLURM, GRES, DBD = "/etc/slurm/slurm.conf", "/etc/slurm/gres.conf", "/etc/slurm/slurmdbd.conf"


def render(site=SITE, hostname="labhost", db_pw="s3cret-pw"):
    return cluster.render_configs(site, hostname=hostname, dbd_password=db_pw)


def settings(text):
    """key -> value of the single-valued lines (not NodeName/PartitionName)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and not line.startswith(("NodeName=", "PartitionName=")):
            key, value = line.split("=", 1)
            out[key] = value
    return out


def lines(text, prefix):
    return [dict(word.split("=", 1) for word in line.split()) for line in text.splitlines()
            if line.startswith(prefix)]


def site_with(**groups):
    site = copy.deepcopy(SITE)
    for group, changes in groups.items():
        site["cluster"][group].update(changes)
    return site


def test_template_dir_defaults_to_repo_and_follows_env(monkeypatch, tmp_path):
    monkeypatch.delenv("AIFL_HUB_CONFIG", raising=False)
    assert cluster.template_dir() == REPO / "hub_config" / "local-cluster"
    monkeypatch.setenv("AIFL_HUB_CONFIG", str(tmp_path))
    assert cluster.template_dir() == tmp_path / "local-cluster"


def test_node_names_from_site():
    assert cluster.node_names(SITE) == ["gpu01", "gpu02", "gpu03", "gpu04", "cpu01"]
    assert cluster.node_names(site_with(gpu_nodes={"count": 0}, cpu_nodes={"count": 2})) == ["cpu01", "cpu02"]


def test_renders_three_files_at_absolute_paths_and_is_deterministic():
    configs = render()
    assert set(configs) == {SLURM, GRES, DBD}
    assert configs == render()
    assert all(text.endswith("\n") and "{{" not in text and "{%" not in text for text in configs.values())


def test_slurm_conf_settings_the_lab_relies_on():
    conf = settings(render()[SLURM])
    assert conf["ClusterName"] == "aifl"
    assert conf["SlurmctldHost"] == "labhost(127.0.0.1)"
    assert conf["SlurmdParameters"] == "config_overrides"
    assert conf["SlurmdSpoolDir"].endswith("/%n") and "%n" in conf["SlurmdPidFile"] and "%n" in conf["SlurmdLogFile"]
    assert conf["ProctrackType"] == "proctrack/linuxproc"
    assert "cgroup" not in conf["TaskPlugin"]
    assert "batch_sched_delay=0" in conf["SchedulerParameters"]
    assert conf["SelectType"] == "select/cons_tres"
    assert conf["GresTypes"] == "gpu,shard"
    assert conf["AccountingStorageType"] == "accounting_storage/slurmdbd"
    assert conf["AccountingStorageTRES"] == "gres/gpu,gres/shard"
    assert set(conf["AccountingStorageEnforce"].split(",")) == {"associations", "limits", "qos", "safe"}
    assert conf["PriorityType"] == "priority/multifactor"
    assert conf["JobAcctGatherType"] == "jobacct_gather/linux"
    assert conf["ReturnToService"] == "2"
    assert "CgroupPlugin" not in conf


def test_node_lines():
    nodes = {n["NodeName"]: n for n in lines(render()[SLURM], "NodeName=")}
    assert list(nodes) == ["gpu01", "gpu02", "gpu03", "gpu04", "cpu01"]
    assert [n["Port"] for n in nodes.values()] == ["17001", "17002", "17003", "17004", "17005"]
    assert all(n["NodeHostname"] == "labhost" and n["NodeAddr"] == "127.0.0.1" for n in nodes.values())
    assert nodes["gpu01"]["Gres"] == "gpu:h200:4,shard:32"  # 8 sessions may share each GPU
    assert nodes["gpu01"]["CPUs"] == "64" and nodes["gpu01"]["RealMemory"] == str(512 * 1024)
    assert "Gres" not in nodes["cpu01"]
    assert nodes["cpu01"]["CPUs"] == "16" and nodes["cpu01"]["RealMemory"] == str(64 * 1024)


def test_partitions():
    parts = {p["PartitionName"]: p for p in lines(render()[SLURM], "PartitionName=")}
    assert parts["gpu"]["Nodes"] == "gpu01,gpu02,gpu03,gpu04"
    assert parts["cpu"]["Nodes"] == "cpu01"
    assert parts["cpu"].get("Default") == "YES" and "Default" not in parts["gpu"]
    assert parts["gpu"]["DefMemPerCPU"] == "8192" and parts["cpu"]["DefMemPerCPU"] == "4096"
    assert all(p["MaxTime"] == "7-00:00:00" and p["State"] == "UP" for p in parts.values())


def test_partition_names_come_from_the_site():
    site = copy.deepcopy(SITE)
    site["cluster"]["partitions"] = {"gpu": "accel", "cpu": "accel"}
    (part,) = lines(render(site)[SLURM], "PartitionName=")
    assert part["PartitionName"] == "accel" and part["Default"] == "YES"
    assert part["Nodes"] == "gpu01,gpu02,gpu03,gpu04,cpu01"
    assert part["DefMemPerCPU"] == "4096"


def test_no_cpu_nodes_makes_gpu_partition_default():
    parts = lines(render(site_with(cpu_nodes={"count": 0}))[SLURM], "PartitionName=")
    assert [(p["PartitionName"], p.get("Default")) for p in parts] == [("gpu", "YES")]


@pytest.mark.parametrize(("gpus", "files"), [(4, "/dev/nvidia[0-3]"), (1, "/dev/nvidia0"), (8, "/dev/nvidia[0-7]")])
def test_gres_conf_lists_one_device_file_per_gpu(gpus, files):
    site = site_with(gpu_nodes={"gpus_per_node": gpus, "count": 2, "gpu_type": "a100", "shards_per_gpu": 0})
    (gres,) = lines(render(site)[GRES], "NodeName=")
    assert gres == {"NodeName": "gpu01,gpu02", "Name": "gpu", "Type": "a100", "File": files}
    assert f"Gres=gpu:a100:{gpus} " in render(site)[SLURM]
    assert settings(render(site)[SLURM])["GresTypes"] == "gpu"


def test_shared_gpus_have_shards_per_device_file():
    site = site_with(gpu_nodes={"gpus_per_node": 2, "count": 2, "gpu_type": "a100", "shards_per_gpu": 4})
    gpu, *shards = lines(render(site)[GRES], "NodeName=")
    assert gpu["Name"] == "gpu"
    assert shards == [{"NodeName": "gpu01,gpu02", "Name": "shard", "Count": "4", "File": f"/dev/nvidia{i}"}
                      for i in range(2)]
    assert "Gres=gpu:a100:2,shard:8 " in render(site)[SLURM]
    assert settings(render(site)[SLURM])["GresTypes"] == "gpu,shard"


def test_gres_conf_without_gpu_nodes_has_no_gpu_line():
    assert not lines(render(site_with(gpu_nodes={"count": 0}))[GRES], "NodeName=")


def test_slurmdbd_conf():
    conf = settings(render(db_pw="pw-123_abc")[DBD])
    assert conf["StoragePass"] == "pw-123_abc"
    assert conf["StorageUser"] == "slurm" and conf["StorageLoc"] == "slurm_acct_db"
    assert conf["StorageType"] == "accounting_storage/mysql"
    assert conf["SlurmUser"] == "slurm" and conf["AuthType"] == "auth/munge"
    assert conf["DbdHost"] == "labhost"


def test_password_only_in_slurmdbd_conf():
    configs = render(db_pw="only-here-xyz")
    assert [path for path, text in configs.items() if "only-here-xyz" in text] == [DBD]


def test_no_unrendered_or_blank_values():
    for path, text in render().items():
        for line in text.splitlines():
            if line and not line.startswith("#"):
                assert re.fullmatch(r"\S+=\S.*", line), f"{path}: {line!r}"
                assert not re.search(r"=\s|=$| =", line), f"{path}: {line!r}"
