//! Serde helpers for Tradecloud's lenient wire format.

use serde::{Deserialize, Deserializer};

/// `null` or a missing field becomes `T::default()` (e.g. an empty list).
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A string-ish identifier that may arrive as a JSON string or number (`"10"` or `10`).
pub(crate) fn string_or_number<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        I(i64),
        U(u64),
        F(f64),
    }
    Ok(
        Option::<Raw>::deserialize(deserializer)?.map(|raw| match raw {
            Raw::S(s) => s,
            Raw::I(i) => i.to_string(),
            Raw::U(u) => u.to_string(),
            Raw::F(f) => f.to_string(),
        }),
    )
}

/// A value that may arrive as its JSON type or as text (`4` or `"4"`, `true` or `"true"`): tXML
/// has only text. The text is read with the type's `FromStr`.
pub(crate) fn native_or_text<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<T> {
        Native(T),
        Text(String),
    }
    match Option::<Raw<T>>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Raw::Native(v)) => Ok(Some(v)),
        Some(Raw::Text(s)) => s.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("{s:?} is not a {}", std::any::type_name::<T>()))
        }),
    }
}
