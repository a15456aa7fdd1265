#!/usr/bin/env bash
# Setup of every node (deploy/cluster.yaml's setup_commands; the rehearsal runs it too).
# Idempotent and cheap when all is in place: each step skips what is there already.
#
#   ACCORD_HOME   the package sources the file mounts put on the node (default ~/accord)
#   ACCORD_VENV   the Python environment Ray and accord run in (default ~/accord-venv)
set -euo pipefail
ACCORD_HOME=${ACCORD_HOME:-$HOME/accord}
ACCORD_VENV=${ACCORD_VENV:-$HOME/accord-venv}
UV=$HOME/.local/bin/uv

# accord with its pinned dependencies (ray[default] 2.60, torch, ale-py, ...) and the `accord`
# command. Skipped when the environment already satisfies pyproject.toml; a changed dependency
# installs again. uv brings the same Python 3.11 to every node (Ray needs one version across
# the cluster), whatever Python the image has.
if [ -x "$ACCORD_VENV/bin/python" ] &&
   "$ACCORD_VENV/bin/python" "$ACCORD_HOME/deploy/setup/installed.py" "$ACCORD_HOME/pyproject.toml"; then
  echo "accord: installed in $ACCORD_VENV"
else
  test -x "$UV" || (curl -LsSf https://astral.sh/uv/install.sh | sh)
  test -x "$ACCORD_VENV/bin/python" || "$UV" venv --seed --python 3.11 "$ACCORD_VENV"
  # Jobs submitted with --working-dir run the uploaded code on top of this install.
  "$UV" pip install --python "$ACCORD_VENV/bin/python" -e "$ACCORD_HOME"
fi

# Ray sources ~/.bashrc before each later command, so these apply to the start commands,
# `ray exec` and `ray attach` alike.
line="source $ACCORD_VENV/bin/activate"
grep -qxF "$line" ~/.bashrc 2>/dev/null || echo "$line" >> ~/.bashrc
grep -qxF 'export RAY_AUTH_MODE=token' ~/.bashrc || echo 'export RAY_AUTH_MODE=token' >> ~/.bashrc
# The token the file mounts copied: readable by this user only.
chmod 700 ~/.ray && chmod 600 ~/.ray/auth_token
