//! Human-readable byte sizes: `4K`, `2M`, `1G`, `512MiB`, `1073741824`.

use std::fmt;

/// Parses a size: a decimal number of bytes with an optional binary unit suffix
/// (`K`, `M`, `G`, `T`, optionally followed by `iB` or `B`; case-insensitive). Units are powers
/// of 1024: `1K` is 1024 bytes. Surrounding whitespace is ignored; a size of 0 is accepted.
///
/// # Errors
///
/// A message for people when there is no number, the unit is unknown, or the size overflows
/// `u64`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!("{text:?} is not a size: expected a number such as 512M, 1G or 4096"));
    }
    let number: u64 = digits.parse().map_err(|_| format!("{text:?} is too large"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("{text:?} has an unknown unit {unit:?}: use K, M, G or T")),
    };
    number.checked_mul(1u64 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

/// Displays a byte count in the largest binary unit that divides it exactly (`2M`, `1536K`),
/// or as plain bytes; [`parse_size`] reads the text back to the same number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
        for (shift, unit) in UNITS {
            let scale = 1u64 << shift;
            if self.0 >= scale && self.0.is_multiple_of(scale) {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A byte count for people: the exact unit when there is one (`2M`, `1000T`), else the nearest
/// binary unit with the exact bytes beside it (`23.1G (24826871808 bytes)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
        // An exact unit reads well only with few digits (`1536M`, not `24244992K`).
        let exact = Size(self.0).to_string();
        let digits = exact.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len();
        if self.0 < 1024 || (digits <= 4 && exact.ends_with(|c: char| c.is_ascii_alphabetic())) {
            return f.write_str(&exact);
        }
        let (shift, unit) = UNITS.into_iter().find(|(shift, _)| self.0 >= 1u64 << shift).unwrap_or((10, "K"));
        write!(f, "{:.1}{unit} ({} bytes)", self.0 as f64 / (1u64 << shift) as f64, self.0)
    }
}

/// Rounds `value` up to a multiple of `align` (a power of two, checked in debug builds only),
/// or `None` on overflow.
pub fn round_up(value: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    value.checked_add(align - 1).map(|v| v & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bytes_show_units_and_exact_counts() {
        assert_eq!(Bytes(2 << 20).to_string(), "2M");
        assert_eq!(Bytes(1_099_511_627_776_000).to_string(), "1000T");
        assert_eq!(Bytes(24_826_871_808).to_string(), "23.1G (24826871808 bytes)");
        assert_eq!(Bytes(1000).to_string(), "1000");
        assert_eq!(Bytes(0).to_string(), "0");
    }

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_size("").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("16777216T").is_err());
    }

    #[test]
    fn displays_exact_units() {
        assert_eq!(Size(1 << 30).to_string(), "1G");
        assert_eq!(Size(3 << 19).to_string(), "1536K");
        assert_eq!(Size(1000).to_string(), "1000");
    }

    proptest! {
        #[test]
        fn display_round_trips(n in 0u64..(1 << 50)) {
            prop_assert_eq!(parse_size(&Size(n).to_string()), Ok(n));
        }

        #[test]
        fn round_up_is_aligned_and_minimal(v in 0u64..(1 << 60), shift in 12u32..31) {
            let align = 1u64 << shift;
            let r = round_up(v, align).unwrap();
            prop_assert_eq!(r % align, 0);
            prop_assert!(r >= v && r - v < align);
        }
    }
}
