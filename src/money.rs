//! Money in exact units: [`Usd`] counts micro-dollars in an `i64`, so sums
//! and cap comparisons are exact (ten agents at $0.10 make $1.00, not
//! 0.9999999999999999), and [`Cost`] is what an agent cost: an amount, or
//! `unknown` (it printed nothing to read and its tokens could not be
//! priced), never a silent zero.
//!
//! On disk an amount stays a JSON or YAML number of dollars (`0.25`), as
//! before; it is rounded to the micro-dollar when read.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Sub};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An amount of US dollars, in micro-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(pub i64);

/// Micro-dollars in a dollar.
const MICROS: i64 = 1_000_000;

impl Usd {
    /// Zero dollars.
    pub const ZERO: Usd = Usd(0);

    /// An amount in whole micro-dollars.
    pub const fn from_micros(micros: i64) -> Usd {
        Usd(micros)
    }

    /// Dollars from a float (a CLI's report, a YAML number), rounded to
    /// the nearest micro-dollar; `None` for NaN or infinities.
    pub fn from_f64(dollars: f64) -> Option<Usd> {
        let micros = (dollars * MICROS as f64).round();
        (micros.is_finite() && micros.abs() < 9.0e18).then_some(Usd(micros as i64))
    }

    /// Micro-dollars from a float, rounded (token × price sums).
    pub fn from_micros_f64(micros: f64) -> Option<Usd> {
        Usd::from_f64(micros / MICROS as f64)
    }

    /// The amount in dollars, as a float (for JSON and hooks only: never
    /// add these up).
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / MICROS as f64
    }

    /// The amount in micro-dollars.
    pub fn micros(self) -> i64 {
        self.0
    }

    /// True for exactly zero.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `self - other`, at least zero.
    pub fn saturating_sub(self, other: Usd) -> Usd {
        Usd(self.0.saturating_sub(other.0).max(0))
    }

    /// `self × n`.
    pub fn times(self, n: u64) -> Usd {
        Usd(self.0.saturating_mul(i64::try_from(n).unwrap_or(i64::MAX)))
    }

    /// Parses `1.20`, `$0.000035`, `-0.5`, `3`: exact, decimal, rounded
    /// half up past six decimals.
    pub fn parse(text: &str) -> Result<Usd, String> {
        let bad = || format!("invalid amount `{text}` (expected dollars, e.g. `1.20`)");
        let t = text.trim();
        let (neg, t) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let t = t.strip_prefix('$').unwrap_or(t);
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        if (int.is_empty() && frac.is_empty())
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let whole: i64 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let mut micros: i64 = 0;
        for (k, b) in frac.bytes().take(6).enumerate() {
            micros += i64::from(b - b'0') * 10i64.pow(5 - k as u32);
        }
        if frac.as_bytes().get(6).is_some_and(|b| *b >= b'5') {
            micros += 1;
        }
        let total = whole
            .checked_mul(MICROS)
            .and_then(|w| w.checked_add(micros))
            .ok_or_else(bad)?;
        Ok(Usd(if neg { -total } else { total }))
    }
}

impl Usd {
    /// The amount as a plain decimal with at least `places` decimals and
    /// every digit it has (`decimal(4)`: `0.4200`, `0.000035`).
    pub fn decimal(self, places: usize) -> String {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / MICROS as u64;
        let frac = format!("{:06}", abs % MICROS as u64);
        let frac = frac.trim_end_matches('0');
        let places = places.min(6);
        format!("{sign}{whole}.{frac:0<places$}")
    }
}

impl fmt::Display for Usd {
    /// `$1.20`, `$0.0035`, `$0.000001`: at least cents, and every digit a
    /// sub-cent amount needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.decimal(2);
        match d.strip_prefix('-') {
            Some(rest) => write!(f, "-${rest}"),
            None => write!(f, "${d}"),
        }
    }
}

impl Add for Usd {
    type Output = Usd;
    fn add(self, o: Usd) -> Usd {
        Usd(self.0.saturating_add(o.0))
    }
}

impl AddAssign for Usd {
    fn add_assign(&mut self, o: Usd) {
        *self = *self + o;
    }
}

impl Sub for Usd {
    type Output = Usd;
    fn sub(self, o: Usd) -> Usd {
        Usd(self.0.saturating_sub(o.0))
    }
}

impl Sum for Usd {
    fn sum<I: Iterator<Item = Usd>>(iter: I) -> Usd {
        iter.fold(Usd::ZERO, Add::add)
    }
}

impl Serialize for Usd {
    /// A number of dollars (`0.25`): the shortest float that reads back
    /// as the same micro-dollars.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_f64())
    }
}

