//! WireGuard keys as plans carry them: base64, as `wg` prints them; the
//! private key is never shown.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A WireGuard public key, base64 as `wg` prints it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WgKey(pub [u8; 32]);

/// A WireGuard private key: base64 in the plan (it travels to gateways in
/// it), never shown: `Debug` and `Display` print `<redacted>`, and
/// [`Plan::redacted`] blanks it before a plan is shown to anyone.
#[derive(Clone, PartialEq, Eq)]
pub struct WgSecret(pub [u8; 32]);

fn decode_key(s: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|_| "not base64 (wg genkey / wg pubkey print the expected form)".to_string())?;
    <[u8; 32]>::try_from(b.as_slice()).map_err(|_| format!("a WireGuard key is 32 bytes, this one is {}", b.len()))
}

fn encode_key(k: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(k)
}

impl FromStr for WgKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        decode_key(s).map(WgKey)
    }
}

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_key(&self.0))
    }
}

impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgKey({self})")
    }
}

impl fmt::Debug for WgSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl WgSecret {
    /// The key shown where a plan is displayed.
    pub const REDACTED: WgSecret = WgSecret([0; 32]);
    pub fn public_key(&self) -> WgKey {
        let secret = boringtun::x25519::StaticSecret::from(self.0);
        WgKey(*boringtun::x25519::PublicKey::from(&secret).as_bytes())
    }
}

impl Serialize for WgKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WgKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e| serde::de::Error::custom(format!("public key: {e}")))
    }
}

impl Serialize for WgSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if *self == WgSecret::REDACTED {
            return s.serialize_str("<redacted>");
        }
        s.serialize_str(&encode_key(&self.0))
    }
}

impl<'de> Deserialize<'de> for WgSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // Never echo the value: it is a secret even when malformed.
        decode_key(&s).map(WgSecret).map_err(|e| serde::de::Error::custom(format!("private key: {e}")))
    }
}
