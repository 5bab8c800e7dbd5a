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

# The mirror URI of this machine's apt source for suite $1 (default bookworm; never
# hard-coded).
debian_uri() {
    local suite=${1:-bookworm} f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$suite" 'BEGIN{RS=""} {
               found = 0
               for (i = 1; i <= NF; i++) if ($i == "Suites:") { for (j = i + 1; j <= NF && $j !~ /:$/; j++) if ($j == suite) found = 1 }
               if (found) for (i = 1; i <= NF; i++) if ($i == "URIs:") { print $(i+1); exit } }' "$f"
    done | head -n1
    if [ -f /etc/apt/sources.list ]; then
        awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2; exit }' /etc/apt/sources.list
    fi
}

# QEMU 10 from bookworm-backports (re-adds unplugged vCPUs safely; matches the preinstalled
# qemu-utils), plus what the guest image build needs. Idempotent.
ensure_vm_packages() {
    local major=0
    if command -v qemu-system-x86_64 >/dev/null; then
        major=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p')
    fi
    if [ "${major:-0}" -lt 10 ]; then
        local list=/etc/apt/sources.list.d/wukong-backports.sources
        if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            local uri
            uri=$(debian_uri | head -n1)
            [ -n "$uri" ] || { echo "no Debian bookworm apt source found to derive backports from" >&2; return 1; }
            printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" \
                | as_root tee "$list" >/dev/null
        fi
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports qemu-system-x86 qemu-utils
    fi
    # ovmf: UEFI for `boot.firmware: uefi`; genisoimage: cloud-init seeds.
    ensure_host_packages busybox-static cpio kmod e2fsprogs xz-utils ovmf genisoimage
    # The guest image is built from package files: the lists must know the kernel.
    if ! apt-cache depends linux-image-amd64 2>/dev/null | grep -q 'Depends: linux-image-[0-9]'; then
        as_root apt-get update -qq
    fi
}

# What the stock Debian test guest's build needs (scripts/build-stock-guest.sh). Idempotent.
ensure_stock_guest_packages() {
    ensure_host_packages debootstrap dosfstools fdisk e2fsprogs xz-utils grub-efi-amd64-bin grub-pc-bin mtools
}
