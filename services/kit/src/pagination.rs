//! Opaque page tokens for keyset pagination: the client gets back a token that encodes where
//! the last page ended, so pages stay stable while new rows arrive.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::Status;

use crate::grpc::invalid_field;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 200;

/// Validated page size: 0 means the default; above the maximum is an error.
pub fn page_size(requested: u32) -> Result<i64, Status> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE as i64),
        n if n > MAX_PAGE_SIZE => Err(invalid_field(
            "page_size",
            &format!("must be at most {MAX_PAGE_SIZE}"),
        )),
        n => Ok(n as i64),
    }
}

/// Encodes a keyset position (any serialisable value) as a page token.
pub fn encode<T: serde::Serialize>(position: &T) -> String {
    let json = serde_json::to_vec(position).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// Trims rows fetched with `limit + 1` to `limit` and returns the next page's token ("" on the
/// last page), made from the keyset position of the last row kept.
pub fn next_page<T, K: serde::Serialize>(
    rows: &mut Vec<T>,
    limit: i64,
    key: impl Fn(&T) -> K,
) -> String {
    if rows.len() as i64 > limit {
        rows.truncate(limit.max(0) as usize);
        rows.last().map(|r| encode(&key(r))).unwrap_or_default()
    } else {
        String::new()
    }
}

/// Decodes a page token; empty means the first page.
pub fn decode<T: serde::de::DeserializeOwned>(token: &str) -> Result<Option<T>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .map(Some)
        .ok_or_else(|| invalid_field("page_token", "not a token this service issued"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let token = encode(&("2026-11-23T10:00:00Z", 42));
        let back: Option<(String, i32)> = decode(&token).unwrap();
        assert_eq!(back, Some(("2026-11-23T10:00:00Z".to_owned(), 42)));
        assert_eq!(decode::<(String, i32)>("").unwrap(), None);
        assert!(decode::<(String, i32)>("!!!").is_err());
        assert!(page_size(201).is_err());
        assert_eq!(page_size(0).unwrap(), 50);
        let mut rows = vec![1, 2, 3];
        let token = next_page(&mut rows, 2, |r| *r);
        assert_eq!(rows, vec![1, 2]);
        assert_eq!(decode::<i32>(&token).unwrap(), Some(2));
        let mut last = vec![1, 2];
        assert_eq!(next_page(&mut last, 2, |r| *r), "");
    }
}
