//! User ids and their reversible encoding into subject tokens and KV keys.
//!
//! A user id is the JWT `sub`: any UTF-8 string of 1..=256 bytes. It has to appear
//! inside NATS subjects (`P.room.user.<enc>`, `P.ctl.user.<enc>`) and KV keys, where
//! `.`, `*`, `>`, whitespace and most punctuation are not allowed. The scheme:
//!
//! * an id made only of `[A-Za-z0-9_-]` is used verbatim (`6` stays `6`), so the
//!   common case stays readable in logs and with the `nats` CLI;
//! * any other id becomes `=` followed by the unpadded base64url encoding of its
//!   UTF-8 bytes (`a@b.io` becomes `=YUBiLmlv`).
//!
//! A verbatim id can never contain `=`, so the leading `=` tells the two apart and
//! decoding is unambiguous. The output alphabet is `[A-Za-z0-9_=-]`, which is safe
//! both as a subject token and as a KV key, and is exactly the alphabet of room ids.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::fmt;

/// The longest user id accepted, in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;

/// Why a string is not a valid user id or encoded user id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    /// The id is empty.
    #[error("user id is empty")]
    Empty,
    /// The id is longer than [`MAX_USER_ID_BYTES`].
    #[error("user id is longer than {MAX_USER_ID_BYTES} bytes")]
    TooLong,
    /// The encoded form is not one this scheme produces.
    #[error("not a valid encoded user id: {0}")]
    BadEncoding(String),
}

/// A validated user id (the token's `sub`).
///
/// Serialized as the raw id string; deserializing validates it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl TryFrom<String> for UserId {
    type Error = UserIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<UserId> for String {
    fn from(u: UserId) -> Self {
        u.0
    }
}

fn is_plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

impl UserId {
    /// Validates a raw user id.
    pub fn new(id: impl Into<String>) -> Result<Self, UserIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(UserIdError::Empty);
        }
        if id.len() > MAX_USER_ID_BYTES {
            return Err(UserIdError::TooLong);
        }
        Ok(Self(id))
    }

    /// The raw id, as it appears in the token.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The encoded form, safe in a subject token and a KV key.
    ///
    /// ```
    /// use herald_protocol::UserId;
    /// assert_eq!(UserId::new("6").unwrap().encoded(), "6");
    /// assert_eq!(UserId::new("a@b.io").unwrap().encoded(), "=YUBiLmlv");
    /// ```
    pub fn encoded(&self) -> String {
        if self.0.bytes().all(is_plain_byte) {
            self.0.clone()
        } else {
            let mut out = String::with_capacity(1 + self.0.len() * 4 / 3 + 2);
            out.push('=');
            URL_SAFE_NO_PAD.encode_string(self.0.as_bytes(), &mut out);
            out
        }
    }

    /// Reverses [`UserId::encoded`].
    ///
    /// ```
    /// use herald_protocol::UserId;
    /// assert_eq!(UserId::decode("=YUBiLmlv").unwrap().as_str(), "a@b.io");
    /// ```
    pub fn decode(encoded: &str) -> Result<Self, UserIdError> {
        if let Some(b64) = encoded.strip_prefix('=') {
            let bytes = URL_SAFE_NO_PAD
                .decode(b64)
                .map_err(|_| UserIdError::BadEncoding(encoded.to_owned()))?;
            let id = String::from_utf8(bytes)
                .map_err(|_| UserIdError::BadEncoding(encoded.to_owned()))?;
            // Only ids that need escaping are escaped: anything else has a single
            // canonical form, and accepting two spellings would let one user hide
            // behind two room names.
            if !id.is_empty() && id.bytes().all(is_plain_byte) {
                return Err(UserIdError::BadEncoding(encoded.to_owned()));
            }
            Self::new(id)
        } else if !encoded.is_empty() && encoded.bytes().all(is_plain_byte) {
            Self::new(encoded)
        } else {
            Err(UserIdError::BadEncoding(encoded.to_owned()))
        }
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_ids_are_verbatim() {
        for id in ["6", "auth0_123", "a-b", "ABC"] {
            assert_eq!(UserId::new(id).unwrap().encoded(), id);
        }
    }

    #[test]
    fn other_ids_are_escaped() {
        let u = UserId::new("auth0|123").unwrap();
        let enc = u.encoded();
        assert!(enc.starts_with('='));
        assert_eq!(UserId::decode(&enc).unwrap(), u);
    }

    #[test]
    fn bad_ids_are_rejected() {
        assert_eq!(UserId::new(""), Err(UserIdError::Empty));
        assert_eq!(UserId::new("x".repeat(257)), Err(UserIdError::TooLong));
        assert!(UserId::decode("a.b").is_err());
        assert!(UserId::decode("=").is_err());
        assert!(UserId::decode("=!!").is_err());
        // "6" escaped is not canonical
        assert!(UserId::decode("=Ng").is_err());
    }

    proptest! {
        #[test]
        fn encoding_round_trips_and_is_subject_safe(s in "\\PC{1,80}") {
            prop_assume!(s.len() <= MAX_USER_ID_BYTES);
            let u = UserId::new(s.clone()).unwrap();
            let enc = u.encoded();
            prop_assert!(enc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'='));
            prop_assert_eq!(UserId::decode(&enc).unwrap(), u);
        }

        #[test]
        fn distinct_ids_have_distinct_encodings(a in "\\PC{1,20}", b in "\\PC{1,20}") {
            prop_assume!(a != b);
            prop_assert_ne!(UserId::new(a).unwrap().encoded(), UserId::new(b).unwrap().encoded());
        }

        #[test]
        fn decode_never_panics(s in "\\PC{0,64}") {
            let _ = UserId::decode(&s);
        }
    }
}
