# Sourced by scripts/test and scripts/demo: make sure .venv exists and has
# the project installed (editable, with its test extras), then set $VENV_PYTHON.
#
# pip runs only when .venv is new or pyproject.toml changed since the last
# install. The stamp file .venv/.shardbus-install-stamp keeps a hash of
# pyproject.toml and the interpreter version. Set PYTHON to choose the interpreter that
# creates .venv (default python3, which must be 3.11 or newer).

ensure_venv() {
    local root=$1
    local venv="$root/.venv"
    local python=${PYTHON:-python3}

    if ! command -v "$python" >/dev/null 2>&1; then
        echo "error: $python was not found on PATH; install Python 3.11 or newer, or set PYTHON" >&2
        return 1
    fi
    if [ ! -x "$venv/bin/python" ]; then
        if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "error: $python is Python $("$python" -c 'import platform; print(platform.python_version())'), but shardbus needs 3.11 or newer; set PYTHON to a newer interpreter" >&2
            return 1
        fi
        echo "creating $venv with $python" >&2
        if ! "$python" -m venv "$venv"; then
            rm -rf "$venv"
            echo "error: '$python -m venv' failed; on Debian install the venv module with: apt-get install python3-venv" >&2
            return 1
        fi
    fi

    local stamp="$venv/.shardbus-install-stamp"
    local wanted
    wanted="$( (cat "$root/pyproject.toml"; "$venv/bin/python" --version) | sha256sum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
        echo "installing shardbus and its test dependencies into $venv (pip install -e '.[test]')" >&2
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --progress-bar off \
            -e "$root[test]"
        echo "$wanted" > "$stamp"
    fi
    VENV_PYTHON="$venv/bin/python"
}
