"""Workshop burst: a class joins at once. This lab's workshop join against stock JupyterHub + batchspawner.

Run as root on the machine where the lab runs (``./lab up``)::

    /work/main/.venv/bin/python benchmarks/workshop_burst.py --seats 64

In one run, on the same cluster:

* ours: a trainer creates a workshop (a Slurm reservation sized to the seats) in the running hub
  (:8000); every participant opens the join link, and at one moment all of them post the join form
  (display name + code: a temporary account, logged in, straight on to the spawn). Timed from the
  post until the server answers ``/user/NAME/api/status`` through the proxy.
* stock: a second hub with batchspawner's ``SlurmSpawner`` at its defaults (started by
  ``spawn_latency.StockHub``, ports 8100/8101/8181), the same number of existing users starting a
  server of the same size at once through the REST API (stock JupyterHub has no join flow).

For each: time until all are ready, the median, failures (target 0), and the hub's response times during
the burst (``GET /hub/api/`` every 100 ms; p50/p95/max). The seats are as many as the profile's partition
holds (the cluster says how many when fewer than asked). Everything the run made is removed afterwards:
the workshop is ended, its temporary accounts disabled and their Unix accounts removed, the stock hub
stopped; benchmark users ``wsb01``.. keep their Unix accounts for the next run. Everything printed also
goes to ``benchmarks/results/workshop-burst-<date>-<commit>.txt``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from record import recorded
from spawn_latency import (
    MAIN_PROXY_API,
    MAIN_PUBLIC,
    SITE_FILE,
    STATE,
    BenchError,
    Hub,
    Sample,
    Site,
    StockHub,
    cancel_jobs_of,
    say,
    spawn_wave,
    wait_for_idle_cluster,
)

TRAINER = "wsbtrainer"
USER_PREFIX = "wsb"
ROOM = re.compile(r"at most (\d+) seats")


@dataclass
class Probe:
    """``GET /hub/api/`` every 100 ms in the background: the hub's response times while it works."""

    url: str
    times: list[float] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Probe:
        def loop() -> None:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    ok = requests.get(self.url, timeout=30).status_code == 200
                except requests.RequestException:
                    ok = False
                if ok:
                    self.times.append(time.monotonic() - start)
                else:
                    self.errors += 1
                self._stop.wait(0.1)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=35)

    def line(self) -> str:
        if not self.times:
            return "no answers"
        ordered = sorted(self.times)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        return (f"p50 {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
                f"max {ordered[-1] * 1000:.0f} ms ({len(ordered)} requests, {self.errors} failed)")


def as_trainer(method: str, path: str, token: str, timeout: float = 60, **kw: Any) -> requests.Response:
    """A call of the main hub's REST API with the trainer's own token."""
    return requests.request(method, f"{MAIN_PUBLIC}/hub/api{path}", timeout=timeout,
                            headers={"Authorization": f"token {token}", "Accept-Language": "en"}, **kw)


