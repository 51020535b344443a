"""The workshop tender: a hub service that asks the hub, every minute, to close what a workshop left behind.

Run by the hub as a managed service (``python -m aifl_hub.workshop_tender``) with one scope,
``custom:workshops:tend``: it calls ``POST /hub/api/workshops/tend``, which takes away what workshops
whose grace period is over gave (temporary accounts locked, their jobs and Slurm associations gone; members
out of the workshop's Slurm account). It holds no other rights and touches nothing itself.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger("aifl_hub.workshop_tender")


async def tend_once(api_url: str, token: str) -> str:
    """One call of the hub's tend route; its JSON answer."""
    request = HTTPRequest(f"{api_url.rstrip('/')}/workshops/tend", method="POST", body="{}",
                          headers={"Authorization": f"token {token}"}, request_timeout=120)
    return (await AsyncHTTPClient().fetch(request)).body.decode()


async def run(api_url: str, token: str, every: float) -> None:
    """Tend every ``every`` seconds; a failed call is logged and tried again next time."""
    while True:
        try:
            log.info("tended: %s", await tend_once(api_url, token))
        except (HTTPClientError, OSError) as exc:
            log.warning("tending failed: %s", exc)
        await asyncio.sleep(every)


def main() -> None:
    """Entry point of the managed service (the hub gives it its API URL and token in the environment)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between calls")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s workshop-tender %(message)s")
    asyncio.run(run(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"], args.every))


if __name__ == "__main__":
    main()
