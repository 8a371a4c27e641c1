//! API errors in the ngrok shape:
//! `{"error_code": "ERR_NGROK_…", "status_code": 400, "msg": "…", "details": {"operation_id": "op_…"}}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Every `ERR_NGROK_*` code this API answers, each with its HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    /// No Authorization header. (`ERR_NGROK_200`, 401)
    MissingAuthorization,
    /// The Authorization header is not `Bearer <API key>`. (`ERR_NGROK_201`, 401)
    BadAuthorization,
    /// The API key is malformed. (`ERR_NGROK_202`, 401)
    MalformedApiKey,
    /// The API key is not valid. (`ERR_NGROK_203`, 401)
    InvalidApiKey,
    /// An API key id (`ak_…`) was sent instead of the key. (`ERR_NGROK_208`, 401)
    ApiKeyIdSent,
    /// A body whose content type is not JSON. (`ERR_NGROK_210`, 400)
    UnsupportedContentType,
    /// A body on a method that takes none. (`ERR_NGROK_211`, 400)
    BodyNotAllowed,
    /// A body that is not a JSON object. (`ERR_NGROK_213`, 400)
    UnparsableBody,
    /// A field the resource does not have. (`ERR_NGROK_214`, 400)
    UnknownField,
    /// A field of the wrong type or out of range. (`ERR_NGROK_215`, 400)
    InvalidFieldValue,
    /// A body without a content type. (`ERR_NGROK_216`, 400)
    MissingContentType,
    /// An `Ngrok-Version` other than 2. (`ERR_NGROK_217`, 400)
    UnsupportedVersion,
    /// No `Ngrok-Version` header. (`ERR_NGROK_218`, 400)
    MissingVersion,
    /// A path segment that is not an id. (`ERR_NGROK_223`, 400)
    NotAnId,
    /// Too many requests (writes, test events, failed authentications). (`ERR_NGROK_226`, 429)
    RateLimited,
    /// An id with the wrong prefix. (`ERR_NGROK_227`, 400)
    WrongIdPrefix,
    /// A malformed query string. (`ERR_NGROK_230`, 400)
    MalformedQuery,
    /// A query parameter the endpoint does not take. (`ERR_NGROK_231`, 400)
    UnknownQueryParameter,
    /// A single-valued query parameter given twice. (`ERR_NGROK_232`, 400)
    RepeatedQueryParameter,
    /// `limit` outside 1 to 100. (`ERR_NGROK_233`, 400)
    LimitOutOfRange,
    /// A destination `format` other than json. (`ERR_NGROK_235`, 400)
    InvalidFormat,
    /// A target that is not one of the offered kinds. (`ERR_NGROK_236`, 400)
    InvalidTarget,
    /// An event type the registry does not have. (`ERR_NGROK_238`, 400)
    UnknownEventType,
    /// A list `filter` that does not compile. (`ERR_NGROK_250`, 400)
    InvalidListFilter,
    /// The resource changed while the request was applied. (`ERR_NGROK_409`, 409)
    Conflict,
    /// An ingest body over the limit. (`ERR_NGROK_413`, 413)
    PayloadTooLarge,
    /// What should not happen (storage failures). (`ERR_NGROK_500`, 500)
    Internal,
    /// A cluster node cut off from NATS: it neither serves configuration it
    /// cannot know is current nor takes events it cannot store.
    /// (`ERR_NGROK_503`, 503)
    Unavailable,
    /// A destination without a target. (`ERR_NGROK_5100`, 400)
    NoTarget,
    /// The account has its maximum number of destinations. (`ERR_NGROK_5102`, 400)
    DestinationLimit,
    /// No such event destination. (`ERR_NGROK_5103`, 404)
    DestinationNotFound,
    /// A role ARN that is not an IAM role ARN. (`ERR_NGROK_5104`, 400)
    InvalidRoleArn,
    /// An AWS target without `auth`. (`ERR_NGROK_5106`, 400)
    MissingAwsAuth,
    /// An AWS `auth` with neither role nor creds. (`ERR_NGROK_5107`, 400)
    EmptyAwsAuth,
    /// A PATCH that changes the target kind. (`ERR_NGROK_5108`, 400)
    TargetKindChanged,
    /// A DELETE of a destination a subscription still uses. (`ERR_NGROK_5112`, 400)
    DestinationInUse,
    /// More than one target member. (`ERR_NGROK_5115`, 400)
    SeveralTargets,
    /// Both role and creds. (`ERR_NGROK_5116`, 400)
    SeveralAuthTypes,
    /// An ARN of an unknown partition. (`ERR_NGROK_5118`, 400)
    ArnPartition,
    /// An ARN of the wrong service. (`ERR_NGROK_5119`, 400)
    ArnService,
    /// A malformed ARN. (`ERR_NGROK_5120`, 400)
    InvalidArn,
    /// No such event subscription. (`ERR_NGROK_5123`, 404)
    SubscriptionNotFound,
    /// No such source on the subscription. (`ERR_NGROK_5125`, 404)
    SourceNotFound,
    /// Too many destinations on one subscription. (`ERR_NGROK_5126`, 400)
    DestinationsPerSubscriptionLimit,
    /// A source type given twice. (`ERR_NGROK_5127`, 400)
    DuplicateSource,
    /// An ARN of another service than the target. (`ERR_NGROK_5129`, 400)
    ArnServiceMismatch,
    /// An ARN of another resource type than the target. (`ERR_NGROK_5130`, 400)
    ArnResourceTypeMismatch,
    /// The account has its maximum number of subscriptions. (`ERR_NGROK_5131`, 400)
    SubscriptionLimit,
    /// Datadog refused the test event. (`ERR_NGROK_5132`, 400)
    DatadogKeyRejected,
    /// A Datadog target without an API key. (`ERR_NGROK_5133`, 400)
    DatadogApiKeyMissing,
    /// A `ddsite` that is not a Datadog site. (`ERR_NGROK_5134`, 400)
    InvalidDatadogSite,
    /// An Azure DCR id missing or invalid. (`ERR_NGROK_5136`, 400)
    AzureDcrId,
    /// An Azure stream name missing or invalid. (`ERR_NGROK_5137`, 400)
    AzureStreamName,
    /// An Azure ingestion URI missing or invalid. (`ERR_NGROK_5138`, 400)
    AzureIngestionUri,
    /// Another Azure configuration problem (also a refused test event). (`ERR_NGROK_5139`, 400)
    AzureConfig,
    /// Other invalid destination fields (also a refused test event). (`ERR_NGROK_5140`, 400)
    InvalidDestination,
    /// `fields` on an audit source. (`ERR_NGROK_5401`, 400)
    AuditFields,
    /// A filter on an audit source. (`ERR_NGROK_5402`, 400)
    AuditFilter,
    /// Invalid `fields` paths. (`ERR_NGROK_5403`, 400)
    InvalidFields,
    /// A filter that does not compile or costs too much. (`ERR_NGROK_5404`, 400)
    InvalidFilter,
}

