//! The bounded JSON codec of the services' control frames (transactions, votes'
//! companions, presignature pool): size-checked both ways, unknown fields refused by
//! each message type's `deny_unknown_fields`.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest accepted JSON frame payload (a PSBT of up to 1 MiB in base64, plus fields).
pub const MAX_JSON_PAYLOAD: usize = 1536 * 1024;

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Over [`MAX_JSON_PAYLOAD`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_JSON_PAYLOAD}")]
    TooLarge(usize),
    /// Not valid JSON of the expected shape.
    #[error("frame does not decode: {0}")]
    Malformed(String),
}

/// Encodes a message.
pub fn encode<T: Serialize>(m: &T) -> Result<Vec<u8>, WireError> {
    let v = serde_json::to_vec(m).map_err(|e| WireError::Malformed(e.to_string()))?;
    if v.len() > MAX_JSON_PAYLOAD {
        return Err(WireError::TooLarge(v.len()));
    }
    Ok(v)
}

/// Decodes a message (size-bounded).
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, WireError> {
    if b.len() > MAX_JSON_PAYLOAD {
        return Err(WireError::TooLarge(b.len()));
    }
    serde_json::from_slice(b).map_err(|e| WireError::Malformed(e.to_string()))
}
