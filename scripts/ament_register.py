#!/usr/bin/env python3
"""Make a Python prefix (the project's venv) an ament prefix for this package.

`colcon build` installs an ament_python package's marker, share files and executables where
ament looks for them; an editable `pip install -e` (what scripts/bootstrap.sh does) installs
none of them (it ignores `data_files` and puts the console scripts in bin/). This script adds,
under the prefix (default: this interpreter's, sys.prefix):

  share/ament_index/resource_index/packages/robot_imitation   the package marker
  share/robot_imitation/{package.xml,config}                   links to the checkout, so that
                                                               edits are seen, as with -e
  share/robot_imitation/launch/<file>                          a link to each of the checkout's
                                                               launch files (`ros2 launch
                                                               <package> <file>` searches the
                                                               share folder without following
                                                               a linked folder; as colcon's
                                                               --symlink-install, file by file)
  lib/robot_imitation/<name>                                   one executable per console
                                                               script of the installed package
                                                               (from setup.py's entry points)

With the prefix in AMENT_PREFIX_PATH, `ros2 run robot_imitation <name>`, `ros2 launch
robot_imitation <file>` and `ament_index_python` find the package. Idempotent: run it again
after the entry points or the launch files change (bootstrap.sh does); executables it wrote for
entry points that are gone, and links to launch files that are gone, are removed.

Usage: python scripts/ament_register.py [PREFIX]
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
from pathlib import Path

PACKAGE = "robot_imitation"
CHECKOUT = Path(__file__).resolve().parents[1]
SHARED = ("package.xml", "config")  # linked whole (setup.py's data_files install them to share/)
LAUNCH = "launch"                    # linked file by file
MARK = f"# {PACKAGE} console script, written by scripts/ament_register.py"


def console_scripts() -> dict:
    """name -> (module, function) of the installed distribution's console scripts."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"ament_register: {PACKAGE} is not installed in {sys.prefix} "
                         "(pip install -e first)") from None
    scripts = {}
    for ep in dist.entry_points:
        if ep.group == "console_scripts":
            module, _, func = ep.value.partition(":")
            scripts[ep.name] = (module.strip(), func.strip())
    if not scripts:
        raise SystemExit(f"ament_register: {PACKAGE} declares no console scripts")
    return scripts


def wrapper(python: str, module: str, func: str) -> str:
    return (f"#!{python}\n{MARK}\n"
            "import sys\n\n"
            f"from {module} import {func}\n\n"
            "if __name__ == '__main__':\n"
            f"    sys.exit({func}())\n")


def _replace_with_link(link: Path, target: Path) -> None:
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():  # real files from an earlier non-editable install of this package
        shutil.rmtree(link)
    link.symlink_to(target, target_is_directory=target.is_dir())


def register(prefix: Path, python: str) -> list[str]:
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes((CHECKOUT / "resource" / PACKAGE).read_bytes())
    share = prefix / "share" / PACKAGE
    share.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        _replace_with_link(share / name, CHECKOUT / name)
    launch = share / LAUNCH
    if launch.is_symlink() or launch.is_file():  # an earlier registration linked the folder
        launch.unlink()
    launch.mkdir(exist_ok=True)
    files = {p.name: p for p in sorted((CHECKOUT / LAUNCH).glob("*.launch.py"))}
    for old in launch.iterdir():  # launch files removed since the last run
        if old.is_symlink() and old.name not in files:
            old.unlink()
    for name, target in files.items():
        _replace_with_link(launch / name, target)
    lib = prefix / "lib" / PACKAGE
    lib.mkdir(parents=True, exist_ok=True)
    scripts = console_scripts()
    for old in lib.iterdir():  # entry points removed since the last run
        if old.name not in scripts and old.is_file() and MARK in old.read_text(errors="replace"):
            old.unlink()
    for name, (module, func) in sorted(scripts.items()):
        path = lib / name
        text = wrapper(python, module, func)
        if not (path.is_file() and not path.is_symlink() and path.read_text() == text):
            if path.is_symlink() or path.exists():
                path.unlink()
            path.write_text(text)
        path.chmod(0o755)
    return sorted(scripts)


def main(argv: list[str]) -> int:
    prefix = Path(argv[1] if len(argv) > 1 else sys.prefix).absolute()
    python = str(prefix / "bin" / "python")
    if not os.access(python, os.X_OK):
        python = sys.executable
    names = register(prefix, python)
    print(f"[ament_register] {PACKAGE} registered in {prefix}: share/{PACKAGE} -> the checkout, "
          f"lib/{PACKAGE}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
