"""Organisations and the regional-priority promise, turned into Slurm accounts and QOS.

The site file lists organisations (``organisations.list``), each in a category (``regional``,
``national``, ``european``, ``training``). In Slurm:

* a parent account per category, named like the category, and a child account per organisation;
* a QOS per role, all in ``accounting.qos`` with their ``priority``, ``preempts`` and
  ``max_gpu_share`` (percent of the cluster's GPUs that all jobs of that QOS together may hold);
* each category says which QOS its sessions and its batch work get (``organisations.categories``).

The shipped design: regional sessions and batch work run under ``regional`` (high priority, may
requeue ``flex`` jobs); other sessions under ``interactive``, capped at 75 % of the GPUs, so at least
25 % is always open to the region; other batch work under ``flex``, which may fill idle GPUs but is
requeued when regional work needs them. Budgets: an organisation over its monthly GPU hours gets
``organisations.over_budget_qos`` (``over_budget: lower_priority``) or may not start GPU work
(``over_budget: stop``, also enforced by Slurm with ``GrpTRESMins`` and a monthly usage reset).

:func:`plan` compares the site file with what ``sacctmgr`` shows and returns the commands that make
them agree (pure, so "run twice, nothing changes" is testable); accounts of organisations that left
the site file are reported, never deleted (their history stays in Slurm's accounting).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .facility import SACCT_FIELDS, gpu_hours_in, parse_sacct
from .procs import run
from .site import Site
from .slurm import run_argv

CATEGORIES = ("regional", "national", "european", "training")
GROUP_PREFIX = "org-"  # a user's organisation is the hub group org-<name>
# How sacctmgr clears a setting: a limit with -1, a list with an empty value.
CLEAR = {"priority": "0", "preempt": "", "grptres": "gres/gpu=-1", "qos": "", "defaultqos": "-1",
         "grptresmins": "gres/gpu=-1"}


@dataclass(frozen=True)
class Current:
    """What Slurm has now: QOS settings and account associations (from ``sacctmgr -nP show``)."""

    qos: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # name -> priority/preempt/grptres/...
    accounts: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # name -> parent/qos/defaultqos/...


@dataclass(frozen=True)
class Plan:
    """The ``sacctmgr`` commands (argv lists, without the program) and what is only reported."""

    commands: list[list[str]]
    left_over: list[str]  # accounts in Slurm under a category that the site file no longer lists


def total_gpus(site: Site) -> int:
    """GPUs of the cluster (the embedded nodes, or ``organisations.total_gpus`` on a real site)."""
    orgs = site.get("organisations", {})
    if "total_gpus" in orgs:
        return orgs["total_gpus"]
    nodes = site["cluster"].get("gpu_nodes", {})
    return nodes.get("count", 0) * nodes.get("gpus_per_node", 0)


def shards_per_gpu(site: Site) -> int:
    """How many jobs may share one GPU (``cluster.gpu_nodes.shards_per_gpu``, gres/shard); 0: no sharing."""
    return (site["cluster"].get("gpu_nodes") or {}).get("shards_per_gpu", 0)


def gpu_tres(gpus: int, site: Site) -> str:
    """A GRES limit of ``gpus`` GPUs in ``sacctmgr`` terms; where GPUs are shared, their shards are capped alike."""
    shards = shards_per_gpu(site)
    if gpus < 0:
        return "gres/gpu=-1" + (",gres/shard=-1" if shards else "")
    return f"gres/gpu={gpus}" + (f",gres/shard={gpus * shards}" if shards else "")


def qos_settings(site: Site) -> dict[str, dict[str, str]]:
    """The wanted settings of each QOS, in ``sacctmgr`` terms (a GPU share caps shared GPUs too)."""
    gpus = total_gpus(site)
    wanted = {}
    for qos in site["accounting"]["qos"]:
        settings = {"priority": str(qos.get("priority", 0)),
                    "preempt": ",".join(sorted(qos.get("preempts", []))),
                    "grptres": ""}
        if "max_gpu_share" in qos and gpus:
            settings["grptres"] = gpu_tres(math.floor(gpus * qos["max_gpu_share"] / 100), site)
        wanted[qos["name"]] = settings
    return wanted


def organisation(site: Site, name: str) -> dict[str, Any] | None:
    """The organisation called ``name`` in the site file, or None."""
    return next((o for o in site.get("organisations", {}).get("list", []) if o["name"] == name), None)


def session_qos(site: Site, org: Mapping[str, Any], over_budget: bool = False) -> str:
    """The QOS of an interactive session for a member of ``org``."""
    orgs = site["organisations"]
    if over_budget and orgs.get("over_budget") == "lower_priority":
        return orgs["over_budget_qos"]
    return orgs["categories"][org["category"]]["session_qos"]


def batch_qos(site: Site, org: Mapping[str, Any], over_budget: bool = False) -> str:
    """The QOS of batch work (notebook runs, Dask workers) for a member of ``org``."""
    orgs = site["organisations"]
    if over_budget and orgs.get("over_budget") == "lower_priority":
        return orgs["over_budget_qos"]
    return orgs["categories"][org["category"]]["batch_qos"]


def account_settings(site: Site) -> dict[str, dict[str, str]]:
    """The wanted accounts: parent, allowed QOS, default QOS, and a GPU-minutes budget where ``stop`` applies."""
    orgs = site.get("organisations")
    if not orgs:
        return {}
    stop = orgs.get("over_budget") == "stop"
    wanted: dict[str, dict[str, str]] = {}
    for category in CATEGORIES:
        if category not in orgs["categories"]:
            continue
        roles = orgs["categories"][category]
        qos = sorted({roles["session_qos"], roles["batch_qos"], orgs["over_budget_qos"]})
        wanted[category] = {"parent": "root", "qos": ",".join(qos), "defaultqos": roles["session_qos"],
                            "grptresmins": ""}
    for org in orgs["list"]:
        parent = wanted[org["category"]]
        budget = org.get("gpu_hours_per_month")
        wanted[org["name"]] = {**parent, "parent": org["category"],
                               "grptresmins": f"gres/gpu={budget * 60}" if stop and budget is not None else ""}
    return wanted


def plan(site: Site, current: Current) -> Plan:
    """What to run so that Slurm matches the site file (empty when it already does)."""
    cluster = site["cluster"]["name"]
    commands: list[list[str]] = []
    for name, want in qos_settings(site).items():
        have = current.qos.get(name)
        if have is None:
            commands.append(["add", "qos", name])
            have = {}
        clear = {**CLEAR, "grptres": gpu_tres(-1, site)}
        changes = [f"{key}={value or clear[key]}" for key, value in want.items() if have.get(key, "") != value]
        if changes:
            commands.append(["modify", "qos", "where", f"name={name}", "set", *changes])
    wanted = account_settings(site)
    for name, want in wanted.items():  # parents first: categories are listed before organisations
        have = current.accounts.get(name)
        if have is None:
            commands.append(["add", "account", name, f"cluster={cluster}", f"parent={want['parent']}",
                             f"description={_description(site, name)}"])
            have = {"parent": want["parent"]}
        elif have.get("parent") != want["parent"]:
            commands.append(["modify", "account", "where", f"name={name}", f"cluster={cluster}", "set",
                             f"parent={want['parent']}"])
        changes = [f"{key}={want[key] or CLEAR[key]}" for key in ("qos", "defaultqos", "grptresmins")
                   if have.get(key, "") != want[key]]
        if changes:
            commands.append(["modify", "account", "where", f"name={name}", f"cluster={cluster}", "set", *changes])
    left_over = sorted(name for name, have in current.accounts.items()
                       if have.get("parent") in CATEGORIES and name not in wanted)
    return Plan(commands, left_over)


def _description(site: Site, name: str) -> str:
    org = organisation(site, name)
    if org is None:
        return f"{name} organisations"
    label = org["display_name"]
    return (label if isinstance(label, str) else label["en"]).replace("'", "").replace('"', "")


def parse_qos(text: str) -> dict[str, dict[str, str]]:
    """``sacctmgr -nP show qos format=name,priority,preempt,grptres``."""
    out = {}
    for line in text.splitlines():
        if line.strip():
            name, priority, preempt, grptres = [*line.split("|"), "", "", ""][:4]
            out[name] = {"priority": priority, "preempt": ",".join(sorted(p for p in preempt.split(",") if p)),
                         "grptres": ",".join(sorted(t for t in grptres.split(",") if t))}
    return out


def parse_accounts(text: str) -> dict[str, dict[str, str]]:
    """Account associations (rows without a user) of ``sacctmgr -nP show assoc`` in :data:`ACCOUNT_FORMAT`."""
    out = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        account, user, parent, qos, default, mins = [*line.split("|"), "", "", "", "", ""][:6]
        if not user:
            out[account] = {"parent": parent, "qos": ",".join(sorted(q for q in qos.split(",") if q)),
                            "defaultqos": default, "grptresmins": mins}
    return out


QOS_FORMAT: Sequence[str] = ("show", "qos", "format=name,priority,preempt,grptres")
ACCOUNT_FORMAT: Sequence[str] = ("show", "assoc", "format=account,user,parentname,qos,defaultqos,grptresmins")


def sync(site: Site, sacctmgr: str = "sacctmgr") -> Plan:
    """Make Slurm match the site file's QOS and organisations (run by ``lab up`` as root); return what was done."""
    current = Current(qos=parse_qos(run([sacctmgr, "-nP", *QOS_FORMAT], timeout=30).stdout),
                      accounts=parse_accounts(run([sacctmgr, "-nP", *ACCOUNT_FORMAT], timeout=30).stdout))
    done = plan(site, current)
    for command in done.commands:
        run([sacctmgr, "-i", *command], timeout=60)
    return done


