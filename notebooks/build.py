"""Write the example notebooks (``<topic>/<name>.en.ipynb`` and ``.nl.ipynb``) from their sources.

Each notebook has one source, ``_source/<topic>/<name>.txt``, holding both languages' text and the
code once, so the Dutch and English notebooks always have the same code cells. A source is a list of
cells, each starting with a header line::

    === markdown            text cell; its English and Dutch texts follow "--- en" and "--- nl"
    === code                code cell (the same in both languages)
    === code parameters     code cell tagged "parameters": papermill replaces its values

Run ``python3 notebooks/build.py`` after changing a source; ``--check`` only reports notebooks that
differ from their source. The notebooks are written as nbformat 4.5 JSON the way Jupyter writes it
(sorted keys, one-space indent, sources split into lines), with no outputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "_source"
LANGUAGES = ("en", "nl")
KERNEL = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


class SourceError(ValueError):
    """A source file does not follow the format described in this module's docstring."""


def parse(text: str, where: str) -> list[dict]:
    """The cells of a source: ``{"kind": "markdown", "en": …, "nl": …}`` or ``{"kind": "code", "code": …}``."""
    cells: list[dict] = []
    lines: list[str] = []
    header = ""

    def close() -> None:
        if not header:
            if any(line.strip() for line in lines):
                raise SourceError(f"{where}: text before the first '=== ' line")
            return
        kind, *tags = header.split()
        if kind == "code":
            if set(tags) - {"parameters"}:
                raise SourceError(f"{where}: unknown tag in '=== {header}'")
            cells.append({"kind": "code", "code": "\n".join(lines).strip("\n"), "tags": tags})
        elif kind == "markdown" and not tags:
            texts: dict[str, list[str]] = {}
            current = None
            for line in lines:
                if line.startswith("--- ") and line[4:].strip() in LANGUAGES:
                    current = line[4:].strip()
                    texts[current] = []
                elif current is None:
                    if line.strip():
                        raise SourceError(f"{where}: markdown text before '--- en'")
                else:
                    texts[current].append(line)
            if set(texts) != set(LANGUAGES):
                raise SourceError(f"{where}: a markdown cell needs both '--- en' and '--- nl'")
            cells.append({"kind": "markdown", **{lang: "\n".join(texts[lang]).strip("\n") for lang in LANGUAGES}})
        else:
            raise SourceError(f"{where}: unknown cell header '=== {header}'")

    for line in text.splitlines():
        if line.startswith("=== "):
            close()
            header, lines = line[4:].strip(), []
        else:
            lines.append(line)
    close()
    return cells


def notebook(cells: list[dict], lang: str) -> dict:
    """The notebook of ``cells`` in ``lang``: no outputs, stable cell ids (the cell's position)."""
    out = []
    for index, cell in enumerate(cells):
        text = cell[lang] if cell["kind"] == "markdown" else cell["code"]
        new: dict = {"cell_type": cell["kind"], "id": f"cell-{index:02d}", "metadata": {},
                     "source": text.splitlines(keepends=True)}
        if cell["kind"] == "code":
            new.update(execution_count=None, outputs=[])
            if cell["tags"]:
                new["metadata"]["tags"] = list(cell["tags"])
        out.append(new)
    return {"cells": out, "metadata": {"kernelspec": KERNEL, "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def render(source: Path) -> dict[Path, str]:
    """The notebooks of one source: ``{path: JSON text}`` for each language."""
    relative = source.relative_to(SOURCES).with_suffix("")
    cells = parse(source.read_text(encoding="utf-8"), str(source.relative_to(HERE)))
    return {HERE / relative.parent / f"{relative.name}.{lang}.ipynb":
            json.dumps(notebook(cells, lang), sort_keys=True, indent=1, ensure_ascii=False) + "\n"
            for lang in LANGUAGES}


def all_notebooks() -> dict[Path, str]:
    """Every notebook the sources describe."""
    rendered: dict[Path, str] = {}
    for source in sorted(SOURCES.rglob("*.txt")):
        rendered.update(render(source))
    return rendered


def main(argv: list[str]) -> int:
    """Write the notebooks (or, with ``--check``, list those that differ from their sources)."""
    stale = [path for path, text in all_notebooks().items()
             if not path.exists() or path.read_text(encoding="utf-8") != text]
    if "--check" in argv:
        for path in stale:
            print(f"out of date: {path.relative_to(HERE)}")
        return 1 if stale else 0
    for path, text in all_notebooks().items():
        if path in stale:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(HERE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