def ours(main: Hub, trainer_token: str, profile: str, seats: int, timeout: float,
         made: list[str]) -> tuple[list[Sample], Probe, dict[str, Any]]:
    """Create the workshop (its id goes into ``made``) and let ``seats`` people join it at one moment."""
    start = datetime.now()
    end = start + timedelta(hours=2)  # past midnight it ends the next day
    window = {"date": start.strftime("%Y-%m-%d"), "start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}
    resources = Site.load(SITE_FILE).resources[profile]
    # Seats by cores: as many as the partition has free now (others may be working).
    if not resources.gpus and not resources.shards:
        idle = sum(int(line.split("/")[1]) for line in subprocess.run(
            ["sinfo", "-h", "-N", "-p", resources.partition, "-o", "%C"], capture_output=True, text=True,
            check=True, timeout=30).stdout.split())
        if idle // resources.cpus < seats:
            seats = idle // resources.cpus
            say(f"ours: {idle} cores of partition {resources.partition} are free now: {seats} seats of {profile}")
    body = {"title": "Burst benchmark", **window, "seats": seats, "profile": profile}
    r = as_trainer("POST", "/workshops", trainer_token, json=body)
    if r.status_code == 400 and ROOM.search(r.text):
        seats = int(ROOM.search(r.text).group(1))
        say(f"ours: the cluster holds {seats} seats of {profile}; using that many")
        r = as_trainer("POST", "/workshops", trainer_token, json={**body, "seats": seats})
    if r.status_code != 201:
        raise BenchError(f"creating the workshop failed: HTTP {r.status_code} {r.text[:300]}")
    workshop = r.json()
    made.append(workshop["id"])
    say(f"ours: workshop {workshop['id']} with {seats} seats, reservation {workshop['reservation']}")
    sessions = [requests.Session() for _ in range(seats)]
    forms = []
    for session in sessions:
        page = session.get(f"{MAIN_PUBLIC}/hub/join", params={"code": workshop["code"]}, timeout=60)
        forms.append(re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1))
    samples = {f"seat{i:02d}": Sample("ours", f"seat{i:02d}") for i in range(seats)}
    started: dict[str, float] = {}
    names: dict[str, str] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(seats)

    def join(i: int) -> None:
        key, session = f"seat{i:02d}", sessions[i]
        barrier.wait(timeout=120)
        t0 = time.monotonic()
        try:
            answer = session.post(f"{MAIN_PUBLIC}/hub/join", data={
                "code": workshop["code"], "display_name": f"Participant {i + 1}", "_xsrf": forms[i]},
                timeout=timeout, allow_redirects=False)
            if answer.status_code != 303:
                samples[key].error = f"join: HTTP {answer.status_code}"
                return
            name = answer.headers["Location"].split("/hub/spawn/")[1].split("?")[0]
            with lock:
                names[key], started[name] = name, t0
            # Joining shows the spawn form with the workshop's profile filled in; the participant presses Start.
            location = answer.headers["Location"]
            page = session.get(MAIN_PUBLIC + location, timeout=timeout)
            xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
            profile = parse_qs(urlsplit(location).query)["profile"][0]
            session.post(MAIN_PUBLIC + urlsplit(location).path, data={"_xsrf": xsrf, "profile": profile},
                         timeout=timeout, allow_redirects=False)
        except requests.RequestException as exc:
            samples[key].error = f"join: {exc}"

    with Probe(f"{MAIN_PUBLIC}/hub/api/") as probe, ThreadPoolExecutor(seats) as pool:
        futures = [pool.submit(join, i) for i in range(seats)]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with lock:
                current = {name: (samples[key], started[name]) for key, name in names.items()}
            with contextlib.suppress(requests.RequestException):
                routes = main.routes()
                for name, (sample, t0) in current.items():
                    if sample.ready_s is None and f"/user/{name}" in routes and main.status(name, main.token) == 200:
                        sample.ready_s = time.monotonic() - t0
            if all(f.done() for f in futures) and all(s.error or s.ready_s is not None for s in samples.values()):
                break
            time.sleep(0.05)
        for sample in samples.values():
            if sample.ready_s is None and not sample.error:
                sample.error = f"not ready within {timeout:.0f} s"
    return list(samples.values()), probe, workshop


def warm_joins(main: Hub, trainer_token: str, profile: str, seats: int, timeout: float,
               made: list[str]) -> list[float]:
    """A workshop with ``seats`` warm seats: once they run, people join one after another.

    Each is timed from posting the join form until JupyterLab's page has loaded (every redirect followed,
    the server's login included). The workshop's id goes into ``made`` (to clean up).
    """
    start = datetime.now()
    window = {"date": start.strftime("%Y-%m-%d"), "start": start.strftime("%H:%M"),
              "end": (start + timedelta(hours=2)).strftime("%H:%M")}
    r = as_trainer("POST", "/workshops", trainer_token, json={"title": "Warm seats benchmark", **window,
                                                              "seats": seats, "warm": seats, "profile": profile})
    if r.status_code != 201:
        raise BenchError(f"creating the warm workshop failed: HTTP {r.status_code} {r.text[:300]}")
    workshop = r.json()
    made.append(workshop["id"])
    main.api("POST", "/workshops/tend", json={}, timeout=300)  # what the tender does every minute
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = as_trainer("GET", f"/workshops/{workshop['id']}", trainer_token).json()["participants"]
        if len(rows) == seats and all(row["server"] == "running" for row in rows):
            break
        time.sleep(0.5)
    else:
        raise BenchError(f"the {seats} warm seats were not running within {timeout:.0f} s")
    say(f"warm: {seats} warm seats run in workshop {workshop['id']}; people join one after another")
    times = []
    for i in range(seats):
        session = requests.Session()
        page = session.get(f"{MAIN_PUBLIC}/hub/join", params={"code": workshop["code"]}, timeout=60)
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
        t0 = time.monotonic()
        answer = session.post(f"{MAIN_PUBLIC}/hub/join", timeout=60, data={
            "code": workshop["code"], "display_name": f"Early bird {i + 1}", "_xsrf": xsrf})
        if answer.status_code != 200 or "/lab" not in answer.url or "jupyter-config-data" not in answer.text:
            raise BenchError(f"a warm join did not land in JupyterLab: HTTP {answer.status_code} at {answer.url}")
        times.append(time.monotonic() - t0)
    return times


def report(label: str, samples: list[Sample], probe: Probe) -> None:
    ready = [s.ready_s for s in samples if s.ready_s is not None]
    failed = [s for s in samples if s.error]
    print(f"{label:<8} seats {len(samples):>3}  all ready after "
          + (f"{max(ready):6.2f} s" if ready and not failed else "   n/a  ")
          + (f"  median {statistics.median(ready):5.2f} s" if ready else "")
          + f"  failures {len(failed)}" + (f" ({failed[0].error})" if failed else ""))
    print(f"{'':<8} hub during the burst: {probe.line()}")