impl Code {
    /// The number after `ERR_NGROK_`.
    pub fn number(self) -> u32 {
        match self {
            Code::MissingAuthorization => 200,
            Code::BadAuthorization => 201,
            Code::MalformedApiKey => 202,
            Code::InvalidApiKey => 203,
            Code::ApiKeyIdSent => 208,
            Code::UnsupportedContentType => 210,
            Code::BodyNotAllowed => 211,
            Code::UnparsableBody => 213,
            Code::UnknownField => 214,
            Code::InvalidFieldValue => 215,
            Code::MissingContentType => 216,
            Code::UnsupportedVersion => 217,
            Code::MissingVersion => 218,
            Code::NotAnId => 223,
            Code::RateLimited => 226,
            Code::WrongIdPrefix => 227,
            Code::MalformedQuery => 230,
            Code::UnknownQueryParameter => 231,
            Code::RepeatedQueryParameter => 232,
            Code::LimitOutOfRange => 233,
            Code::InvalidFormat => 235,
            Code::InvalidTarget => 236,
            Code::UnknownEventType => 238,
            Code::InvalidListFilter => 250,
            Code::Conflict => 409,
            Code::PayloadTooLarge => 413,
            Code::Internal => 500,
            Code::Unavailable => 503,
            Code::NoTarget => 5100,
            Code::DestinationLimit => 5102,
            Code::DestinationNotFound => 5103,
            Code::InvalidRoleArn => 5104,
            Code::MissingAwsAuth => 5106,
            Code::EmptyAwsAuth => 5107,
            Code::TargetKindChanged => 5108,
            Code::DestinationInUse => 5112,
            Code::SeveralTargets => 5115,
            Code::SeveralAuthTypes => 5116,
            Code::ArnPartition => 5118,
            Code::ArnService => 5119,
            Code::InvalidArn => 5120,
            Code::SubscriptionNotFound => 5123,
            Code::SourceNotFound => 5125,
            Code::DestinationsPerSubscriptionLimit => 5126,
            Code::DuplicateSource => 5127,
            Code::ArnServiceMismatch => 5129,
            Code::ArnResourceTypeMismatch => 5130,
            Code::SubscriptionLimit => 5131,
            Code::DatadogKeyRejected => 5132,
            Code::DatadogApiKeyMissing => 5133,
            Code::InvalidDatadogSite => 5134,
            Code::AzureDcrId => 5136,
            Code::AzureStreamName => 5137,
            Code::AzureIngestionUri => 5138,
            Code::AzureConfig => 5139,
            Code::InvalidDestination => 5140,
            Code::AuditFields => 5401,
            Code::AuditFilter => 5402,
            Code::InvalidFields => 5403,
            Code::InvalidFilter => 5404,
        }
    }

