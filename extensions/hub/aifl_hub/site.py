"""Load and validate the site file (hub_config/site.yaml).

The site file is the only place a site changes; everything else reads the validated mapping that
:func:`load_site` returns. A broken file raises :class:`SiteError` naming the file, the key and the
problem, before anything is started.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

Site = dict[str, Any]
NUMBER_FIELDS = ("hours", "gpus", "cpus", "memory_gb")


class SiteError(ValueError):
    """The site file is missing, unreadable or invalid."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        self.path, self.key, self.problem = str(path), key, problem
        super().__init__(f"{path}: {key or '(top level)'}: {problem}")


def _schema() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath("site.schema.json").read_text())


def _key(path: Any, data: Any = None) -> str:
    """A readable key such as ``spawner.profile_list[gpu-1].slurm_override.gpus`` (profiles by slug)."""
    out, node = "", data
    for part in path:
        if isinstance(part, int):
            item = node[part] if isinstance(node, list) and isinstance(node[part], dict) else {}
            slug = item.get("slug") or item.get("name")
            out += f"[{slug}]" if isinstance(slug, str) and slug else f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return out


def validate_site(data: Any, path: Path | str = "site.yaml") -> Site:
    """Check ``data`` against the schema and the cross-key rules; return it unchanged."""
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = errors[0]
        raise SiteError(path, _key(err.absolute_path, data), err.message)
    _check_control_characters(data, data, [], path)
    _check_cross_keys(data, path)
    return data


