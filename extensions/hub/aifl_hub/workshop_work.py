#!/usr/bin/python3 -I
"""aifl-work: read one's own workshop folder for the hub (run by the hub as that participant, through sudo).

    aifl-work list FOLDER              the notebooks under ~/FOLDER as JSON: [{"path", "size", "modified"}]
    aifl-work show FOLDER/NAME.ipynb   that notebook's file on stdout
    aifl-work zip FOLDER               a zip of the regular files under ~/FOLDER on stdout

Installed as /usr/local/sbin/aifl-work (root, 0755) by `lab up`; the hub's service account may run it as
any lab user (``sudo -u <user>``) and never as root, so it reads only what that user can read. Only the
standard library. Every argument must match a strict pattern; symbolic links are never followed, and every
path, resolved, must stay inside ~/FOLDER. Exit codes: 0 done, 2 refused (the reason on stderr), 3 no such
notebook or folder.
"""

import json
import os
import pwd
import re
import stat
import sys
import zipfile
from datetime import UTC, datetime

FOLDER = re.compile(r"^[a-z0-9][a-z0-9-]{0,79}$")
# One part of a notebook's path: letters (any script), digits and a few signs; no leading dot or dash.
PART = re.compile(r"^[^\W_][\w .,()+=@-]{0,199}$")
NOTEBOOK_MAX = 20 * 1024 * 1024
ZIP_MAX = 500 * 1024 * 1024
DEPTH_MAX = 8
LISTED_MAX = 1000
SKIPPED = {".ipynb_checkpoints", "__pycache__"}


def refuse(message: str, code: int = 2) -> None:
    """Stop with ``code`` (2: refused, 3: not found) and a message for the hub's log."""
    print(f"aifl-work: {message}", file=sys.stderr)
    sys.exit(code)


def folder_of(name: str) -> str:
    """The absolute ~/``name`` (checked: a real folder, not a link); exit 3 when it does not exist."""
    if not FOLDER.fullmatch(name):
        refuse("the folder is lower-case letters, digits and dashes")
    home = os.path.realpath(pwd.getpwuid(os.getuid()).pw_dir)
    base = os.path.join(home, name)
    try:
        info = os.lstat(base)
    except FileNotFoundError:
        refuse(f"there is no folder ~/{name}", 3)
    if not stat.S_ISDIR(info.st_mode):
        refuse(f"~/{name} is not a folder")
    return base


def inside(base: str, path: str) -> bool:
    """``path``, resolved, is below ``base``."""
    return os.path.realpath(path).startswith(base + os.sep)


def notebooks(base: str) -> list[dict]:
    """The notebooks below ``base`` whose every path part is acceptable to ``show`` (links are skipped)."""
    found: list[dict] = []
    for top, folders, files in os.walk(base, followlinks=False):
        rel = os.path.relpath(top, base)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        folders[:] = sorted(f for f in folders if f not in SKIPPED and PART.fullmatch(f) and depth < DEPTH_MAX - 1)
        for name in sorted(files):
            path = os.path.join(top, name)
            if not (name.endswith(".ipynb") and PART.fullmatch(name)):
                continue
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and inside(base, path):
                modified = datetime.fromtimestamp(info.st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                found.append({"path": os.path.relpath(path, os.path.dirname(base)), "size": info.st_size,
                              "modified": modified})
                if len(found) >= LISTED_MAX:
                    return found
    return found


def show(argument: str) -> None:
    """Write the notebook FOLDER/…/NAME.ipynb to stdout."""
    parts = argument.split("/")
    if len(parts) < 2 or len(parts) > DEPTH_MAX + 1 or not parts[-1].endswith(".ipynb") or not all(
            PART.fullmatch(p) for p in parts[1:]):
        refuse("give FOLDER/NAME.ipynb: a notebook in the workshop folder")
    base = folder_of(parts[0])
    path = os.path.join(base, *parts[1:])
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        refuse(f"there is no notebook {argument}", 3)
    except OSError as exc:  # ELOOP: the notebook is a link
        refuse(f"{argument} cannot be read: {exc.strerror}")
    with os.fdopen(descriptor, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode) or not inside(base, path):
            refuse(f"{argument} is not a notebook file in ~/{parts[0]}")
        if info.st_size > NOTEBOOK_MAX:
            refuse(f"{argument} is larger than {NOTEBOOK_MAX // 2**20} MB")
        sys.stdout.buffer.write(fh.read(NOTEBOOK_MAX))


def zip_folder(name: str) -> None:
    """Write a zip of the regular files below ~/``name`` (links skipped) to stdout."""
    base = folder_of(name)
    files = []
    for top, folders, names in os.walk(base, followlinks=False):
        folders[:] = sorted(f for f in folders if f not in SKIPPED)
        for entry in sorted(names):
            path = os.path.join(top, entry)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and inside(base, path):
                files.append((path, info.st_size))
    if sum(size for _, size in files) > ZIP_MAX:
        refuse(f"~/{name} holds more than {ZIP_MAX // 2**20} MB")
    parent = os.path.dirname(base)
    with zipfile.ZipFile(sys.stdout.buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, _size in files:
            try:
                descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue  # removed or replaced by a link meanwhile, or unreadable: left out
            with os.fdopen(descriptor, "rb") as source:
                if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                    continue
                member = zipfile.ZipInfo.from_file(path, os.path.relpath(path, parent))
                member.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(member, "w", force_zip64=True) as target:
                    while chunk := source.read(1 << 20):
                        target.write(chunk)


def main() -> None:
    """Run the subcommand named on the command line."""
    if os.geteuid() == 0 or os.getuid() == 0:
        refuse("runs as a lab user, never as root")
    if len(sys.argv) != 3 or sys.argv[1] not in ("list", "show", "zip"):
        refuse("usage: aifl-work list FOLDER | show FOLDER/NAME.ipynb | zip FOLDER")
    command, argument = sys.argv[1], sys.argv[2]
    if command == "list":
        if not FOLDER.fullmatch(argument):
            refuse("the folder is lower-case letters, digits and dashes")
        home = os.path.realpath(pwd.getpwuid(os.getuid()).pw_dir)
        if not os.path.isdir(os.path.join(home, argument)):  # not made yet: nothing to list
            print("[]")
            return
        print(json.dumps(notebooks(folder_of(argument))))
    elif command == "show":
        show(argument)
    else:
        zip_folder(argument)


if __name__ == "__main__":
    main()