def remove_account(name: str) -> None:
    subprocess.run(["sacctmgr", "-i", "delete", "user", name], capture_output=True, check=False, timeout=60)
    subprocess.run(["userdel", "--remove", name], capture_output=True, check=False, timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seats", type=int, default=64, help="participants joining at once (64)")
    parser.add_argument("--profile", default="workshop-gpu-share",
                        help="the workshop profile (workshop-gpu-share: an eighth of a GPU each)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for a whole burst (600)")
    parser.add_argument("--warm", type=int, default=8,
                        help="warm seats to join one after another, timed until JupyterLab has loaded (8; 0: none)")
    parser.add_argument("--idle-wait", type=float, default=120,
                        help="seconds to wait for other users' jobs to finish before each burst (120)")
    args = parser.parse_args(argv)
    site = Site.load(SITE_FILE)
    if args.profile not in site.resources or not 1 <= args.seats <= 200:
        parser.error("--profile must be a profile of the site file and --seats 1..200")
    with recorded("workshop-burst"):
        return burst(args, site)


def burst(args: argparse.Namespace, site: Site) -> int:
    """Both bursts (and the warm joins), the report, then the cleanup; the exit code."""
    main_hub = Hub("main hub", MAIN_PUBLIC, MAIN_PROXY_API, (STATE / "lab-service-token").read_text().strip(),
                   (STATE / "proxy-token").read_text().strip())
    made: list[str] = []  # the workshops this run made (ids)
    stock: StockHub | None = None
    stock_hub: Hub | None = None
    workdir = Path(tempfile.mkdtemp(prefix="aifl-workshop-bench-"))
    workdir.chmod(0o755)
    users: list[str] = []
    trainer_token = ""
    code = 0
    try:
        trainer_token = main_hub.ensure_user(TRAINER)
        main_hub.api("POST", "/groups/trainers", json={})
        main_hub.api("POST", "/groups/trainers/users", json={"users": [TRAINER]})
        wait_for_idle_cluster({TRAINER}, args.idle_wait)
        ours_samples, ours_probe, workshop = ours(main_hub, trainer_token, args.profile, args.seats, args.timeout,
                                                   made)
        seats = len(ours_samples)
        as_trainer("POST", f"/workshops/{workshop['id']}/end", trainer_token, timeout=300)

        users = [f"{USER_PREFIX}{i:02d}" for i in range(1, seats + 1)]
        say(f"stock: preparing {seats} users and the stock hub")
        for name in users:
            main_hub.ensure_user(name)
            main_hub.join(name, site.account)
            subprocess.run(["sacctmgr", "-i", "add", "user", name, f"account={site.account}"],
                           capture_output=True, check=False, timeout=60)
        stock = StockHub(workdir, site.resources[args.profile], site)
        stock_hub = stock.start()
        tokens = {name: stock_hub.ensure_user(name) for name in users}
        wait_for_idle_cluster(set(users), args.idle_wait)
        say(f"stock: {seats} users start at once")
        with Probe(f"{stock_hub.public}/hub/api/") as stock_probe:
            stock_samples = spawn_wave(stock_hub, tokens, site.resources[args.profile].stock_options(), "stock",
                                       args.timeout)
        if stock is not None:
            stock.stop()
            stock = None
        warm_times: list[float] = []
        if args.warm:
            wait_for_idle_cluster(set(users), args.idle_wait)
            warm_times = warm_joins(main_hub, trainer_token, args.profile, args.warm, args.timeout, made)
        print(f"\nWorkshop burst, {seats} seats of {args.profile} at once (one run, same cluster):")
        report("ours", ours_samples, ours_probe)
        report("stock", stock_samples, stock_probe)
        if warm_times:
            print(f"warm     {len(warm_times)} joins to a warm seat, one after another, until JupyterLab has loaded: "
                  f"median {statistics.median(warm_times):.2f} s, max {max(warm_times):.2f} s")
    except (BenchError, requests.RequestException, subprocess.SubprocessError, OSError) as exc:
        say(f"ERROR: {exc}")
        code = 1
    finally:
        say("cleaning up: the workshop, its temporary accounts, the stock hub, the benchmark users' servers")
        for workshop_id in made:
            with contextlib.suppress(requests.RequestException):
                state = as_trainer("GET", f"/workshops/{workshop_id}", trainer_token).json()
                as_trainer("POST", f"/workshops/{workshop_id}/end", trainer_token, timeout=300)
                as_of = (datetime.now() + timedelta(days=91)).strftime("%Y-%m-%dT%H:%M:%S")
                main_hub.api("POST", "/workshops/tend", json={"as_of": as_of}, timeout=300)
                for participant in state.get("participants", []):
                    remove_account(participant["name"])
        if stock_hub is not None:
            with contextlib.suppress(requests.RequestException):
                stock_hub.stop_servers(users, timeout=120)
        if stock is not None:
            stock.stop()
        cancel_jobs_of(users)
        with contextlib.suppress(requests.RequestException):
            main_hub.delete_users([*users, TRAINER])
        shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
