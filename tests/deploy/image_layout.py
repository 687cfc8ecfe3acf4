"""The folders an image built from one of our Dockerfiles holds, and who owns them.

No engine runs here, so the layout is read from the Dockerfile's last stage:
``useradd --create-home --home-dir``, ``mkdir [-p]``, ``chown [-R]``,
``install -d -o -g``, ``rm -rf``, ``COPY`` (without ``--chown``: root), ``WORKDIR``
and ``USER``. The base image is taken to hold the usual root-owned folders and a
world-writable ``/tmp``; anything else it may hold is unknown, so a folder
counts as present only when the Dockerfile makes it. A command the reader does
not know is ignored: the checks built on it ask for folders to be made in ways
it reads.

Docker fills a new named volume from the image's folder at the mount point
(owner included); a mount point the image lacks is created owned by root.
"""

from __future__ import annotations

import itertools
import posixpath
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from tests.deploy.test_dockerfiles import instructions

#: Folders every base image (Debian, Ubuntu) has, owned by root.
BASE_FOLDERS = ("/", "/etc", "/opt", "/run", "/usr", "/usr/local", "/var", "/var/cache", "/var/lib")
#: Owner value of a folder anyone may write to (sticky /tmp).
ANYONE = -1


@dataclass
class Layout:
    """Folders of an image (path -> owning uid) and the user it runs as."""

    folders: dict[str, int] = field(default_factory=dict)
    uid: int = 0
    gid: int = 0
    workdir: str = "/"

    def owner(self, path: str) -> int | None:
        """The owner of ``path``; None when the image does not hold it."""
        return self.folders.get(posixpath.normpath(path))

    def nearest(self, path: str) -> str:
        """``path`` or its closest ancestor the image holds (what a service's
        ``mkdir -p`` would create its folder in)."""
        path = posixpath.normpath(posixpath.join(self.workdir, path))
        while path not in self.folders:
            path = posixpath.dirname(path)
        return path

    def writable(self, path: str) -> bool:
        """Whether the image's user can write in ``path`` (or create it)."""
        owner = self.folders[self.nearest(path)]
        return owner in (ANYONE, self.uid)


def read_layout(dockerfile: Path) -> Layout:
    """The layout of the image ``dockerfile`` builds (its last stage)."""
    ins = instructions(dockerfile)
    last = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    layout = Layout(folders={p: 0 for p in BASE_FOLDERS} | {"/tmp": ANYONE})
    users: dict[str, int] = {"root": 0}
    groups: dict[str, int] = {"root": 0}
    current = 0
    for word, rest in ins[last + 1 :]:
        if word == "RUN":
            for command in _commands(rest):
                _run(layout, command, users, groups, current)
        elif word == "COPY":
            args = shlex.split(rest)
            chown = next((a.split("=", 1)[1] for a in args if a.startswith("--chown=")), None)
            dest = posixpath.join(layout.workdir, [a for a in args if not a.startswith("--")][-1])
            owner = _uid(chown.split(":")[0], users) if chown else 0
            _make(layout, dest.rstrip("/") if dest.endswith("/") else dest, owner)
        elif word == "WORKDIR":
            layout.workdir = posixpath.normpath(posixpath.join(layout.workdir, rest))
            if layout.owner(layout.workdir) is None:
                _make(layout, layout.workdir, current)
        elif word == "USER":
            user, _, group = rest.partition(":")
            current = _uid(user, users)
            layout.uid = current
            layout.gid = _uid(group, groups) if group else current
    return layout


def _commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at ``&&``, ``||``, ``;``, ``|``)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    out: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            out.append([])
        else:
            out[-1].append(token)
    return [c for c in out if c]


def _uid(name: str, known: dict[str, int]) -> int:
    return int(name) if name.isdigit() else known[name]


def _make(layout: Layout, path: str, owner: int) -> None:
    """``mkdir -p``: the missing parents are made with the same owner."""
    path = posixpath.normpath(path)
    missing = []
    while path not in layout.folders:
        missing.append(path)
        path = posixpath.dirname(path)
    for made in missing:
        layout.folders[made] = owner


def _run(
    layout: Layout, argv: list[str], users: dict[str, int], groups: dict[str, int], current: int
) -> None:
    if not argv:
        return
    name, args = argv[0], argv[1:]
    paths = [posixpath.join(layout.workdir, a) for a in args if not a.startswith("-")]
    if name in ("groupadd", "useradd"):
        opts = _options(args)
        who = args[-1]
        number = int(opts.get("--gid" if name == "groupadd" else "--uid", "0"))
        (groups if name == "groupadd" else users)[who] = number
        home = opts.get("--home-dir") or opts.get("-d")
        if name == "useradd" and home and ("--create-home" in args or "-m" in args):
            _make(layout, posixpath.dirname(home), 0)
            layout.folders[posixpath.normpath(home)] = number
    elif name == "mkdir":
        for path in paths:
            _make(layout, path, current)
    elif name == "install" and "-d" in args:
        opts = _options(args)
        owner = _uid(opts["-o"], users) if "-o" in opts else current
        for path in (p for p in args if p.startswith("/")):
            _make(layout, path, owner)
    elif name == "chown":
        recursive = "-R" in args
        owner_arg, *targets = [a for a in args if not a.startswith("-")]
        owner = _uid(owner_arg.split(":")[0], users)
        for target in (posixpath.normpath(posixpath.join(layout.workdir, t)) for t in targets):
            for path in list(layout.folders):
                if path == target or (recursive and path.startswith(target + "/")):
                    layout.folders[path] = owner
    elif name == "rm":
        for target in (posixpath.normpath(p) for p in paths):
            for path in list(layout.folders):
                if path == target or path.startswith(target + "/"):
                    del layout.folders[path]
    elif name == "cd":
        return  # a RUN's cd ends with the RUN


def _options(args: list[str]) -> dict[str, str]:
    """``--flag value`` / ``-f value`` pairs of a command line."""
    out = {}
    for flag, value in itertools.pairwise(args):
        if flag.startswith("-") and not value.startswith("-"):
            out[flag] = value
    return out
