"""Copy the PNG output of a notebook cell, found by its tag, to a file (the README's picture).

    python tools/export_figure.py NOTEBOOK TAG OUT.png
"""

import base64
import sys
from pathlib import Path

import nbformat


def main(notebook: str, tag: str, out: str) -> None:
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if tag in cell.get("metadata", {}).get("tags", []):
            for output in cell.get("outputs", []):
                png = output.get("data", {}).get("image/png")
                if png:
                    Path(out).write_bytes(base64.b64decode(png))
                    print(f"{notebook} [{tag}] -> {out}")
                    return
    sys.exit(f"no PNG output in a cell tagged {tag!r} of {notebook}: execute the notebook first (make notebooks)")


if __name__ == "__main__":
    main(*sys.argv[1:])
