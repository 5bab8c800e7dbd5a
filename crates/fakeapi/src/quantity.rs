//! Kubernetes quantities as the test doubles read and write them (their own small parser,
//! so a mistake in the product's cannot hide behind it).

use serde_json::Value;

const BINARY: [(&str, u32); 6] = [
    ("Ki", 1),
    ("Mi", 2),
    ("Gi", 3),
    ("Ti", 4),
    ("Pi", 5),
    ("Ei", 6),
];
const DECIMAL: [(&str, u32); 6] = [("k", 1), ("M", 2), ("G", 3), ("T", 4), ("P", 5), ("E", 6)];

/// Bytes of a quantity (a JSON string or number); `None` when it is not one.
pub fn bytes(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let s = v.as_str()?.trim();
    let (number, factor) = BINARY
        .iter()
        .map(|(suffix, p)| (suffix, 1024f64.powi(*p as i32)))
        .chain(
            DECIMAL
                .iter()
                .map(|(suffix, p)| (suffix, 1000f64.powi(*p as i32))),
        )
        .find_map(|(suffix, f)| s.strip_suffix(*suffix).map(|n| (n, f)))
        .unwrap_or((s, 1.0));
    let n: f64 = number.parse().ok()?;
    (n >= 0.0).then(|| (n * factor).ceil() as u64)
}

/// `bytes` as a quantity string in the largest binary unit that divides it.
pub fn format(bytes: u64) -> String {
    for (suffix, p) in BINARY.iter().rev() {
        let unit = 1u64 << (10 * p);
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_and_writes_the_usual_forms() {
        assert_eq!(bytes(&json!("2Gi")), Some(2 << 30));
        assert_eq!(bytes(&json!("1.5Gi")), Some(3 << 29));
        assert_eq!(bytes(&json!("10G")), Some(10_000_000_000));
        assert_eq!(bytes(&json!(4096)), Some(4096));
        assert_eq!(bytes(&json!("lots")), None);
        assert_eq!(format(3 << 30), "3Gi");
        assert_eq!(format(1536 << 20), "1536Mi");
        assert_eq!(format(1000), "1000");
    }
}
