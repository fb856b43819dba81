//! Sizes as `docker run` takes them: a whole number of bytes, or a string with a unit
//! (`512m`, `1g`, `64k`, `100b`; powers of 1024, case-insensitive). Serialized back as
//! bytes, so two spellings of one size give one digest.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Size(pub u64);

impl Size {
    /// As the signed byte count runtimes take; sizes beyond `i64::MAX` are refused when
    /// parsed, so this never saturates in practice.
    pub fn signed(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    pub fn parse(text: &str) -> Result<Size, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        if digits.is_empty() {
            return Err(format!("'{text}' is not a size: expected bytes, or a number with a unit b, k, m or g (e.g. 512m)"));
        }
        let shift = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            other => return Err(format!("'{text}': unknown unit '{other}' (use b, k, m, g or t)")),
        };
        let number: u64 = digits.parse().map_err(|_| format!("'{text}' is too large a size"))?;
        let bytes = number.checked_mul(1u64 << shift).filter(|b| i64::try_from(*b).is_ok());
        bytes.map(Size).ok_or_else(|| format!("'{text}' is too large a size"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => match n.as_u64().filter(|b| i64::try_from(*b).is_ok()) {
                Some(bytes) => Ok(Size(bytes)),
                None => Err(D::Error::custom(format!("{n} is not a size: expected a whole number of bytes, 0 or more"))),
            },
            serde_json::Value::String(s) => Size::parse(&s).map_err(D::Error::custom),
            other => Err(D::Error::custom(format!("{other} is not a size: expected bytes or a string like \"512m\""))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_powers_of_1024() {
        assert_eq!(Size::parse("512m"), Ok(Size(512 << 20)));
        assert_eq!(Size::parse("1G"), Ok(Size(1 << 30)));
        assert_eq!(Size::parse("100"), Ok(Size(100)));
        assert_eq!(Size::parse("64kb"), Ok(Size(64 << 10)));
        assert!(Size::parse("m").is_err());
        assert!(Size::parse("-1").is_err());
        assert!(Size::parse("99999999999999999999g").is_err());
    }
}
