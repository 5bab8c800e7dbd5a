# Shared helpers of the scripts: timing, root, and installing what is missing.

step() {
    local name=$1; shift
    local t0=$SECONDS
    echo "==> $name: $*"
    "$@"
    echo "==> $name: done in $((SECONDS - t0)) s"
}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "installing packages needs root: run as root or install sudo" >&2; return 1
    fi
}

# Host packages the project needs and a new Debian 12 machine lacks. Idempotent.
ensure_host_packages() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}