    /// The HTTP status this code is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Code::MissingAuthorization
            | Code::BadAuthorization
            | Code::MalformedApiKey
            | Code::InvalidApiKey
            | Code::ApiKeyIdSent => StatusCode::UNAUTHORIZED,
            Code::UnsupportedContentType
            | Code::BodyNotAllowed
            | Code::UnparsableBody
            | Code::UnknownField
            | Code::InvalidFieldValue
            | Code::MissingContentType
            | Code::UnsupportedVersion
            | Code::MissingVersion
            | Code::NotAnId
            | Code::WrongIdPrefix
            | Code::MalformedQuery
            | Code::UnknownQueryParameter
            | Code::RepeatedQueryParameter
            | Code::LimitOutOfRange
            | Code::InvalidFormat
            | Code::InvalidTarget
            | Code::UnknownEventType
            | Code::InvalidListFilter
            | Code::NoTarget
            | Code::DestinationLimit
            | Code::InvalidRoleArn
            | Code::MissingAwsAuth
            | Code::EmptyAwsAuth
            | Code::TargetKindChanged
            | Code::DestinationInUse
            | Code::SeveralTargets
            | Code::SeveralAuthTypes
            | Code::ArnPartition
            | Code::ArnService
            | Code::InvalidArn
            | Code::DestinationsPerSubscriptionLimit
            | Code::DuplicateSource
            | Code::ArnServiceMismatch
            | Code::ArnResourceTypeMismatch
            | Code::SubscriptionLimit
            | Code::DatadogKeyRejected
            | Code::DatadogApiKeyMissing
            | Code::InvalidDatadogSite
            | Code::AzureDcrId
            | Code::AzureStreamName
            | Code::AzureIngestionUri
            | Code::AzureConfig
            | Code::InvalidDestination
            | Code::AuditFields
            | Code::AuditFilter
            | Code::InvalidFields
            | Code::InvalidFilter => StatusCode::BAD_REQUEST,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Conflict => StatusCode::CONFLICT,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DestinationNotFound | Code::SubscriptionNotFound | Code::SourceNotFound => {
                StatusCode::NOT_FOUND
            }
        }
    }

    /// `ERR_NGROK_<n>`.
    pub fn as_string(self) -> String {
        format!("ERR_NGROK_{}", self.number())
    }
}

/// An API error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Its code (absent for a plain 404 of an unknown path or a 405).
    pub code: Option<Code>,
    /// Message for humans.
    pub msg: String,
    /// Seconds to wait (429 / 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a code, answered with the code's status.
    pub fn new(code: Code, msg: impl Into<String>) -> ApiError {
        ApiError {
            status: code.status(),
            code: Some(code),
            msg: msg.into(),
            retry_after: None,
        }
    }

    /// 500, for what should not happen (storage failures).
    pub fn internal(msg: impl Into<String>) -> ApiError {
        ApiError::new(Code::Internal, msg)
    }

    /// The JSON body, with a new operation id.
    pub fn body(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "status_code": self.status.as_u16(),
            "msg": self.msg,
            "details": { "operation_id": crate::ids::new_id("op") },
        });
        if let Some(c) = self.code {
            v["error_code"] = serde_json::Value::String(c.as_string());
        }
        v
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code.map(Code::as_string).unwrap_or_default(),
            self.msg
        )
    }
}
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert("retry-after", v);
        }
        r
    }
}
