# Sourced by scripts/setup.sh and scripts/setup.d/*.sh: one way to install Python packages.
#
# py_install PYTHON ARGS... installs pip-style ARGS (requirements, -r FILE, -e .) into the venv of
# PYTHON. With $COOPML_UV (the pinned uv that setup.sh puts in the coopml venv) it runs
# `uv pip install --compile-bytecode`: parallel downloads, unpacking and byte-compiling, 5-10x
# pip's time (docs/foundation.md, "Setup"). Without uv, or if uv fails (say, a machine that reaches
# only a local package mirror configured for pip), it falls back to pip, whose own configuration
# (find-links, indexes, constraints) then applies. torch is never installed this way: uv does not
# look in the local wheel folder pip is configured with, and would pull a CUDA build.
py_install() {
  local py=$1; shift
  if [ -n "${COOPML_UV:-}" ] && [ -x "$COOPML_UV" ]; then
    if "$COOPML_UV" pip install -q --compile-bytecode --python "$py" "$@"; then
      return 0
    fi
    echo "[setup] uv failed; installing $* with pip instead" >&2
  fi
  pip_install "$py" "$@"
}

# pip_install PYTHON ARGS...: quiet pip into PYTHON's venv. pip here warns about every configured
# local index folder that lacks a package; the filter keeps real messages, and pip's status.
pip_install() {
  local py=$1; shift
  "$py" -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
  return "${PIPESTATUS[0]}"
}

# make_venv PYTHON DIR: a fresh venv (with pip, for py_install's fallback) at DIR, replacing one
# that is there. `uv venv --seed` takes under a second where `python -m venv` takes 3-4 s.
make_venv() {
  local py=$1 dir=$2
  if [ -n "${COOPML_UV:-}" ] && [ -x "$COOPML_UV" ] && "$COOPML_UV" venv -q --seed --clear --python "$py" "$dir"; then
    return 0
  fi
  "$py" -m venv --clear "$dir"
}
