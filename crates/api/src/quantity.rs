//! Byte quantities as Kubernetes writes them (`512Mi`, `8Gi`, `20G`), parsed exactly.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern every quantity in the Wukong schema must match (mirrored in the CRD).
pub const QUANTITY_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";
/// The longest quantity text accepted (a bound the CRD's CEL cost estimate needs too).
pub const QUANTITY_MAX_LENGTH: usize = 32;

/// One binary unit of memory alignment: virtio-mem and KubeVirt both work in 2 MiB blocks.
pub const MEMORY_ALIGNMENT: u64 = 2 * MIB;
/// Disk sizes are whole 512-byte sectors.
pub const DISK_ALIGNMENT: u64 = 512;

/// 1 KiB.
pub const KIB: u64 = 1024;
/// 1 MiB.
pub const MIB: u64 = 1024 * KIB;
/// 1 GiB.
pub const GIB: u64 = 1024 * MIB;

/// Why a quantity string is not a whole number of bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The string is empty.
    #[error("is empty")]
    Empty,
    /// The string is not `<digits>[.<digits>][suffix]`.
    #[error("'{0}' is not a quantity (expected e.g. 512Mi, 8Gi, 20G)")]
    Malformed(String),
    /// The suffix is not one Wukong knows.
    #[error("'{0}' has an unknown unit suffix (use Ki, Mi, Gi, Ti, Pi, Ei or k, M, G, T, P, E)")]
    UnknownSuffix(String),
    /// The value has a fractional number of bytes.
    #[error("'{0}' is not a whole number of bytes")]
    FractionalBytes(String),
    /// The text is longer than a quantity can be.
    #[error("is longer than {0} characters")]
    TooLong(usize),
    /// The value does not fit in 64 bits.
    #[error("'{0}' is too large")]
    TooLarge(String),
}

/// A byte quantity exactly as the user wrote it, e.g. `8Gi`.
///
/// Stored as text (so a round trip never rewrites what the user wrote) and parsed on demand
/// with [`Quantity::bytes`]. Ordering and equality of *sizes* go through `bytes()`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Quantity(pub String);

impl JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": QUANTITY_PATTERN,
            "maxLength": QUANTITY_MAX_LENGTH,
            "description": "A byte quantity: digits with an optional fraction and unit (Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E), e.g. 512Mi or 20Gi.",
        })
    }
}

impl Quantity {
    /// The quantity for an exact number of bytes, written with the largest binary unit that
    /// divides it (`8Gi`, `768Mi`, `1536`).
    pub fn from_bytes(bytes: u64) -> Self {
        Quantity(format_bytes(bytes))
    }

    /// The number of bytes, or why the text is not a whole number of bytes.
    pub fn bytes(&self) -> Result<u64, QuantityError> {
        parse_bytes(&self.0)
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Quantity {
    fn from(s: &str) -> Self {
        Quantity(s.to_string())
    }
}

/// Parses `<digits>[.<digits>][suffix]` into an exact byte count.
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    if text.len() > QUANTITY_MAX_LENGTH {
        return Err(QuantityError::TooLong(QUANTITY_MAX_LENGTH));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let (multiplier, divisor): (u128, u128) = match suffix {
        "" => (1, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "m" => (1, 1000),
        _ if suffix.starts_with(|c: char| c.is_ascii_alphabetic()) && !number.is_empty() => {
            return Err(QuantityError::UnknownSuffix(text.to_string()));
        }
        _ => return Err(QuantityError::Malformed(text.to_string())),
    };
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() || (number.contains('.') && frac.is_empty()) || frac.contains('.') {
        return Err(QuantityError::Malformed(text.to_string()));
    }
    if whole.len() + frac.len() > 30 {
        return Err(QuantityError::TooLarge(text.to_string()));
    }
    let digits: u128 = format!("{whole}{frac}")
        .parse()
        .map_err(|_| QuantityError::Malformed(text.to_string()))?;
    let scale = 10u128.pow(frac.len() as u32) * divisor;
    let numerator = digits
        .checked_mul(multiplier)
        .ok_or_else(|| QuantityError::TooLarge(text.to_string()))?;
    if numerator % scale != 0 {
        return Err(QuantityError::FractionalBytes(text.to_string()));
    }
    u64::try_from(numerator / scale).map_err(|_| QuantityError::TooLarge(text.to_string()))
}

/// Writes a byte count with the largest binary unit that divides it exactly.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u32); 6] = [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ];
    if bytes == 0 {
        return "0".into();
    }
    for (unit, shift) in UNITS {
        if bytes.trailing_zeros() >= shift {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A human reading of a byte count, rounded to one decimal (`1.5 GiB`): for tables, not for
/// round trips.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_decimal_and_fractional_units() {
        assert_eq!(parse_bytes("512Mi"), Ok(512 * MIB));
        assert_eq!(parse_bytes("8Gi"), Ok(8 * GIB));
        assert_eq!(parse_bytes("1.5Gi"), Ok(1536 * MIB));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("20"), Ok(20));
        assert_eq!(parse_bytes("2000m"), Ok(2));
        assert_eq!(
            parse_bytes("16Ei"),
            Err(QuantityError::TooLarge("16Ei".into()))
        );
    }

    #[test]
    fn rejects_what_is_not_a_whole_byte_count() {
        assert!(matches!(
            parse_bytes("8Gx"),
            Err(QuantityError::UnknownSuffix(_))
        ));
        assert!(matches!(
            parse_bytes("-1Gi"),
            Err(QuantityError::Malformed(_))
        ));
        assert!(matches!(
            parse_bytes("0.5"),
            Err(QuantityError::FractionalBytes(_))
        ));
        assert!(matches!(
            parse_bytes("1.1Ki"),
            Err(QuantityError::FractionalBytes(_))
        ));
        assert!(matches!(
            parse_bytes("1..2Gi"),
            Err(QuantityError::Malformed(_))
        ));
        assert!(matches!(
            parse_bytes("Gi"),
            Err(QuantityError::Malformed(_))
        ));
        assert!(matches!(
            parse_bytes("1.Gi"),
            Err(QuantityError::Malformed(_))
        ));
        assert_eq!(parse_bytes(""), Err(QuantityError::Empty));
    }

    #[test]
    fn formats_with_the_largest_exact_unit() {
        assert_eq!(format_bytes(8 * GIB), "8Gi");
        assert_eq!(format_bytes(768 * MIB), "768Mi");
        assert_eq!(format_bytes(1536), "1536");
        assert_eq!(format_bytes(3 * KIB), "3Ki");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_bytes(0), "0");
        for b in [1u64, 512, 4096, 3 * GIB + 2 * MIB, 1 << 40] {
            assert_eq!(parse_bytes(&format_bytes(b)), Ok(b));
        }
    }

    #[test]
    fn human_reading() {
        assert_eq!(human_bytes(1536 * MIB), "1.5 GiB");
        assert_eq!(human_bytes(512 * MIB), "512 MiB");
        assert_eq!(human_bytes(100), "100 B");
    }
}
