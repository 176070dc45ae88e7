"""Where the package's data lives (the source tree when run from a checkout, else the ament
share), and the process environment it sets up (ROS prefix and DDS profile, MUJOCO_GL)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

PACKAGE = "robot_imitation"
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def share_dir() -> Path:
    """The folder holding ``config/`` and ``launch/``."""
    if (_SOURCE_ROOT / "config").is_dir() and (_SOURCE_ROOT / "package.xml").is_file():
        return _SOURCE_ROOT
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception as exc:  # noqa: BLE001 - any lookup failure means the same thing here
        raise FileNotFoundError(
            f"cannot find the {PACKAGE} share folder (no source checkout, and the ament index "
            f"lookup failed: {exc}); is AMENT_PREFIX_PATH set?"
        ) from exc


def config_dir() -> Path:
    return share_dir() / "config"


def available(kind: str) -> list:
    """Names of the built-in ``config/<kind>/*.yaml`` files (kind: tasks, robots, specs)."""
    return sorted(p.stem for p in (config_dir() / kind).glob("*.yaml"))


def names_a_path(name_or_path) -> bool:
    """Whether ``name_or_path`` is a file's path rather than a built-in's name: it holds a
    folder separator (``./reach``, ``../specs/reach``) or a suffix (``my_task.yaml``). A
    built-in is named by its bare name (``reach``)."""
    text = str(name_or_path)
    separators = {"/", os.sep, os.altsep} - {None}
    return any(sep in text for sep in separators) or bool(Path(text).suffix)


def config_file(kind: str, name_or_path) -> Path:
    """``config/<kind>/<name>.yaml`` for a bare name, else the given path (relative to the
    current folder; never looked up among the built-in files); it must exist.

    Raises ``FileNotFoundError`` naming the built-in choices.
    """
    if names_a_path(name_or_path):
        path = Path(name_or_path)
        what = f"{path.absolute()} is a folder" if path.is_dir() else \
            f"no file {path.absolute()}"
    else:
        path = config_dir() / kind / f"{name_or_path}.yaml"
        what = f"no {path}"
    if not path.is_file():
        raise FileNotFoundError(f"unknown {kind[:-1]} '{name_or_path}' ({what}); known "
                                f"{kind}: {available(kind)}")
    return path


def write_text_whole(path, text: str) -> Path:
    """Write ``text`` to ``path`` whole or not at all: a temporary file beside it, flushed to
    the disk and renamed over it (``.<name>.tmp``, removed if the write fails)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if not tmp.is_dir():  # (something in its way is not this write's to remove)
            tmp.unlink(missing_ok=True)
    return path


_LOADER = None


def yaml_load(stream):
    """``yaml.safe_load`` that also reads ``1e-3`` as a float (YAML 1.2; PyYAML follows YAML
    1.1, where a float needs a dot and ``1e-3`` is a string): the way most people write a
    learning rate; and refuses a key given twice in one mapping (YAML forbids it; PyYAML kept
    the last, so `lr: 1e-3` written twice, once forgotten, trained on the other without a
    word), a ``ConstructorError`` with the line of the second."""
    global _LOADER
    import re

    import yaml

    if _LOADER is None:
        class Loader(yaml.SafeLoader):
            def construct_mapping(self, node, deep=False):
                if isinstance(node, yaml.MappingNode):
                    seen = {}
                    for key_node, _ in node.value:
                        if not isinstance(key_node, yaml.ScalarNode) or \
                                key_node.tag == "tag:yaml.org,2002:merge":
                            continue   # `<<` merges may be overridden by the mapping's own keys
                        key = self.construct_object(key_node)
                        if key in seen:
                            raise yaml.constructor.ConstructorError(
                                "while reading a mapping", node.start_mark,
                                f"the key {key!r} is given twice (first on line "
                                f"{seen[key] + 1})", key_node.start_mark)
                        seen[key] = key_node.start_mark.line
                return super().construct_mapping(node, deep)

        Loader.add_implicit_resolver(
            "tag:yaml.org,2002:float",
            re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
            list("-+0123456789."))
        _LOADER = Loader
    return yaml.load(stream, Loader=_LOADER)  # noqa: S506 - a SafeLoader


def read_yaml(path, error: type = ValueError):
    """The YAML document in ``path`` (None for an empty file); ``error`` with one line naming
    the file when it cannot be read, is not UTF-8 text, or is not YAML (with the line and
    column)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            return yaml_load(f)
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not a text file (byte {exc.object[exc.start]:#04x} at offset "
                    f"{exc.start} is not UTF-8)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{path}{at}: not valid YAML: {what}") from None


def ensure_ros_environment() -> None:
    """Make a venv that holds the ROS 2 PyPI wheels look like an installed ROS prefix.

    The wheels do not set ``AMENT_PREFIX_PATH``; package look-ups need it. scripts/bootstrap.sh
    also registers this package in the venv's ament index, so it is found there too. Also sets
    the Fast DDS profile ROBOT_IMITATION_DDS_PROFILE asks for (``dds_profile``). Call it before
    rclpy creates a context; child processes inherit both.
    """
    # sys.prefix is the running interpreter's venv whether or not the venv was activated (the
    # interpreter's real path would be the base Python's). Not VIRTUAL_ENV: that names the
    # venv of the shell, which need not be this one (`ros2 run` or a launch file starting
    # lib/robot_imitation/<exe>, whose interpreter is this package's venv, from another venv).
    prefix = sys.prefix
    current = os.environ.get("AMENT_PREFIX_PATH", "")
    if Path(prefix, "share", "ament_index").is_dir() and prefix not in current.split(os.pathsep):
        os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(p for p in (current, prefix) if p)
    try:
        profile = dds_profile()
    except ValueError as exc:  # a user's setting: one line, no traceback, exit 1
        raise SystemExit(f"error: {exc}") from None
    if profile is not None:
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)


DDS_PROFILES = ("services", "large_data")  # config/fastdds/<name>.xml; the first is the default


def dds_profile() -> Path | None:
    """The Fast DDS profile to give the processes: ROBOT_IMITATION_DDS_PROFILE names one of
    ``DDS_PROFILES`` or a file; unset, ``services``.

    - ``services`` (``config/fastdds/services.xml``): a service's answer waits up to 5 s for
      the client's response reader to be discovered, not Fast DDS's 100 ms, after which the
      answer is dropped and the client waits forever (seen on a loaded machine with freshly
      started nodes); and every other writer sends a heartbeat every 100 ms, not 3 s, while a
      reader has not acknowledged a sample: what a reader that fell behind lost in transport
      is sent again within a tenth of a second (it came 2.5-5.5 s late, past a recorder's
      wait for an episode's end); and a writer ignores NACKs for 3 ms after a send, not 0 s,
      so that its event thread wakes at most once in 3 ms rather than for every sample sent to
      another process (2-3 context switches a publish). Nothing else differs from Fast DDS's
      defaults.
    - ``large_data`` (``config/fastdds/large_data.xml``): the same, and a shared-memory segment
      that holds camera frames published back to back (Fast DDS's 512 KB default loses the
      first of two VGA frames to the second and repairs it up to a second late, or never). Not
      the default: with it, discovery between many processes on one machine was measured
      slower, which its initial-peer range only partly mended.

    None (Fast DDS as configured) for ``off``, where the user chose a profile
    (FASTDDS_DEFAULT_PROFILES_FILE, FASTRTPS_DEFAULT_PROFILES_FILE), or where the RMW is not
    Fast DDS. ValueError where the variable names neither a profile of the suite nor a file."""
    env = os.environ
    choice = env.get("ROBOT_IMITATION_DDS_PROFILE", "").strip() or DDS_PROFILES[0]
    if choice.lower() in ("off", "none", "0", "false"):
        return None
    if env.get("FASTDDS_DEFAULT_PROFILES_FILE") or env.get("FASTRTPS_DEFAULT_PROFILES_FILE"):
        return None
    if not env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp").startswith("rmw_fastrtps"):
        return None
    if choice in DDS_PROFILES:
        try:
            return suite_dds_profile(choice)
        except OSError:  # no share folder
            return None
    path = Path(choice).resolve()
    if not path.is_file():
        raise ValueError(f"ROBOT_IMITATION_DDS_PROFILE={choice}: no such profile or file "
                         f"(choose {', '.join(DDS_PROFILES)}, off or a Fast DDS profile file)")
    return path


def suite_dds_profile(name: str) -> Path:
    """``config/fastdds/<name>.xml``, one of ``DDS_PROFILES``."""
    return config_dir() / "fastdds" / f"{name}.xml"


EGL_LIBRARIES = ("libEGL.so.1", "libEGL.so")


def default_mujoco_gl(load=None) -> str | None:
    """``MUJOCO_GL``'s default: ``egl`` where an EGL library loads (offscreen rendering with no
    display), else None: left unset. With ``MUJOCO_GL=egl`` and no EGL library, ``import
    mujoco`` itself fails, also where nothing is rendered (a training machine without GL
    libraries); unset, MuJoCo imports and only rendering fails, with its own message.
    ``load``: what loads a shared library (``ctypes.CDLL``)."""
    if load is None:
        import ctypes

        load = ctypes.CDLL
    for name in EGL_LIBRARIES:
        try:
            load(name)
        except OSError:
            continue
        return "egl"
    return None


class MujocoGLError(OSError):
    """``MUJOCO_GL`` names a GL platform MuJoCo cannot load (or no platform at all)."""


def import_mujoco():
    """``import mujoco``, where a ``MUJOCO_GL`` that cannot be used (``osmesa`` without its
    library, a misspelled value) is one line naming the value, not MuJoCo's traceback."""
    try:
        import mujoco
    except (AttributeError, ImportError, OSError, RuntimeError) as exc:
        gl = os.environ.get("MUJOCO_GL")
        if gl is None or isinstance(exc, ModuleNotFoundError) and exc.name == "mujoco":
            raise
        why = f"{type(exc).__name__}: {exc}" if isinstance(exc, AttributeError) else str(exc)
        raise MujocoGLError(f"MUJOCO_GL={gl}: MuJoCo cannot use this GL platform ({why}); "
                            "use MUJOCO_GL=egl (or osmesa or glfw, with its library "
                            "installed), or leave it unset") from None
    return mujoco


def set_default_mujoco_gl() -> None:
    """Set ``MUJOCO_GL`` to ``default_mujoco_gl()`` unless it is set (before MuJoCo is
    imported)."""
    if "MUJOCO_GL" not in os.environ and (gl := default_mujoco_gl()) is not None:
        os.environ["MUJOCO_GL"] = gl


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` runs (this one included; another user's counts as running): the
    owner of a temporary file or folder named after it, whose leftovers only a dead owner's
    may be cleaned up."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


class RunFolderError(ValueError):
    """An output folder a run may not write into (an earlier run's files, or one it may not
    clear); the message names the folder."""


def check_out(out, overwrite: bool = False, inputs=(),
              how: str = "(choose another out, or overwrite=True)") -> Path:
    """``out`` checked to take a new run, nothing changed: a folder that holds files (an
    earlier run's data would be trained on with this run's) is refused unless ``overwrite``,
    and with it, one that holds the current folder or one of ``inputs`` (it is cleared).
    ``RunFolderError`` naming the folder; ``how``: what to do instead, as the caller's
    options say it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if not overwrite:
        raise RunFolderError(f"{out} exists and is not empty: an earlier run's data would be "
                             f"trained on with this run's {how}")
    target, here = out.resolve(), Path.cwd().resolve()
    if target == here or target in here.parents:
        raise RunFolderError(f"{out} holds the current folder: not cleared (choose another "
                             "output folder)")
    for path in inputs:
        if target in Path(path).resolve().parents:
            raise RunFolderError(f"{out} holds the run's input {path}: not cleared (choose "
                                 "another output folder)")
    return out


def prepare_out(out, overwrite: bool = False, inputs=(),
                how: str = "(choose another out, or overwrite=True)") -> Path:
    """``out`` made ready for a new run (``check_out``): created, or emptied with
    ``overwrite``."""
    out = check_out(out, overwrite, inputs, how)
    if out.is_dir():
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out
