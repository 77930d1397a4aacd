//! Resource quantities (`500m`, `1.5Gi`, `2e3`): parsed exactly into nano-units so that requests,
//! limits and capacities compare and add without rounding surprises.

use std::cmp::Ordering;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantityError {
    #[error(
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )]
    Syntax,
    #[error("quantity is too large")]
    Overflow,
}

/// An exact quantity, in billionths of the base unit (cores, bytes, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity {
    nanos: i128,
}

impl Quantity {
    pub const ZERO: Quantity = Quantity { nanos: 0 };

    pub fn from_units(units: i64) -> Quantity {
        Quantity {
            nanos: units as i128 * 1_000_000_000,
        }
    }

    pub fn from_milli(milli: i64) -> Quantity {
        Quantity {
            nanos: milli as i128 * 1_000_000,
        }
    }

    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        let s = s.trim();
        let (negative, body) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let num_end = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (number, suffix) = body.split_at(num_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(QuantityError::Syntax);
        }
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        let digits = format!("{int_part}{frac_part}");
        let mantissa: i128 = digits.trim_start_matches('0').parse().or_else(|_| {
            if digits.chars().all(|c| c == '0') {
                Ok(0)
            } else {
                Err(QuantityError::Overflow)
            }
        })?;
        let (pow2, pow10): (u32, i32) = match suffix {
            "" => (0, 0),
            "n" => (0, -9),
            "u" => (0, -6),
            "m" => (0, -3),
            "k" => (0, 3),
            "M" => (0, 6),
            "G" => (0, 9),
            "T" => (0, 12),
            "P" => (0, 15),
            "E" => (0, 18),
            "Ki" => (10, 0),
            "Mi" => (20, 0),
            "Gi" => (30, 0),
            "Ti" => (40, 0),
            "Pi" => (50, 0),
            "Ei" => (60, 0),
            exp if exp.starts_with(['e', 'E']) => {
                let e: i32 = exp[1..].parse().map_err(|_| QuantityError::Syntax)?;
                (0, e)
            }
            _ => return Err(QuantityError::Syntax),
        };
        let scale = 9 + pow10 - frac_part.len() as i32;
        let mut nanos = mantissa
            .checked_mul(1i128 << pow2)
            .ok_or(QuantityError::Overflow)?;
        if scale >= 0 {
            let factor = 10i128
                .checked_pow(scale as u32)
                .ok_or(QuantityError::Overflow)?;
            nanos = nanos.checked_mul(factor).ok_or(QuantityError::Overflow)?;
        } else {
            // Finer than a nano-unit: round up, as Kubernetes does.
            let divisor = 10i128
                .checked_pow((-scale) as u32)
                .ok_or(QuantityError::Overflow)?;
            nanos = (nanos + divisor - 1) / divisor;
        }
        if nanos > i64::MAX as i128 * 1_000_000_000 {
            return Err(QuantityError::Overflow);
        }
        Ok(Quantity {
            nanos: if negative { -nanos } else { nanos },
        })
    }

    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    /// In thousandths, rounded up: CPU millicores. Saturates at the limits of i64.
    pub fn milli(&self) -> i64 {
        saturate(div_ceil(self.nanos, 1_000_000))
    }

    /// In whole units, rounded up: bytes, pods, GPUs.
    pub fn value(&self) -> i64 {
        saturate(div_ceil(self.nanos, 1_000_000_000))
    }

    pub fn checked_add(self, other: Quantity) -> Option<Quantity> {
        self.nanos
            .checked_add(other.nanos)
            .map(|nanos| Quantity { nanos })
    }

    pub fn saturating_sub(self, other: Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_sub(other.nanos),
        }
    }

    pub fn cmp_value(&self, other: &Quantity) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

fn saturate(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

fn div_ceil(a: i128, b: i128) -> i128 {
    if a >= 0 { (a + b - 1) / b } else { a / b }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_suffix() {
        let cases = [
            ("1", 1_000, 1),
            ("500m", 500, 1),
            ("0.5", 500, 1),
            ("1.5", 1_500, 2),
            ("100Mi", 104_857_600_000, 104_857_600),
            ("1Gi", 1_073_741_824_000, 1_073_741_824),
            ("1G", 1_000_000_000_000, 1_000_000_000),
            ("2k", 2_000_000, 2_000),
            ("1e3", 1_000_000, 1_000),
            ("1E", i64::MAX, 1_000_000_000_000_000_000),
            ("250n", 1, 1),
            ("+3", 3_000, 3),
            ("0", 0, 0),
            ("000.000", 0, 0),
        ];
        for (s, milli, value) in cases {
            let q = Quantity::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!((q.milli(), q.value()), (milli, value), "{s}");
        }
        assert!(Quantity::parse("-1").unwrap().is_negative());
        assert!(Quantity::parse("1Gi").unwrap() > Quantity::parse("1G").unwrap());
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "abc", "1.2.3", "1Xi", "m", ".", "1e", "12 m"] {
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Quantity::parse("99999999999999999999E"),
            Err(QuantityError::Overflow)
        );
    }
}
