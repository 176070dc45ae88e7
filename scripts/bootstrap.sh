#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment. Idempotent: a stamp holding the hash
# of the requirement files, setup.py and the set-up scripts skips the work when nothing changed.
#   - ROS 2 sourced (rclpy importable): the venv sees the system packages and uses that rclpy.
#   - no ROS: rclpy, the RMW and the message packages come from the ROS 2 wheels on PyPI.
# The package is installed editable, and the venv made an ament prefix for it (ament_register.py:
# the package marker, share/robot_imitation linked to the checkout file by file, lib/robot_imitation/<exe>),
# so that `ros2 run`/`ros2 launch` find it with the venv in AMENT_PREFIX_PATH.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$here/.venv}"
py="${PYTHON:-python3}"
stamp="$venv/.robot_imitation-stamp"
want="$(cat "$here"/requirements/*.txt "$here/setup.py" "$here/scripts/bootstrap.sh" \
  "$here/scripts/ament_register.py" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if "$py" -c 'import rclpy' >/dev/null 2>&1; then
  echo "[bootstrap] rclpy found on this system (ROS 2 sourced): using it"
  [ -x "$venv/bin/python" ] || "$py" -m venv --system-site-packages "$venv"
  ros_reqs=()
else
  echo "[bootstrap] no rclpy on this system: installing the ROS 2 wheels from PyPI"
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  ros_reqs=(-r "$here/requirements/ros.txt")
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
base=("$here/requirements/base.txt")
if [ ${#ros_reqs[@]} -eq 0 ]; then
  # ROS's compiled message modules were built against the system's numpy: keep that one (a
  # module built for numpy 1.x does not load under numpy 2.x) instead of the pinned version.
  sys_numpy="$("$venv/bin/python" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)"
  if [ -n "$sys_numpy" ]; then
    echo "[bootstrap] keeping the system's numpy $sys_numpy"
    grep -v '^numpy==' "$here/requirements/base.txt" > "$venv/base-without-numpy.txt"
    echo "numpy==$sys_numpy" > "$venv/numpy-constraint.txt"
    base=("$venv/base-without-numpy.txt" -c "$venv/numpy-constraint.txt")
  fi
fi
"$venv/bin/python" -m pip install --quiet "${ros_reqs[@]}" \
  -r "${base[@]}" -r "$here/requirements/test.txt"
"$venv/bin/python" -m pip install --quiet --no-deps -e "$here"
"$venv/bin/python" "$here/scripts/ament_register.py" "$venv"
echo "$want" > "$stamp"
echo "[bootstrap] environment ready in $venv"