impl<'de> Deserialize<'de> for Usd {
    /// A number of dollars, or a string (`"1.20"`, `"$1.20"`).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Usd, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Usd::from_f64(n)
                .ok_or_else(|| serde::de::Error::custom(format!("invalid amount `{n}`"))),
            Raw::Text(t) => Usd::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// What an agent cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// This much: the CLI's report, or its tokens × the config's prices.
    Known(Usd),
    /// Nothing to go by: no report, and no tokens or no price for them.
    Unknown,
}

impl Cost {
    /// The amount, when known.
    pub fn known(self) -> Option<Usd> {
        match self {
            Cost::Known(u) => Some(u),
            Cost::Unknown => None,
        }
    }

    /// For JSON (hooks, `--json`): a number of dollars, or `"unknown"`.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            Cost::Known(u) => serde_json::json!(u.as_f64()),
            Cost::Unknown => serde_json::json!("unknown"),
        }
    }
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cost::Known(u) => u.fmt(f),
            Cost::Unknown => f.write_str("cost unknown"),
        }
    }
}

impl Serialize for Cost {
    /// A number of dollars, or the string `unknown`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cost::Known(u) => u.serialize(s),
            Cost::Unknown => s.serialize_str("unknown"),
        }
    }
}

impl<'de> Deserialize<'de> for Cost {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cost, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Usd::from_f64(n)
                .map(Cost::Known)
                .ok_or_else(|| serde::de::Error::custom(format!("invalid amount `{n}`"))),
            Raw::Text(t) if t == "unknown" => Ok(Cost::Unknown),
            Raw::Text(t) => Usd::parse(&t)
                .map(Cost::Known)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_dimes_make_a_dollar_exactly() {
        let dime = Usd::from_f64(0.10).unwrap();
        let sum: Usd = std::iter::repeat_n(dime, 10).sum();
        assert_eq!(sum, Usd::parse("1.00").unwrap());
        assert!(sum >= Usd::from_f64(1.0).unwrap());
        // The float sum the factory used to make falls short.
        let float: f64 = std::iter::repeat_n(0.10f64, 10).sum();
        assert!(float < 1.0);
    }

    #[test]
    fn parses_exact_decimals() {
        assert_eq!(Usd::parse("1.20"), Ok(Usd(1_200_000)));
        assert_eq!(Usd::parse("$0.000035"), Ok(Usd(35)));
        assert_eq!(Usd::parse("3"), Ok(Usd(3_000_000)));
        assert_eq!(Usd::parse(".5"), Ok(Usd(500_000)));
        assert_eq!(Usd::parse("-0.5"), Ok(Usd(-500_000)));
        assert_eq!(Usd::parse("0.0000005"), Ok(Usd(1)), "half up");
        assert_eq!(Usd::parse("0.0000004"), Ok(Usd(0)));
        for bad in ["", "$", "1.2.3", "abc", "1e3", "99999999999999999999"] {
            assert!(Usd::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn displays_cents_and_every_sub_cent_digit() {
        assert_eq!(Usd(1_200_000).to_string(), "$1.20");
        assert_eq!(Usd(0).to_string(), "$0.00");
        assert_eq!(Usd(3_500).to_string(), "$0.0035");
        assert_eq!(Usd(1).to_string(), "$0.000001");
        assert_eq!(Usd(-100_000).to_string(), "-$0.10");
        assert_eq!(Usd(12_345_678).to_string(), "$12.345678");
        assert_eq!(Cost::Unknown.to_string(), "cost unknown");
        assert_eq!(Usd(420_000).decimal(4), "0.4200");
        assert_eq!(Usd(35).decimal(4), "0.000035");
    }

    #[test]
    fn serializes_as_dollars_and_reads_unknown() {
        assert_eq!(serde_json::to_string(&Usd(250_000)).unwrap(), "0.25");
        assert_eq!(serde_json::to_string(&Usd(100_000)).unwrap(), "0.1");
        let c: Cost = serde_json::from_str("0.25").unwrap();
        assert_eq!(c, Cost::Known(Usd(250_000)));
        let c: Cost = serde_json::from_str("\"unknown\"").unwrap();
        assert_eq!(c, Cost::Unknown);
        assert_eq!(
            serde_json::to_string(&Cost::Unknown).unwrap(),
            "\"unknown\""
        );
        let u: Usd = serde_yaml::from_str("1").unwrap();
        assert_eq!(u, Usd(1_000_000));
        assert!(serde_json::from_str::<Cost>("\"lots\"").is_err());
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Usd(5).saturating_sub(Usd(9)), Usd::ZERO);
        assert_eq!(Usd(i64::MAX) + Usd(1), Usd(i64::MAX));
        assert_eq!(Usd(100_000).times(3), Usd(300_000));
        assert_eq!(Usd::from_f64(f64::NAN), None);
    }
}
