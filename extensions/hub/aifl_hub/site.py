"""Load and validate the site file (hub_config/site.yaml).

The site file is the only place a site changes; everything else reads the validated mapping that
:func:`load_site` returns. A broken file raises :class:`SiteError` naming the file, the key and the
problem, before anything is started.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

Site = dict[str, Any]


class SiteError(ValueError):
    """The site file is missing, unreadable or invalid."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        self.path, self.key, self.problem = str(path), key, problem
        super().__init__(f"{path}: {key or '(top level)'}: {problem}")


def _schema() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath("site.schema.json").read_text())


def _key(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate_site(data: Any, path: Path | str = "site.yaml") -> Site:
    """Check ``data`` against the schema and the cross-key rules; return it unchanged."""
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = errors[0]
        raise SiteError(path, _key(err.absolute_path), err.message)
    _check_cross_keys(data, path)
    return data


def _check_cross_keys(site: Site, path: Path | str) -> None:
    accounts = {a["name"] for a in site["accounting"]["accounts"]}
    qos = {q["name"] for q in site["accounting"]["qos"]}
    if site["accounting"]["default_account"] not in accounts:
        raise SiteError(path, "accounting.default_account", "is not one of accounting.accounts")
    if site["accounting"]["default_qos"] not in qos:
        raise SiteError(path, "accounting.default_qos", "is not one of accounting.qos")
    cluster = site["cluster"]
    if cluster["mode"] == "embedded":
        for group in ("gpu_nodes", "cpu_nodes"):
            if group not in cluster:
                raise SiteError(path, f"cluster.{group}", "is required when cluster.mode is 'embedded'")
        if "gpu_type" not in cluster["gpu_nodes"] or "gpus_per_node" not in cluster["gpu_nodes"]:
            raise SiteError(path, "cluster.gpu_nodes", "needs gpu_type and gpus_per_node")
    partitions = set(cluster["partitions"].values())
    slugs: set[str] = set()
    for i, profile in enumerate(site["spawner"]["profiles"]):
        key = f"spawner.profiles[{i}]"
        if profile["slug"] in slugs:
            raise SiteError(path, f"{key}.slug", f"'{profile['slug']}' is used by more than one profile")
        slugs.add(profile["slug"])
        override = profile["slurm_override"]
        if override["partition"] not in partitions:
            raise SiteError(path, f"{key}.slurm_override.partition",
                            f"'{override['partition']}' is not one of cluster.partitions")
        if override.get("account", site["accounting"]["default_account"]) not in accounts:
            raise SiteError(path, f"{key}.slurm_override.account", "is not one of accounting.accounts")
        if override.get("qos", site["accounting"]["default_qos"]) not in qos:
            raise SiteError(path, f"{key}.slurm_override.qos", "is not one of accounting.qos")
        if cluster["mode"] == "embedded":
            gpus_per_node = cluster["gpu_nodes"]["gpus_per_node"]
            if override["gpus"] > gpus_per_node:
                raise SiteError(path, f"{key}.slurm_override.gpus",
                                f"{override['gpus']} is more than a node has ({gpus_per_node})")
    if site["spawner"]["default_profile"] not in slugs:
        raise SiteError(path, "spawner.default_profile", "is not the slug of one of spawner.profiles")


def load_site(path: Path | str) -> Site:
    """Read, parse and validate the site file at ``path``."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SiteError(path, "", f"cannot be read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SiteError(path, "", f"is not valid YAML: {exc}") from None
    return validate_site(data, path)
