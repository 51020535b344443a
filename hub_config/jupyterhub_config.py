"""JupyterHub configuration of AI Factory Lab: everything comes from the site file.

`lab up` copies this file to /etc/aifl/ and starts the hub with AIFL_SITE_FILE pointing at the
validated site file. Settings belong in the site file, not here.
"""

import os

from aifl_hub.hubconfig import configure

configure(c, os.environ.get("AIFL_SITE_FILE", "/etc/aifl/site.yaml"))
