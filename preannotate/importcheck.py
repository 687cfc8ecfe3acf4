"""Imports every module of the named packages, so a missing dependency fails the install.

TF Model Garden is installed without its own dependency list
(requirements/model-garden.txt); the modules it needs here are listed by
hand in pyproject.toml's ``vision`` extra. This check is the guard on that
list: ``make setup`` and every service image run it right after ``pip
install``, so a module that some code path imports but no extra brings is an
install error with the module's name, not a job that fails hours later.

    python -m preannotate.importcheck services.trainer preannotate.vision
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback


def modules_of(package: str) -> list[str]:
    """The package and every module below it, sorted; ``__main__`` modules are left out
    (importing one would start the service)."""
    root = importlib.import_module(package)
    names = [package]
    if hasattr(root, "__path__"):
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
            if info.name.rsplit(".", 1)[-1] != "__main__":
                names.append(info.name)
    return sorted(names)


def check(packages: list[str]) -> list[tuple[str, str]]:
    """(module, error) for every module of ``packages`` that does not import."""
    failures: list[tuple[str, str]] = []
    for package in packages:
        try:
            names = modules_of(package)
        except Exception as exc:  # the package itself: report it, go on with the next
            failures.append((package, f"{type(exc).__name__}: {exc}"))
            continue
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as exc:
                failures.append((name, f"{type(exc).__name__}: {exc}"))
    return failures


def main(argv: list[str] | None = None) -> int:
    packages = list(sys.argv[1:] if argv is None else argv)
    if not packages:
        print("usage: python -m preannotate.importcheck PACKAGE [PACKAGE ...]", file=sys.stderr)
        return 2
    try:
        failures = check(packages)
    except Exception:
        traceback.print_exc()
        return 1
    for name, error in failures:
        print(f"import check: {name}: {error}", file=sys.stderr)
    if failures:
        print(
            f"import check: {len(failures)} module(s) of {', '.join(packages)} do not import; "
            "a dependency is missing from pyproject.toml's extras",
            file=sys.stderr,
        )
        return 1
    print(f"import check: every module of {', '.join(packages)} imports")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
