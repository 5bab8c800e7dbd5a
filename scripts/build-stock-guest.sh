#!/usr/bin/env bash
# Builds the stock Debian 12 test guest: debootstrap (minbase) with systemd, udev,
# qemu-guest-agent, cloud-init, openssh-server and locales (en_US.UTF-8 generated, as cloud-init's
# default locale), the current kernel installed in the chroot
# from bookworm-security, and a disk laid out like Debian's cloud images (GPT: p14 BIOS boot
# and p15 EFI at the front, p1 root ext4 last). The EFI partition makes it bootable by UEFI
# alone: a standalone GRUB at the removable-media path /EFI/BOOT/BOOTX64.EFI (a fresh
# variable store has no boot entries) whose embedded grub.cfg boots the kernel and initrd
# beside it. It boots by BIOS too: GRUB's boot sector in the MBR and its core image in p14,
# written by hand as grub-bios-setup would (no device needed). Nothing onlines hot-added CPUs or memory: no udev rules, no memhp_default_state.
# Built without loop devices (sfdisk on a file, mke2fs -d, mkfs.vfat -C, mtools, dd). Needs
# root (debootstrap, chroot), debootstrap, dosfstools, mtools, fdisk, e2fsprogs, qemu-utils,
# grub-efi-amd64-bin (grub-mkstandalone), grub-pc-bin (grub-mkimage's i386-pc modules).
#
# Usage: build-stock-guest.sh OUTDIR
# Writes OUTDIR/vmlinux, OUTDIR/initrd.img, OUTDIR/disk.qcow2, OUTDIR/cmdline and
# OUTDIR/inputs. Skips the build when OUTDIR/inputs records the same inputs.
set -euo pipefail
out=$1
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

