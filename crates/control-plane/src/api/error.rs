//! The error policy of the HTTP API.
//!
//! Every failure a client can cause or observe maps to one `ApiError`: an HTTP
//! status, a stable code and a human message. Matchmaking and admin endpoints
//! answer `{"error": {code, message}}`; provisioning endpoints answer the seed's
//! `{success: false, error: {code, message, retryable}}`. Store failures are 503
//! and retryable; anything unexpected is 500 and logged, never a panic.

use std::marker::PhantomData;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use matchplane_contracts::{
    ErrorBody, ErrorCode, ErrorDetail, ProvisioningError, ProvisioningResponse,
};
use serde::de::DeserializeOwned;

use crate::store::StoreError;

/// Which envelope an error is written in.
pub trait Envelope: Send + Sync + 'static {
    fn render(status: StatusCode, code: ErrorCode, message: String) -> Response;
}

/// `{"error": {code, message}}`.
pub struct Plain;
/// `{success: false, error: {code, message, retryable}}`.
pub struct Provisioning;

impl Envelope for Plain {
    fn render(status: StatusCode, code: ErrorCode, message: String) -> Response {
        let body = ErrorBody {
            error: ErrorDetail { code, message },
        };
        (status, Json(body)).into_response()
    }
}

impl Envelope for Provisioning {
    fn render(status: StatusCode, code: ErrorCode, message: String) -> Response {
        let body = ProvisioningResponse {
            success: false,
            error: Some(ProvisioningError {
                code,
                message,
                retryable: code.retryable(),
            }),
            heartbeat_interval_ms: None,
        };
        (status, Json(body)).into_response()
    }
}

pub struct ApiError<E: Envelope = Plain> {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds) when set.
    retry_after: Option<u64>,
    envelope: PhantomData<E>,
}

impl<E: Envelope> std::fmt::Debug for ApiError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiError")
            .field("status", &self.status)
            .field("code", &self.code)
            .field("message", &self.message)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl<E: Envelope> ApiError<E> {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            envelope: PhantomData,
        }
    }

    /// 429 `RATE_LIMITED` with `Retry-After`: the client (an address or a player)
    /// sent more than its bucket allows.
    pub fn rate_limited(retry_after: matchplane_edge::ratelimit::RetryAfter) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many requests; retry after the time in Retry-After",
        );
        error.retry_after = Some(retry_after.header_seconds());
        error
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            message,
        )
    }
}

impl<E: Envelope> From<StoreError> for ApiError<E> {
    fn from(err: StoreError) -> Self {
        tracing::error!(error = %err, "store failure answered with 503");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StoreUnavailable,
            "the ticket store is unavailable; retry shortly",
        )
    }
}

impl<E: Envelope> IntoResponse for ApiError<E> {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = %self.code, message = %self.message, "request failed");
        }
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut response = E::render(self.status, self.code, self.message);
        if unauthorized {
            // RFC 6750: tell the client which scheme the endpoint wants.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// A path parameter whose rejection (e.g. invalid UTF-8 after percent-decoding)
/// is answered in the endpoint's envelope instead of axum's plain text.
pub struct ApiPath<T, E: Envelope = Plain>(pub T, PhantomData<E>);

impl<T, E: Envelope> ApiPath<T, E> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<S, T, E> axum::extract::FromRequestParts<S> for ApiPath<T, E>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
    E: Envelope,
{
    type Rejection = ApiError<E>;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value, PhantomData)),
            Err(rejection) => Err(ApiError::bad_request(
                ErrorCode::InvalidRequest,
                format!("invalid path: {}", rejection.body_text()),
            )),
        }
    }
}

/// A JSON body whose every rejection (content type, syntax, shape, size) is
/// answered in the endpoint's envelope instead of axum's plain text.
pub struct ApiJson<T, E: Envelope = Plain>(pub T, PhantomData<E>);

impl<T, E: Envelope> ApiJson<T, E> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<S, T, E> FromRequest<S> for ApiJson<T, E>
where
    S: Send + Sync,
    T: DeserializeOwned,
    E: Envelope,
{
    type Rejection = ApiError<E>;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value, PhantomData)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection<E: Envelope>(rejection: JsonRejection) -> ApiError<E> {
    let status = rejection.status();
    let detail = rejection.body_text();
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "expected Content-Type: application/json",
        ),
        JsonRejection::JsonSyntaxError(_) => ApiError::bad_request(ErrorCode::InvalidJson, detail),
        JsonRejection::JsonDataError(_) => ApiError::bad_request(ErrorCode::InvalidRequest, detail),
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            "request body exceeds the size limit",
        ),
        _ => ApiError::new(status, ErrorCode::InvalidRequest, detail),
    }
}