@dataclass(frozen=True)
class Charge:
    """Where a session is charged: the Slurm account and QOS, and whether the organisation is over budget."""

    account: str
    qos: str
    over_budget: bool = False


class NotAllowed(Exception):
    """The user may not start this work now; ``reason`` is ``no_organisation`` or ``over_budget``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def organisation_of(site: Site, groups: Sequence[str]) -> dict[str, Any] | None:
    """The user's organisation: the first hub group ``org-<name>`` naming one in the site file."""
    for group in groups:
        if group.startswith(GROUP_PREFIX) and (org := organisation(site, group.removeprefix(GROUP_PREFIX))):
            return org
    return None


def charge(site: Site, profile: Mapping[str, Any], gpus: int, org: Mapping[str, Any] | None,
           gpu_hours_used: float | None) -> Charge:
    """The account and QOS of a session for a member of ``org`` (None: no approved organisation).

    A profile that names its own ``account``/``qos`` keeps them. GPU work needs an organisation; an
    organisation over its monthly budget gets the over-budget QOS or is stopped, as the site file says.
    """
    override, accounting = profile["slurm_override"], site["accounting"]
    if org is None or "organisations" not in site:
        if gpus and "organisations" in site:
            raise NotAllowed("no_organisation")
        return Charge(override.get("account", accounting["default_account"]),
                      override.get("qos", accounting["default_qos"]))
    budget = org.get("gpu_hours_per_month")
    over = budget is not None and gpu_hours_used is not None and gpu_hours_used >= budget
    if over and gpus and site["organisations"]["over_budget"] == "stop":
        raise NotAllowed("over_budget")
    return Charge(override.get("account", org["name"]),
                  override.get("qos", session_qos(site, org, over_budget=over and bool(gpus))), over)


async def month_gpu_hours(slurm_bin: str, account: str, now: datetime | None = None) -> float:
    """GPU-hours the account's jobs used this calendar month, from Slurm's accounting (``sacct``)."""
    now = now or datetime.now()
    since = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    out = await run_argv([f"{slurm_bin}/sacct", "-nP", "-X", "-a", "-D", "-A", account,
                          "-S", since.isoformat(timespec="seconds"), "-E", "now", "-o", SACCT_FIELDS], timeout=30)
    return sum(gpu_hours_in(job, since, now, now) for job in parse_sacct(out))
