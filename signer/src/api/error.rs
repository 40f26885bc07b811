//! JSON errors with stable codes, and a JSON extractor whose rejections use them.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

/// An API error: HTTP status, stable machine code, human message.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code clients can match on.
    pub code: &'static str,
    /// Human-readable message (never secret material).
    pub message: String,
    /// Seconds to wait, for 429.
    pub retry_after: Option<u64>,
}

/// The body of every error answer: `{"code": "...", "message": "..."}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// Stable machine-readable code (e.g. `forbidden`, `invalid_limit`); clients match
    /// on it.
    #[schema(value_type = String, example = "forbidden")]
    pub code: &'static str,
    /// Human-readable explanation (never secret material); may change between
    /// versions.
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    /// 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    /// 401.
    pub fn unauthenticated(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// 429.
    pub fn rate_limited(retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; slow down",
            )
        }
    }
    /// 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    /// 500; the detail is logged, not returned.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error serving request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the node log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            axum::Json(ErrorBody {
                code: self.code,
                message: self.message,
            }),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, id } => {
                ApiError::not_found(format!("{what} {id} not found"))
            }
            StoreError::Duplicate { what, detail } => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("{what} already exists ({detail})"),
            ),
            StoreError::InvalidTransition(m) => {
                ApiError::new(StatusCode::CONFLICT, "invalid_state_transition", m)
            }
            e if e.is_unavailable() => {
                tracing::warn!(error = %e, "database unavailable; request refused");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "the node's database is unavailable; retry later",
                )
            }
            other => ApiError::internal(other),
        }
    }
}

/// `axum::Json` whose rejections are [`ApiError`]s with stable codes. The body must
/// be a JSON object: every request body of this API is one, and serde would also
/// read a struct from an array of its fields (`[]` as `{}`), which the contract
/// does not allow (422 `invalid_request`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<ObjectOnly<T>>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<ObjectOnly<T>>::from_request(req, state).await {
            Ok(axum::Json(ObjectOnly(v))) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

/// `T` read from a JSON object only (never from an array of its fields).
#[derive(Debug)]
pub struct ObjectOnly<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);

        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
            type Value = T;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }

        d.deserialize_map(Object(std::marker::PhantomData))
            .map(ObjectOnly)
    }
}

fn json_rejection(rej: JsonRejection) -> ApiError {
    let status = rej.status();
    match rej {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(
            "malformed_json",
            format!("malformed JSON: {}", e.body_text()),
        ),
        JsonRejection::JsonDataError(e) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            e.body_text(),
        ),
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body is larger than this node accepts",
        ),
        other => ApiError::bad_request("bad_request", other.body_text()),
    }
}

/// `axum::extract::Path` whose rejections are [`ApiError`]s: 400 `invalid_id` (a
/// path segment that is not valid percent-encoded UTF-8, or does not parse).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    axum::extract::Path<T>: FromRequestParts<S, Rejection = PathRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(rej) => Err(ApiError::bad_request(
                "invalid_id",
                format!("malformed path parameter: {}", rej.body_text()),
            )),
        }
    }
}

/// `axum::extract::Query` whose rejections are [`ApiError`]s: 400 `invalid_query`
/// (a query string that does not decode, an unknown or repeated parameter, a value
/// of the wrong type).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    axum::extract::Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rej) => Err(ApiError::bad_request("invalid_query", rej.body_text())),
        }
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Integer fields of request bodies. JSON has one number type: `453.0` is the
/// integer 453 for JSON Schema (and so for the API's contract), but serde's integer
/// types refuse it. These accept any JSON number with no fractional part within the
/// field's range (anything else is 422 `invalid_request`, as before).
pub mod json_int {
    use serde::de::{Deserializer, Error, Visitor};

    struct Int;

    impl Visitor<'_> for Int {
        type Value = i64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer")
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("integer {v} is out of range")))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<i64, E> {
            // 2^63 is exactly representable; every f64 below it with no fraction
            // converts without loss.
            const LIMIT: f64 = 9_223_372_036_854_775_808.0;
            if v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
                #[allow(clippy::cast_possible_truncation)]
                Ok(v as i64)
            } else {
                Err(E::invalid_type(serde::de::Unexpected::Float(v), &self))
            }
        }
    }

    fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        d.deserialize_any(Int)
    }

    /// Wrapper to read an optional integer.
    struct Opt(i64);

    impl<'de> serde::Deserialize<'de> for Opt {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            int(d).map(Opt)
        }
    }

    /// An `i64`.
    pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        int(d)
    }

    /// An optional `i64` (`null` or absent: `None`; use with `#[serde(default)]`).
    pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let v: Option<Opt> = serde::Deserialize::deserialize(d)?;
        Ok(v.map(|o| o.0))
    }

    /// An optional `u32` (`null` or absent: `None`; use with `#[serde(default)]`).
    pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        opt_i64(d)?
            .map(|v| u32::try_from(v).map_err(|_| D::Error::custom(format!("{v} is out of range"))))
            .transpose()
    }

    #[cfg(test)]
    mod tests {
        use super::super::ObjectOnly;

        #[derive(Debug, serde::Deserialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct B {
            #[serde(deserialize_with = "super::i64")]
            a: i64,
            #[serde(default, deserialize_with = "super::opt_u32")]
            b: Option<u32>,
        }

        fn b(text: &str) -> Result<B, String> {
            serde_json::from_str(text).map_err(|e| e.to_string())
        }

        #[test]
        fn integral_json_numbers_are_integers_whatever_their_spelling() {
            assert_eq!(b(r#"{"a": 453}"#), Ok(B { a: 453, b: None }));
            assert_eq!(b(r#"{"a": 453.0, "b": 7.0}"#), Ok(B { a: 453, b: Some(7) }));
            assert_eq!(b(r#"{"a": -2e3, "b": null}"#), Ok(B { a: -2000, b: None }));
            assert!(b(r#"{"a": 1.5}"#).is_err());
            assert!(b(r#"{"a": 1e19}"#).is_err());
            assert!(b(r#"{"a": 9223372036854775808}"#).is_err());
            assert!(b(r#"{"a": "1"}"#).is_err());
            assert!(b(r#"{"a": 1, "b": -1}"#).is_err());
            assert!(b(r#"{"a": 1, "b": 4294967296}"#).is_err());
            assert!(b(r#"{"a": 1, "b": 0.5}"#).is_err());
            // Correctly rounded (serde_json's float_roundtrip): without it this
            // parsed as 2099999999999999.2 and was refused.
            assert_eq!(
                b(r#"{"a": 2099999999999999.0}"#),
                Ok(B {
                    a: 2_099_999_999_999_999,
                    b: None
                })
            );
        }

        #[test]
        fn a_body_is_read_from_a_json_object_only() {
            let obj = |text: &str| {
                serde_json::from_str::<ObjectOnly<B>>(text)
                    .map(|o| o.0)
                    .map_err(|e| e.to_string())
            };
            assert_eq!(obj(r#"{"a": 1, "b": 2}"#), Ok(B { a: 1, b: Some(2) }));
            // serde alone reads a struct from an array of its fields.
            assert!(serde_json::from_str::<B>("[1, 2]").is_ok());
            let e = obj("[1, 2]").expect_err("array");
            assert!(e.contains("expected a JSON object"), "{e}");
            assert!(obj("[]").is_err());
            assert!(obj("1").is_err());
            assert!(obj("null").is_err());
            let e = obj(r#"{"a": 1, "c": 2}"#).expect_err("unknown field");
            assert!(e.contains("unknown field"), "{e}");
        }
    }
}