def _check_control_characters(root: Any, node: Any, where: list[Any], path: Path | str) -> None:
    """No value may hold a line break or another control character (a pattern's ``$`` lets one through)."""
    if isinstance(node, dict):
        for key, value in node.items():
            _check_control_characters(root, value, [*where, key], path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_control_characters(root, value, [*where, i], path)
    elif isinstance(node, str) and any(ord(c) < 32 or ord(c) == 127 for c in node):
        raise SiteError(path, _key(where, root), "contains a line break or another control character")


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
    spawner = site["spawner"]
    environments = set(spawner.get("environments", [spawner["environment"]]))
    if spawner["environment"] not in environments:
        raise SiteError(path, "spawner.environment", "is not one of spawner.environments")
    slugs: set[str] = set()
    defaults = 0
    for profile in spawner["profile_list"]:
        key = f"spawner.profile_list[{profile['slug']}]"
        if profile["slug"] in slugs:
            raise SiteError(path, f"{key}.slug", f"'{profile['slug']}' is used by more than one profile")
        slugs.add(profile["slug"])
        defaults += bool(profile.get("default"))
        override = profile["slurm_override"]
        _check_override(site, path, f"{key}.slurm_override", override, partitions, accounts, qos, environments)
        for name, option in profile.get("profile_options", {}).items():
            _check_option(site, path, f"{key}.profile_options.{name}", option, override, partitions, accounts,
                          qos, environments)
    if defaults > 1:
        raise SiteError(path, "spawner.profile_list", "more than one profile has default: true")
    _check_organisations(site, path, accounts, qos)
    _check_datasets(site, path)


# Folders where a data set must never lie: users (or everyone) can write there, or the hub keeps its state.
UNSAFE_DATASET_PLACES = ("/tmp", "/var/tmp", "/dev", "/proc", "/sys", "/run", "/etc", "/home")  # noqa: S108


def _under(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or inside it (both absolute, compared by their parts)."""
    inner, outer = Path(path).parts, Path(folder).parts
    return inner[:len(outer)] == outer


def _check_datasets(site: Site, path: Path | str) -> None:
    orgs = {o["name"] for o in site.get("organisations", {}).get("list", [])}
    unsafe = (*UNSAFE_DATASET_PLACES, site["users"]["home_base"], site["hub"]["state_dir"])
    seen: dict[str, str] = {}
    for item in site.get("datasets", []):
        key = f"datasets[{item['name']}]"
        location = item["location"]
        if item["name"] in seen.values():
            raise SiteError(path, f"{key}.name", f"'{item['name']}' is listed more than once")
        if any(part in (".", "..") for part in location.split("/")) or len(Path(location).parts) < 3:
            raise SiteError(path, f"{key}.location",
                            "must be a folder at least two levels below / without '.' or '..' (say /srv/data/<name>)")
        if place := next((p for p in unsafe if _under(location, p)), None):
            raise SiteError(path, f"{key}.location", f"must not lie under {place} (users or the hub write there)")
        if other := next((name for where, name in seen.items() if _under(location, where) or _under(where, location)),
                         None):
            raise SiteError(path, f"{key}.location", f"overlaps the location of data set '{other}'")
        seen[location] = item["name"]
        listed = item.get("organisations", [])
        if item["access"] == "controlled" and not listed:
            raise SiteError(path, f"{key}.organisations",
                            "a controlled data set needs the organisations that may read it")
        if item["access"] == "open" and listed:
            raise SiteError(path, f"{key}.organisations", "an open data set is for everyone: leave organisations out")
        for org in listed:
            if org not in orgs:
                raise SiteError(path, f"{key}.organisations", f"'{org}' is not one of organisations.list")


def _check_organisations(site: Site, path: Path | str, accounts: set[str], qos: set[str]) -> None:
    for account in site["accounting"]["accounts"]:
        allowed = account.get("qos", sorted(qos))
        if not set(allowed) <= qos:
            raise SiteError(path, f"accounting.accounts[{account['name']}].qos", "names a QOS not in accounting.qos")
        if site["accounting"]["default_qos"] not in allowed:
            raise SiteError(path, f"accounting.accounts[{account['name']}].qos", "must include accounting.default_qos")
    for item in site["accounting"]["qos"]:
        for other in item.get("preempts", []):
            if other not in qos:
                raise SiteError(path, f"accounting.qos[{item['name']}].preempts",
                                f"'{other}' is not one of accounting.qos")
    orgs = site.get("organisations")
    if not orgs:
        return
    if orgs["over_budget_qos"] not in qos:
        raise SiteError(path, "organisations.over_budget_qos", "is not one of accounting.qos")
    for category, roles in orgs["categories"].items():
        for role in ("session_qos", "batch_qos"):
            if roles[role] not in qos:
                raise SiteError(path, f"organisations.categories.{category}.{role}", "is not one of accounting.qos")
    names: set[str] = set()
    claimed: dict[str, str] = {}
    for org in orgs["list"]:
        key = f"organisations.list[{org['name']}]"
        if org["name"] in names:
            raise SiteError(path, f"{key}.name", f"'{org['name']}' is listed more than once")
        for value in org.get("claim_values", []):
            if value in claimed:
                raise SiteError(path, f"{key}.claim_values", f"'{value}' already names {claimed[value]}")
            claimed[value] = org["name"]
        if org["name"] in accounts or org["name"] in ("regional", "national", "european", "training", "root"):
            raise SiteError(path, f"{key}.name", f"'{org['name']}' is already the name of another Slurm account")
        if org["category"] not in orgs["categories"]:
            raise SiteError(path, f"{key}.category", f"'{org['category']}' has no entry in organisations.categories")
        names.add(org["name"])


def _check_override(site: Site, path: Path | str, key: str, override: dict[str, Any], partitions: set[str],
                    accounts: set[str], qos: set[str], environments: set[str]) -> None:
    accounting, cluster = site["accounting"], site["cluster"]
    if "partition" in override and override["partition"] not in partitions:
        raise SiteError(path, f"{key}.partition", f"'{override['partition']}' is not one of cluster.partitions")
    if override.get("account", accounting["default_account"]) not in accounts:
        raise SiteError(path, f"{key}.account", "is not one of accounting.accounts")
    if override.get("qos", accounting["default_qos"]) not in qos:
        raise SiteError(path, f"{key}.qos", "is not one of accounting.qos")
    if "environment" in override and override["environment"] not in environments:
        raise SiteError(path, f"{key}.environment", "is not one of spawner.environments")
    if cluster["mode"] == "embedded" and override.get("gpus", 0) > cluster["gpu_nodes"]["gpus_per_node"]:
        raise SiteError(path, f"{key}.gpus",
                        f"{override['gpus']} is more than a node has ({cluster['gpu_nodes']['gpus_per_node']})")
    if override.get("shards", 0):
        if override.get("gpus", 0):
            raise SiteError(path, f"{key}.shards",
                            "a session gets whole GPUs or a share of one, not both (set gpus: 0)")
        per_gpu = (cluster.get("gpu_nodes") or {}).get("shards_per_gpu", 0)
        if cluster["mode"] == "embedded" and not per_gpu:
            raise SiteError(path, f"{key}.shards", "needs GPU sharing: set cluster.gpu_nodes.shards_per_gpu")
        if per_gpu and override["shards"] > per_gpu:
            raise SiteError(path, f"{key}.shards", f"{override['shards']} is more than one GPU has ({per_gpu})")


def _check_option(site: Site, path: Path | str, key: str, option: dict[str, Any], profile_override: dict[str, Any],
                  partitions: set[str], accounts: set[str], qos: set[str], environments: set[str]) -> None:
    if "range" in option:
        bounds = option["range"]
        fields = list(bounds["slurm_override"])
        field = fields[0]
        if len(fields) != 1 or field not in NUMBER_FIELDS:
            raise SiteError(path, f"{key}.range.slurm_override",
                            f"a range sets exactly one of {', '.join(NUMBER_FIELDS)}")
        if not bounds["min"] <= bounds.get("default", bounds["max"]) <= bounds["max"]:
            raise SiteError(path, f"{key}.range", "needs min <= default <= max")
        if bounds["max"] > profile_override[field]:
            raise SiteError(path, f"{key}.range.max", f"{bounds['max']} is more than the profile's "
                            f"slurm_override.{field} ({profile_override[field]})")
        if field != "gpus" and bounds["min"] < 1:
            raise SiteError(path, f"{key}.range.min", f"{field} must be at least 1")
        return
    choices = option["choices"]
    if sum(bool(c.get("default")) for c in choices.values()) > 1:
        raise SiteError(path, f"{key}.choices", "more than one choice has default: true")
    for slug, choice in choices.items():
        _check_override(site, path, f"{key}.choices.{slug}.slurm_override", choice["slurm_override"], partitions,
                        accounts, qos, environments)
    unlisted = option.get("unlisted_choice")
    if unlisted:
        numbers = sorted(set(unlisted["slurm_override"]) & set(NUMBER_FIELDS))
        if numbers:
            raise SiteError(path, f"{key}.unlisted_choice.slurm_override.{numbers[0]}",
                            "a typed value can set only text fields (qos, reservation, environment); use a range")
        try:
            re.compile(unlisted["validation_regex"])
        except re.error as exc:
            raise SiteError(path, f"{key}.unlisted_choice.validation_regex", f"is not a valid regex ({exc})") from None
        if not choices and not unlisted["enabled"]:
            raise SiteError(path, f"{key}", "has no choices and no enabled unlisted_choice")
    elif not choices:
        raise SiteError(path, f"{key}.choices", "is empty and there is no unlisted_choice")


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
