# Shared by scripts/test and scripts/demo: make sure uv and this repo's tooling are installed.
# Needs only Python 3.11+, pip and git; everything else comes from PyPI.

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Python keeps its bytecode caches. Where PYTHONDONTWRITEBYTECODE is set (container images often
# set it), each of the many Python processes the suite and the demo start compiles Prefect again:
# `import prefect` takes 2.3 s instead of 1.1 s, a generated suite 27% more CPU (bench/README.md).
unset PYTHONDONTWRITEBYTECODE

ensure_uv() {
    # Use the machine's Python; never download an interpreter.
    export UV_PYTHON_DOWNLOADS=never
    if uv --version >/dev/null 2>&1; then
        return
    fi
    echo "Installing uv with pip..." >&2
    python3 -m pip install --quiet uv 2>/dev/null \
        || python3 -m pip install --quiet --user uv 2>/dev/null \
        || python3 -m pip install --quiet --user --break-system-packages uv
    # pip may put it where PATH does not look yet (a fresh --user base, an un-rehashed pyenv).
    local dir
    for dir in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
               "$(python3 -m site --user-base)/bin"; do
        if [ -x "$dir/uv" ]; then
            export PATH="$dir:$PATH"
            break
        fi
    done
    uv --version >/dev/null 2>&1 || { echo "uv could not be installed with pip" >&2; exit 1; }
}

ensure_tooling() {
    ensure_uv
    (cd "$repo_root" && uv sync --frozen --quiet)
}

ensure_chromium() {
    # The approval page is tested in a real headless Chromium: Debian's package, driven by
    # Playwright (which cannot download its own browsers here). Skipped tests say so if missing.
    if command -v chromium >/dev/null 2>&1; then
        return
    fi
    apt_install chromium "the browser test skips"
}

ensure_postgresql() {
    # The end-to-end tests run a Prefect server on a real PostgreSQL: Debian's package, whose
    # binaries the suite runs itself (a throwaway cluster on a free loopback port, removed at the
    # end). Skipped tests say so if it is missing.
    if command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
        return
    fi
    apt_install postgresql "the PostgreSQL-backed tests skip"
}

apt_install() {
    # apt_install PACKAGE WHAT_SKIPS: install one of Debian's packages as root, or through
    # password-less sudo (e.g. GitHub's runners); otherwise say which tests skip without it.
    local package="$1" skips="$2" sudo=""
    if [ "$(id -u)" != 0 ] && sudo -n true 2>/dev/null; then
        sudo="sudo -n"
    fi
    if { [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; } && command -v apt-get >/dev/null 2>&1; then
        echo "Installing Debian's $package for the tests that need it..." >&2
        ($sudo apt-get update -qq \
            && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package") \
            >/dev/null 2>&1 || echo "$package could not be installed; $skips" >&2
    else
        echo "$package is not installed (run as root, or apt-get install $package); $skips" >&2
    fi
}
