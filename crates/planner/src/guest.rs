//! The commands that grow a partitioned disk's last partition inside the guest, as argv lists
//! (both backends run them through their guest agent; none goes through a shell).

/// One guest command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestCommand {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Standard input.
    pub stdin: Option<&'static [u8]>,
    /// Whether a non-zero exit fails the step.
    pub checked: bool,
}

/// The number of partition device `part` (`vdb1` → `1`, `nvme0n1p2` → `2`).
pub fn partition_number(part: &str) -> String {
    let digits: Vec<char> = part
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.into_iter().rev().collect()
}

/// Moves the end of partition `number` of `dev` to the end of the disk (for GPT, the backup
/// header first), then tells the kernel the new size of the (mounted) partition.
pub fn grow_partition(dev: &str, number: &str) -> Vec<GuestCommand> {
    let cmd = |argv: &[&str], stdin, checked| GuestCommand {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        stdin,
        checked,
    };
    vec![
        // Fails harmlessly on an MBR disk.
        cmd(&["sfdisk", "--relocate", "gpt-bak-std", dev], None, false),
        cmd(
            &[
                "sfdisk",
                "--no-reread",
                "--no-tell-kernel",
                "-q",
                "-N",
                number,
                dev,
            ],
            Some(b", +\n"),
            true,
        ),
        cmd(&["partx", "-u", "--nr", number, dev], None, true),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_commands() {
        assert_eq!(partition_number("vdb1"), "1");
        assert_eq!(partition_number("nvme0n1p12"), "12");
        let c = grow_partition("/dev/vdb", "1");
        assert_eq!(c.len(), 3);
        assert!(!c[0].checked && c[1].checked);
        assert_eq!(c[1].argv.last().map(String::as_str), Some("/dev/vdb"));
        assert_eq!(c[1].stdin, Some(&b", +\n"[..]));
    }
}