packages=systemd-sysv,udev,qemu-guest-agent,e2fsprogs,xfsprogs,lvm2,cloud-guest-utils,util-linux,fdisk,iproute2,procps,initramfs-tools
# Installed by apt in the chroot (debootstrap's --include does not resolve their dependencies).
chroot_packages="cloud-init openssh-server locales"
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[ -n "$kpkg" ] || { echo "cannot resolve linux-image-amd64 (run 'apt-get update' first)" >&2; exit 1; }
kver=${kpkg#linux-image-}
kdeb=$(apt-cache policy "$kpkg" | awk '/Candidate:/ { print $2; exit }')
inputs=$(printf '%s\n' "$kpkg $kdeb" "$packages $chroot_packages" "$(sha256sum "$0" | awk '{ print $1 }')")
if [ -f "$out/inputs" ] && [ "$(cat "$out/inputs")" = "$inputs" ] \
    && [ -f "$out/vmlinux" ] && [ -f "$out/initrd.img" ] && [ -f "$out/disk.qcow2" ]; then
    echo "stock guest up to date in $out"
    exit 0
fi

uri=$(debian_uri | head -n1)
[ -n "$uri" ] || { echo "no Debian bookworm apt source configured" >&2; exit 1; }
security=$(debian_uri bookworm-security | head -n1)
[ -n "$security" ] || security=${uri%/debian}/debian-security

work=$(mktemp -d /var/tmp/wukong-stock.XXXXXX)
root=$work/root
cleanup() {
    for m in dev/pts dev sys proc; do
        mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m"
    done
    rm -rf "$work"
}
trap cleanup EXIT

t0=$SECONDS
debootstrap --variant=minbase --include="$packages" bookworm "$root" "$uri" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
echo "debootstrap: $((SECONDS - t0)) s"

cat >"$root/etc/apt/sources.list" <<EOF
deb $uri bookworm main
deb $uri bookworm-updates main
deb $security bookworm-security main
EOF
mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
t1=$SECONDS
chroot "$root" env DEBIAN_FRONTEND=noninteractive sh -c \
    "apt-get update -qq && apt-get install -y -qq --no-install-recommends $kpkg $chroot_packages >/dev/null && apt-get clean \
     && echo 'en_US.UTF-8 UTF-8' >/etc/locale.gen && locale-gen >/dev/null" \
    >"$work/kernel.log" 2>&1 || { tail -n 30 "$work/kernel.log" >&2; exit 1; }
for m in dev/pts dev sys proc; do umount "$root/$m"; done
rm -rf "$root"/var/lib/apt/lists/*
echo "kernel $kpkg: $((SECONDS - t1)) s"

# A guest as its image would come: a hostname, the root filesystem by label, its locale.
echo stock >"$root/etc/hostname"
printf 'LABEL=root / ext4 defaults 0 1\n' >"$root/etc/fstab"
echo 'LANG=en_US.UTF-8' >"$root/etc/default/locale"  # the locale generated above, in use
: >"$root/etc/machine-id"

mkdir -p "$out"
cp "$root/boot/initrd.img-$kver" "$work/initrd.img"
bz="$root/boot/vmlinuz-$kver"
offset=$(grep -abo $'\xfd7zXZ\x00' "$bz" | head -n1 | cut -d: -f1)
tail -c +$((offset + 1)) "$bz" | xz -dc 2>/dev/null >"$work/vmlinux" || true
[ -s "$work/vmlinux" ] || { echo "could not extract vmlinux from $bz" >&2; exit 1; }
cp "$bz" "$work/vmlinuz"
rm -rf "$root/boot"/*

# UEFI: GRUB with its configuration inside, finding the kernel on the EFI partition itself.
cat >"$work/grub.cfg" <<'GRUB'
insmod part_gpt
insmod fat
set timeout=0
search --no-floppy --file --set=root /vmlinuz
linux /vmlinuz root=LABEL=root ro console=ttyS0
initrd /initrd.img
boot
GRUB
grub-mkstandalone -O x86_64-efi -o "$work/BOOTX64.EFI" "boot/grub/grub.cfg=$work/grub.cfg"

# The cloud-image layout: p14 (BIOS boot) and p15 (EFI) first, p1 (root) last.
disk_mib=2048 root_start=262144
truncate -s "${disk_mib}M" "$work/disk.raw"
sfdisk -q "$work/disk.raw" <<EOF
label: gpt
disk.raw14 : start=2048, size=6144, type=21686148-6449-6E6F-744E-656564454649
disk.raw15 : start=8192, size=253952, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
disk.raw1 : start=$root_start, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
EOF
root_sectors=$(sfdisk -l -o Device,Sectors "$work/disk.raw" | awk '$1 ~ /raw1$/ { print $2 }')
mkfs.vfat -n EFI -C "$work/esp.img" $((253952 / 2)) >/dev/null
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$work/esp.img" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$work/esp.img" "$work/vmlinuz" ::/vmlinuz
mcopy -i "$work/esp.img" "$work/initrd.img" ::/initrd.img
dd if="$work/esp.img" of="$work/disk.raw" bs=512 seek=8192 conv=notrunc,sparse status=none
mke2fs -q -t ext4 -L root -d "$root" "$work/root.img" $((root_sectors / 2))k
dd if="$work/root.img" of="$work/disk.raw" bs=1M oflag=seek_bytes seek=$((root_start * 512)) conv=notrunc,sparse status=none
# BIOS: what grub-bios-setup does for a GPT disk, done on the file. GRUB's boot sector goes in
# the protective MBR's code area (its partition table kept) pointing at p14, which holds the
# core image; the core image's first sector lists where the rest of it is. Its embedded
# configuration boots the same kernel and initrd from the EFI partition.
cat >"$work/grub-bios.cfg" <<'GRUB'
search --no-floppy --file --set=root /vmlinuz
linux /vmlinuz root=LABEL=root ro console=ttyS0
initrd /initrd.img
boot
GRUB
grub-mkimage -O i386-pc -o "$work/core.img" -p /boot/grub -c "$work/grub-bios.cfg" \
    biosdisk part_gpt fat search search_fs_file linux boot
core_sectors=$(( ($(stat -c %s "$work/core.img") + 511) / 512 ))
[ "$core_sectors" -le 6144 ] || { echo "GRUB's core image ($core_sectors sectors) does not fit p14" >&2; exit 1; }
# Writes $1 as $2 little-endian bytes at byte $3 of file $4.
put_le() {
    local i bytes=""
    for ((i = 0; i < $2; i++)); do bytes+=$(printf '\\x%02x' $((($1 >> (8 * i)) & 255))); done
    printf "$bytes" | dd of="$4" bs=1 seek="$3" conv=notrunc status=none
}
put_le 2049 8 $((0x1f4)) "$work/core.img"               # the rest starts after the first sector
put_le $((core_sectors - 1)) 2 $((0x1fc)) "$work/core.img" # and is this many sectors long
dd if="$work/core.img" of="$work/disk.raw" bs=512 seek=2048 conv=notrunc status=none
dd if=/usr/lib/grub/i386-pc/boot.img of="$work/disk.raw" bs=440 count=1 conv=notrunc status=none
put_le 2048 8 $((0x5c)) "$work/disk.raw"                # the core image's first sector
qemu-img convert -O qcow2 "$work/disk.raw" "$work/disk.qcow2"

mv "$work/vmlinux" "$work/initrd.img" "$work/disk.qcow2" "$out/"
echo "root=LABEL=root ro console=ttyS0" >"$out/cmdline"
echo "$inputs" >"$out/inputs"
echo "stock guest built in $out in $((SECONDS - t0)) s ($kpkg, ${disk_mib} MiB disk)"
