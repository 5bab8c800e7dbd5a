#!/usr/bin/env bash
# Builds Wukong's default guest from Debian packages: a kernel (resolved through
# linux-image-amd64), and an initramfs with static busybox, qemu-guest-agent, e2fsprogs,
# sfdisk/partx/resizepart and the virtio/ext4 modules.
#
# Usage: build-guest.sh OUTDIR INIT_FILE HOTPLUG_FILE
# Writes OUTDIR/vmlinux, OUTDIR/initramfs.cpio.gz and OUTDIR/inputs (what it was built from).
# Skips the build when OUTDIR/inputs already records the same inputs.
# Needs: apt-get (with package lists), dpkg-deb, depmod, cpio, gzip, xz, ldd.
set -euo pipefail
out=$1 init=$2 hotplug=$3

kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
if [ -z "$kpkg" ]; then
    echo "cannot resolve linux-image-amd64 (run 'apt-get update' first)" >&2
    exit 1
fi
kver=${kpkg#linux-image-}
tools=(busybox-static qemu-guest-agent e2fsprogs fdisk util-linux)
libs=(libc6 libgcc-s1 libudev1 libnuma1 liburing2 libglib2.0-0 libpcre2-8-0 libext2fs2
      libcom-err2 libblkid1 libuuid1 libss2 libfdisk1 libsmartcols1 libmount1
      libselinux1 libtinfo6 libreadline8 libffi8 libcap-ng0 libaudit1 libsystemd0)

# The exact package files (name_version_arch.deb) are the build's inputs, with the scripts.
uris=$(cd /tmp && apt-get download --print-uris "$kpkg" "${tools[@]}" "${libs[@]}" 2>/dev/null) || {
    echo "apt-get cannot locate the guest packages (run 'apt-get update' first)" >&2
    exit 1
}
inputs=$( { echo "$uris" | awk '{ print $2 }' | sort; sha256sum "$0" "$init" "$hotplug" 2>/dev/null | awk '{ print $1 }'; } )
if [ -f "$out/inputs" ] && [ "$(cat "$out/inputs")" = "$inputs" ] \
    && [ -f "$out/vmlinux" ] && [ -f "$out/initramfs.cpio.gz" ]; then
    echo "guest image up to date in $out"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs" "$work/pkg" "$work/kernel" "$work/root"
(cd "$work/debs" && apt-get download -q -o APT::Sandbox::User=root "$kpkg" "${tools[@]}" "${libs[@]}" >/dev/null)
for deb in "$work"/debs/*.deb; do
    case $(basename "$deb") in
        linux-image-*) dpkg-deb -x "$deb" "$work/kernel" ;;
        *) dpkg-deb -x "$deb" "$work/pkg" ;;
    esac
done

# Kernel: the uncompressed vmlinux boots directly (PVH), twice as fast as the bzImage.
bz="$work/kernel/boot/vmlinuz-$kver"
offset=$(grep -abo $'\xfd7zXZ\x00' "$bz" | head -n1 | cut -d: -f1)
tail -c +$((offset + 1)) "$bz" | xz -dc 2>/dev/null > "$work/vmlinux" || true
[ -s "$work/vmlinux" ] || { echo "could not extract vmlinux from $bz" >&2; exit 1; }

root=$work/root
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,run,tmp,mnt,root,usr/bin,usr/sbin,usr/lib,var,lib/modules}
ln -s ../run "$root/var/run"
# The kernel asks /sbin/modprobe for modules it needs later (crypto for ext4, …).
ln -s ../bin/busybox "$root/sbin/modprobe"
cp "$work/pkg/bin/busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done

# Tools and the shared libraries they load (from the downloaded packages).
libdirs="$work/pkg/lib/x86_64-linux-gnu:$work/pkg/usr/lib/x86_64-linux-gnu"
add_binary() {
    local src=$1 dst=$2
    # The real tool replaces busybox's smaller applet of the same name.
    rm -f "$root/bin/$(basename "$dst")"
    cp "$src" "$root/$dst"
    LD_LIBRARY_PATH=$libdirs ldd "$src" | awk '/=> \// { print $3 } /^\t\/lib64/ { print $1 }' |
        while read -r lib; do
            local target=$root/lib/x86_64-linux-gnu/$(basename "$lib")
            case $lib in /lib64/*) target=$root$lib ;; esac
            mkdir -p "$(dirname "$target")"
            [ -e "$target" ] || cp -L "$lib" "$target"
        done
}
add_binary "$work/pkg/usr/sbin/qemu-ga" usr/sbin/qemu-ga
for t in mke2fs e2fsck resize2fs tune2fs dumpe2fs; do add_binary "$work/pkg/sbin/$t" "sbin/$t"; done
ln -sf mke2fs "$root/sbin/mkfs.ext4"
add_binary "$work/pkg/sbin/sfdisk" sbin/sfdisk
add_binary "$work/pkg/usr/bin/partx" usr/bin/partx
add_binary "$work/pkg/sbin/blkid" sbin/blkid
add_binary "$work/pkg/usr/bin/resizepart" usr/bin/resizepart
for l in ld-linux-x86-64.so.2; do
    [ -e "$root/lib64/$l" ] || { mkdir -p "$root/lib64"; cp -L "$work/pkg/lib/x86_64-linux-gnu/$l" "$root/lib64/$l"; }
done

# Modules: the closure of what the guest needs, with a modules.dep for busybox's modprobe.
depmod -b "$work/kernel" "$kver"
mods="virtio_pci virtio_blk virtio_net virtio_console virtio_mem virtio_balloon virtio_scsi sd_mod ext4 crc32c_generic crc32c-intel"
for m in $mods; do
    modprobe -d "$work/kernel" -S "$kver" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" { print $2 }'
done | sort -u | while read -r ko; do
    rel=${ko#"$work/kernel"}
    mkdir -p "$root$(dirname "$rel")"
    case $ko in
        *.xz) xz -dc "$ko" > "$root${rel%.xz}" ;;
        *) cp "$ko" "$root$rel" ;;
    esac
done
for f in modules.order modules.builtin modules.builtin.modinfo; do
    cp "$work/kernel/lib/modules/$kver/$f" "$root/lib/modules/$kver/$f"
done
depmod -b "$root" "$kver"

install -m 0755 "$init" "$root/init"
install -m 0755 "$hotplug" "$root/sbin/hotplug"
printf '#!/bin/sh\n# qemu-ga calls this for guest-shutdown\nsync\npoweroff -f\n' > "$root/sbin/shutdown"
chmod 0755 "$root/sbin/shutdown"
printf 'PRETTY_NAME="Wukong test guest (Debian packages)"\nNAME="wukong-guest"\nID=wukong-guest\nVERSION_ID="1"\n' > "$root/etc/os-release"
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"

mkdir -p "$out"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initramfs.cpio.gz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
mv "$work/vmlinux" "$out/vmlinux"
echo "$inputs" > "$out/inputs"
echo "built guest image: kernel $kver, initramfs $(du -h "$out/initramfs.cpio.gz" | cut -f1) in $out"
