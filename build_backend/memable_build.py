"""The build backend: setuptools', with an editable install that mypy can see.

setuptools installs ``pip install -e .`` through an import hook (its
editable finder, needed here because ``memable_log_tools`` lives in
``tools/``). Python imports through it, but mypy reads only the directories
of ``.pth`` files, so it could not find ``memable_log`` or its ``py.typed``.
The editable wheel gets one more ``.pth`` naming a directory that holds
only a symlink to the package: mypy (and Python) find ``memable_log``
there, new modules included, and nothing else of the checkout becomes
importable. Every other hook is setuptools' own.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 (every other hook as it is)

_PACKAGE = "memable_log"
_LINKS = os.path.join("build", "__editable_path__")


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    links = os.path.abspath(_LINKS)
    os.makedirs(links, exist_ok=True)
    link = os.path.join(links, _PACKAGE)
    if not os.path.islink(link):
        os.symlink(os.path.join("..", "..", _PACKAGE), link)
    _add_pth(os.path.join(wheel_directory, name), f"__editable__.{_PACKAGE}_path.pth",
             links + "\n")
    return name  # type: ignore[no-any-return]


def _add_pth(wheel: str, pth: str, text: str) -> None:
    """Add ``pth`` to the wheel, with its line in RECORD."""
    data = text.encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    with zipfile.ZipFile(wheel) as old:
        items = [(info, old.read(info)) for info in old.infolist()]
    with zipfile.ZipFile(wheel + ".tmp", "w", zipfile.ZIP_DEFLATED) as new:
        for info, content in items:
            if info.filename.endswith(".dist-info/RECORD"):
                content += f"{pth},sha256={digest},{len(data)}\n".encode()
            new.writestr(info, content)
        new.writestr(pth, data)
    os.replace(wheel + ".tmp", wheel)
