//! The registry of event types: every type ngrok publishes (spec §7.2) and,
//! for the two traffic types, every selectable field with its type and whether
//! ngrok allows it in filters (spec §7.4).
//!
//! This table is the one place these facts live. Configuration validation,
//! `fields` projection, filter checking and the traffic generator all read it.

/// Whether a type is an audit log (a change to the account) or a traffic log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventClass {
    /// Create/update/delete of an account resource. No filters, no `fields`.
    Audit,
    /// A request or connection through an endpoint. Filters and `fields` allowed.
    Traffic,
}

/// The JSON type of a traffic field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// `true` / `false`.
    Bool,
    /// A string.
    String,
    /// An integer that fits 32 bits.
    Int32,
    /// An integer that fits 64 bits.
    Int64,
    /// An RFC 3339 timestamp string with nanoseconds.
    Timestamp,
    /// An object of header name to list of values.
    StringListMap,
    /// A list of objects of string to string.
    StringMapList,
}

impl FieldType {
    /// The name used in the ngrok docs.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Bool => "bool",
            FieldType::String => "string",
            FieldType::Int32 => "int32",
            FieldType::Int64 => "int64",
            FieldType::Timestamp => "timestamp",
            FieldType::StringListMap => "map<string, list<string>>",
            FieldType::StringMapList => "list<map<string, string>>",
        }
    }

    /// Whether a filter can select into the field's value (`headers["X"]`, `logs[0]`).
    pub fn is_container(self) -> bool {
        matches!(self, FieldType::StringListMap | FieldType::StringMapList)
    }
}

/// A selectable field of a traffic event type.
#[derive(Clone, Copy, Debug)]
pub struct FieldDef {
    /// Dotted path inside `object`, e.g. `conn.client_ip`.
    pub path: &'static str,
    /// Its JSON type.
    pub ty: FieldType,
    /// Whether ngrok lets filters use it (Sluice allows all unless
    /// `strict_ngrok_filters` is set).
    pub filterable: bool,
    /// What it holds.
    pub description: &'static str,
}

/// One event type.
#[derive(Clone, Copy, Debug)]
pub struct EventTypeDef {
    /// Full name with version, e.g. `http_request_complete.v0`.
    pub name: &'static str,
    /// Audit or traffic.
    pub class: EventClass,
    /// When it fires.
    pub description: &'static str,
    /// Traffic: the selectable fields. Audit: empty.
    pub fields: &'static [FieldDef],
    /// Audit: the keys of the resource carried in `object` (spec §7.3). Traffic: empty.
    pub object_keys: &'static [&'static str],
}

impl EventTypeDef {
    /// The field at exactly `path`, if any.
    pub fn field(&self, path: &str) -> Option<&'static FieldDef> {
        self.fields.iter().find(|f| f.path == path)
    }

    /// What the registry knows of a dotted path (`conn.server_port`) that a
    /// filter reads or `fields` keeps. Audit types know every path (their
    /// `object` is the resource, checked nowhere).
    pub fn lookup(&self, path: &str) -> PathLookup {
        if self.class == EventClass::Audit || path.is_empty() {
            return PathLookup::Parent;
        }
        if let Some(f) = self.field(path) {
            return PathLookup::Field(f);
        }
        let below = |f: &&FieldDef| {
            f.path.len() > path.len()
                && f.path.starts_with(path)
                && f.path.as_bytes()[path.len()] == b'.'
        };
        if self.fields.iter().any(|f| below(&f)) {
            return PathLookup::Parent;
        }
        if let Some(f) = self.fields.iter().find(|f| {
            f.ty.is_container()
                && path.len() > f.path.len()
                && path.starts_with(f.path)
                && path.as_bytes()[f.path.len()] == b'.'
        }) {
            return PathLookup::InContainer(f);
        }
        // Every known path and every parent of one, for the typo check.
        let known = self.fields.iter().flat_map(|f| {
            f.path
                .match_indices('.')
                .map(|(i, _)| &f.path[..i])
                .chain(std::iter::once(f.path))
        });
        PathLookup::Unknown {
            near: super::nearest_within(path, known, TYPO_EDITS),
        }
    }
}

/// A path this many edits or fewer from a known one is taken for a typo of
/// it and refused; a path farther from every known one is accepted as a field
/// the registry does not know yet (payloads gain fields without a version
/// change), with a warning.
pub const TYPO_EDITS: usize = 2;

/// The answer of [`EventTypeDef::lookup`].
#[derive(Clone, Copy, Debug)]
pub enum PathLookup {
    /// A field of the registry.
    Field(&'static FieldDef),
    /// A parent of fields (`conn`, `http.request`), or any path of an audit type.
    Parent,
    /// A path inside a map or list field (`http.request.headers.Accept`).
    InContainer(&'static FieldDef),
    /// A path the registry does not know; `near` is a known path at most
    /// [`TYPO_EDITS`] edits away, when there is one.
    Unknown {
        /// The known path it is probably a typo of.
        near: Option<&'static str>,
    },
}

impl PathLookup {
    /// The policy for a path the registry does not know, shared by filters
    /// and `fields`: a likely typo (within [`TYPO_EDITS`] of a known path) is
    /// an error naming the known path; any unknown path is an error under
    /// `strict`; otherwise it is accepted and read from what each event
    /// carries (`Ok(true)`: say so with [`super::unknown_paths_warning`]).
    /// `Ok(false)` for a known path.
    pub fn unknown_policy(
        self,
        def: &EventTypeDef,
        path: &str,
        strict: bool,
    ) -> Result<bool, String> {
        let PathLookup::Unknown { near } = self else {
            return Ok(false);
        };
        let shown = super::shown_path(path);
        match near {
            Some(n) => Err(format!(
                "unknown field `{shown}` of {} (did you mean `{n}`?)",
                def.name
            )),
            None if strict => Err(format!(
                "unknown field `{shown}` of {}: strict_ngrok_filters allows only the fields \
                 `sluice check --list-types` lists",
                def.name
            )),
            None => Ok(true),
        }
    }
}

macro_rules! f {
    ($path:literal, $ty:ident, F, $desc:literal) => {
        FieldDef {
            path: $path,
            ty: FieldType::$ty,
            filterable: true,
            description: $desc,
        }
    };
    ($path:literal, $ty:ident, $desc:literal) => {
        FieldDef {
            path: $path,
            ty: FieldType::$ty,
            filterable: false,
            description: $desc,
        }
    };
}

/// Fields of `http_request_complete.v0`.
pub static HTTP_REQUEST_COMPLETE_FIELDS: &[FieldDef] = &[
    f!(
        "backend.connection_reused",
        Bool,
        "whether the connection to the upstream service was reused"
    ),
    f!(
        "basic_auth.decision",
        String,
        "`allow` or `block` by the basic auth module"
    ),
    f!(
        "basic_auth.username",
        String,
        "the username of the basic auth credentials"
    ),
    f!(
        "circuit_breaker.decision",
        String,
        "`allow`, `block` or `allow_while_open` by the circuit breaker"
    ),
    f!(
        "compression.algorithm",
        String,
        "`gzip`, `deflate` or `none`"
    ),
    f!(
        "compression.bytes_saved",
        Int64,
        "bytes saved by compressing the response"
    ),
    f!("conn.client_ip", String, F, "source IP of the connection"),
    f!(
        "conn.server_ip",
        String,
        F,
        "IP address of the server that received the request"
    ),
    f!("conn.server_name", String, F, "hostname of the endpoint"),
    f!("conn.server_port", Int32, F, "port of the endpoint"),
    f!("conn.start_ts", Timestamp, "when the connection started"),
    f!(
        "http.request.body_length",
        Int64,
        "bytes in the request body"
    ),
    f!(
        "http.request.headers",
        StringListMap,
        "request headers; keys canonicalised, values lowercased"
    ),
    f!(
        "http.request.first_byte_ts",
        Timestamp,
        "when the first byte of the request arrived (null when none did)"
    ),
    f!(
        "http.request.last_byte_ts",
        Timestamp,
        "when the last byte of the request arrived (null when none did)"
    ),
    f!("http.request.method", String, "request method, lowercased"),
    f!("http.request.url.host", String, "host of the request URL"),
    f!("http.request.url.path", String, "path of the request URL"),
    f!(
        "http.request.url.query",
        String,
        "query string of the request URL"
    ),
    f!("http.request.url.raw", String, "the full request URL"),
    f!(
        "http.request.url.scheme",
        String,
        "scheme of the request URL"
    ),
    f!("http.request.user_agent", String, "the User-Agent header"),
    f!(
        "http.request.version",
        String,
        "HTTP version of the request, e.g. `HTTP/2.0`"
    ),
    f!(
        "http.response.body_length",
        Int64,
        "bytes in the response body"
    ),
    f!(
        "http.response.first_byte_ts",
        Timestamp,
        "when the first byte of the response was sent"
    ),
    f!("http.response.headers", StringListMap, "response headers"),
    f!(
        "http.response.last_byte_ts",
        Timestamp,
        "when the last byte of the response was sent"
    ),
    f!("http.response.status_code", Int32, "response status code"),
    f!(
        "ip_policy.decision",
        String,
        "`allow` or `block` by the IP policy module"
    ),
    f!(
        "ja4_fingerprint",
        String,
        "JA4 fingerprint of the TLS client hello"
    ),
    f!("oauth.app_client_id", String, "OAuth application client id"),
    f!(
        "oauth.decision",
        String,
        "`allow` or `block` by the OAuth module"
    ),
    f!("oauth.user.id", String, "id of the OAuth user"),
    f!("oauth.user.name", String, "name of the OAuth user"),
    f!("tls.cipher_suite", String, "negotiated TLS cipher suite"),
    f!(
        "tls.client_cert.serial_number",
        String,
        "serial number of the client certificate"
    ),
    f!(
        "tls.client_cert.subject.cn",
        String,
        "common name of the client certificate subject"
    ),
    f!("tls.version", String, "negotiated TLS version"),
    f!(
        "traffic_policy.logs",
        StringMapList,
        "entries written by the Traffic Policy `log` action"
    ),
    f!(
        "webhook_verification.decision",
        String,
        "`allow` or `block` by webhook verification"
    ),
];

/// Fields of `tcp_connection_closed.v0`.
pub static TCP_CONNECTION_CLOSED_FIELDS: &[FieldDef] = &[
    f!("conn.bytes_in", Int64, "bytes received from the client"),
    f!("conn.bytes_out", Int64, "bytes sent to the client"),
    f!("conn.client_ip", String, F, "source IP of the connection"),
    f!("conn.end_ts", Timestamp, "when the connection closed"),
    f!(
        "conn.server_ip",
        String,
        F,
        "IP address of the server that received the connection"
    ),
    f!("conn.server_name", String, F, "hostname of the endpoint"),
    f!("conn.server_port", Int32, F, "port of the endpoint"),
    f!("conn.start_ts", Timestamp, "when the connection started"),
    f!(
        "ip_policy.decision",
        String,
        "`allow` or `block` by the IP policy module"
    ),
    f!(
        "ja4_fingerprint",
        String,
        "JA4 fingerprint of the TLS client hello"
    ),
    f!(
        "traffic_policy.logs",
        StringMapList,
        "entries written by the Traffic Policy `log` action"
    ),
];

const API_KEY: &[&str] = &[
    "id",
    "uri",
    "description",
    "metadata",
    "created_at",
    "token",
    "owner_id",
];
const AGENT_SESSION: &[&str] = &[
    "session",
    "credential",
    "agent_ip",
    "ingress_server_ip",
    "region",
    "ingress_hostname",
    "user_agent",
    "metadata",
    "os",
    "arch",
    "transport",
    "started_at",
    "expires_at",
    "stopped_at",
    "deprecated",
    "error",
];
const CA: &[&str] = &[
    "id",
    "uri",
    "created_at",
    "description",
    "metadata",
    "ca_pem",
    "subject_common_name",
    "not_before",
    "not_after",
    "key_usages",
    "extended_key_usages",
];
const CREDENTIAL: &[&str] = &[
    "id",
    "uri",
    "created_at",
    "description",
    "metadata",
    "token",
    "acl",
    "owner_id",
];
const EVENT_DESTINATION: &[&str] = &[
    "id",
    "uri",
    "created_at",
    "description",
    "metadata",
    "format",
    "target",
];
const EVENT_SUBSCRIPTION: &[&str] = &[
    "id",
    "uri",
    "created_at",
    "description",
    "metadata",
    "sources",
    "destinations",
];
const IP_POLICY: &[&str] = &[
    "id",
    "uri",
    "created_at",
    "description",
    "metadata",
    "action",
];
const IP_POLICY_RULE: &[&str] = &[
    "id",
    "uri",
    "created_at",
    "description",
    "metadata",
    "cidr",
    "ip_policy",
    "action",
];
const IP_RESTRICTION: &[&str] = &[
    "id",
    "uri",
    "created_at",
    "description",
    "metadata",
    "enforced",
    "type",
    "ip_policies",
];
const RESERVED_ADDR: &[&str] = &[
    "id",
    "uri",
    "created_at",
    "description",
    "metadata",
    "addr",
    "region",
];
const DOMAIN: &[&str] = &[
    "id",
    "uri",
    "created_at",
    "description",
    "metadata",
    "domain",
    "region",
    "cname_target",
    "certificate",
    "certificate_management_policy",
    "certificate_management_status",
    "acme_challenge_cname_target",
    "resolves_to",
];
const SSH_CA: &[&str] = &[
    "id",
    "uri",
    "created_at",
    "description",
    "metadata",
    "public_key",
    "key_type",
];
const SSH_KEY: &[&str] = &[
    "id",
    "uri",
    "created_at",
    "description",
    "metadata",
    "public_key",
    "acl",
    "owner_id",
];
const SSH_HOST_CERT: &[&str] = &[
    "id",
    "uri",
    "created_at",
    "description",
    "metadata",
    "public_key",
    "key_type",
    "ssh_certificate_authority_id",
    "principals",
    "valid_after",
    "valid_until",
    "certificate",
];
const SSH_USER_CERT: &[&str] = &[
    "id",
    "uri",
    "created_at",
    "description",
    "metadata",
    "public_key",
    "key_type",
    "ssh_certificate_authority_id",
    "principals",
    "critical_options",
    "extensions",
    "valid_after",
    "valid_until",
    "certificate",
];
const SECRET: &[&str] = &[
    "id",
    "uri",
    "created_at",
    "updated_at",
    "name",
    "description",
    "metadata",
    "created_by",
    "last_updated_by",
    "vault",
    "vault_name",
];
const TLS_CERT: &[&str] = &[
    "id",
    "uri",
    "created_at",
    "description",
    "metadata",
    "certificate_pem",
    "subject_common_name",
    "subject_alternative_names",
    "issued_at",
    "not_before",
    "not_after",
    "key_usages",
    "extended_key_usages",
    "private_key_type",
    "issuer_common_name",
    "serial_number",
    "subject_organization",
    "subject_organizational_unit",
    "subject_locality",
    "subject_province",
    "subject_country",
];
/// A replay of dead letters (`POST /event_destinations/{id}/dead_letters/replay`).
const DEAD_LETTER_REPLAY: &[&str] = &[
    "id",
    "destination_id",
    "uri",
    "created_at",
    "records",
    "selection",
];
const VAULT: &[&str] = &[
    "id",
    "uri",
    "created_at",
    "updated_at",
    "name",
    "description",
    "metadata",
    "created_by",
    "last_updated_by",
];

macro_rules! audit {
    ($name:literal, $keys:ident, $desc:literal) => {
        EventTypeDef {
            name: $name,
            class: EventClass::Audit,
            description: $desc,
            fields: &[],
            object_keys: $keys,
        }
    };
}

/// Every event type, audit types first, in the order of the ngrok docs.
pub static EVENT_TYPES: &[EventTypeDef] = &[
    audit!("api_key_created.v0", API_KEY, "an API key was created"),
    audit!("api_key_deleted.v0", API_KEY, "an API key was deleted"),
    audit!("api_key_updated.v0", API_KEY, "an API key was updated"),
    audit!(
        "agent_session_start.v0",
        AGENT_SESSION,
        "an agent session started"
    ),
    audit!(
        "agent_session_stop.v0",
        AGENT_SESSION,
        "an agent session stopped"
    ),
    audit!(
        "certificate_authority_created.v0",
        CA,
        "a certificate authority was created"
    ),
    audit!(
        "certificate_authority_deleted.v0",
        CA,
        "a certificate authority was deleted"
    ),
    audit!(
        "certificate_authority_updated.v0",
        CA,
        "a certificate authority was updated"
    ),
    audit!(
        "tunnel_credential_created.v0",
        CREDENTIAL,
        "a tunnel credential (authtoken) was created"
    ),
    audit!(
        "tunnel_credential_deleted.v0",
        CREDENTIAL,
        "a tunnel credential (authtoken) was deleted"
    ),
    audit!(
        "tunnel_credential_updated.v0",
        CREDENTIAL,
        "a tunnel credential (authtoken) was updated"
    ),
    audit!(
        "event_destination_created.v0",
        EVENT_DESTINATION,
        "an event destination was created"
    ),
    audit!(
        "event_destination_deleted.v0",
        EVENT_DESTINATION,
        "an event destination was deleted"
    ),
    audit!(
        "event_destination_updated.v0",
        EVENT_DESTINATION,
        "an event destination was updated"
    ),
    // Sluice's own: not in the ngrok docs.
    audit!(
        "event_destination_dead_letters_replayed.v0",
        DEAD_LETTER_REPLAY,
        "dead letters of an event destination were sent again (Sluice)"
    ),
    audit!(
        "event_subscription_created.v0",
        EVENT_SUBSCRIPTION,
        "an event subscription was created"
    ),
    audit!(
        "event_subscription_deleted.v0",
        EVENT_SUBSCRIPTION,
        "an event subscription was deleted"
    ),
    audit!(
        "event_subscription_updated.v0",
        EVENT_SUBSCRIPTION,
        "an event subscription was updated"
    ),
    audit!(
        "ip_policy_created.v0",
        IP_POLICY,
        "an IP policy was created"
    ),
    audit!(
        "ip_policy_deleted.v0",
        IP_POLICY,
        "an IP policy was deleted"
    ),
    audit!(
        "ip_policy_updated.v0",
        IP_POLICY,
        "an IP policy was updated"
    ),
    audit!(
        "ip_policy_rule_created.v0",
        IP_POLICY_RULE,
        "an IP policy rule was created"
    ),
    audit!(
        "ip_policy_rule_deleted.v0",
        IP_POLICY_RULE,
        "an IP policy rule was deleted"
    ),
    audit!(
        "ip_policy_rule_updated.v0",
        IP_POLICY_RULE,
        "an IP policy rule was updated"
    ),
    audit!(
        "ip_restriction_created.v0",
        IP_RESTRICTION,
        "an IP restriction was created"
    ),
    audit!(
        "ip_restriction_deleted.v0",
        IP_RESTRICTION,
        "an IP restriction was deleted"
    ),
    audit!(
        "ip_restriction_updated.v0",
        IP_RESTRICTION,
        "an IP restriction was updated"
    ),
    audit!(
        "tcp_address_created.v0",
        RESERVED_ADDR,
        "a reserved TCP address was created"
    ),
    audit!(
        "tcp_address_deleted.v0",
        RESERVED_ADDR,
        "a reserved TCP address was deleted"
    ),
    audit!(
        "tcp_address_updated.v0",
        RESERVED_ADDR,
        "a reserved TCP address was updated"
    ),
    audit!("domain_created.v0", DOMAIN, "a reserved domain was created"),
    audit!("domain_deleted.v0", DOMAIN, "a reserved domain was deleted"),
    audit!("domain_updated.v0", DOMAIN, "a reserved domain was updated"),
    audit!(
        "ssh_certificate_authority_created.v0",
        SSH_CA,
        "an SSH certificate authority was created"
    ),
    audit!(
        "ssh_certificate_authority_deleted.v0",
        SSH_CA,
        "an SSH certificate authority was deleted"
    ),
    audit!(
        "ssh_certificate_authority_updated.v0",
        SSH_CA,
        "an SSH certificate authority was updated"
    ),
    audit!(
        "ssh_public_key_created.v0",
        SSH_KEY,
        "an SSH public key was created"
    ),
    audit!(
        "ssh_public_key_deleted.v0",
        SSH_KEY,
        "an SSH public key was deleted"
    ),
    audit!(
        "ssh_public_key_updated.v0",
        SSH_KEY,
        "an SSH public key was updated"
    ),
    audit!(
        "ssh_host_certificate_created.v0",
        SSH_HOST_CERT,
        "an SSH host certificate was created"
    ),
    audit!(
        "ssh_host_certificate_deleted.v0",
        SSH_HOST_CERT,
        "an SSH host certificate was deleted"
    ),
    audit!(
        "ssh_host_certificate_updated.v0",
        SSH_HOST_CERT,
        "an SSH host certificate was updated"
    ),
    audit!(
        "ssh_user_certificate_created.v0",
        SSH_USER_CERT,
        "an SSH user certificate was created"
    ),
    audit!(
        "ssh_user_certificate_deleted.v0",
        SSH_USER_CERT,
        "an SSH user certificate was deleted"
    ),
    audit!(
        "ssh_user_certificate_updated.v0",
        SSH_USER_CERT,
        "an SSH user certificate was updated"
    ),
    audit!("secret_created.v0", SECRET, "a secret was created"),
    audit!("secret_deleted.v0", SECRET, "a secret was deleted"),
    audit!("secret_updated.v0", SECRET, "a secret was updated"),
    audit!(
        "tls_certificate_created.v0",
        TLS_CERT,
        "a TLS certificate was created"
    ),
    audit!(
        "tls_certificate_deleted.v0",
        TLS_CERT,
        "a TLS certificate was deleted"
    ),
    audit!(
        "tls_certificate_updated.v0",
        TLS_CERT,
        "a TLS certificate was updated"
    ),
    audit!("vault_created.v0", VAULT, "a vault was created"),
    audit!("vault_deleted.v0", VAULT, "a vault was deleted"),
    audit!("vault_updated.v0", VAULT, "a vault was updated"),
    EventTypeDef {
        name: "http_request_complete.v0",
        class: EventClass::Traffic,
        description: "an HTTP request through an endpoint completed",
        fields: HTTP_REQUEST_COMPLETE_FIELDS,
        object_keys: &[],
    },
    EventTypeDef {
        name: "tcp_connection_closed.v0",
        class: EventClass::Traffic,
        description: "a TCP connection to an endpoint closed",
        fields: TCP_CONNECTION_CLOSED_FIELDS,
        object_keys: &[],
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_registry_holds_the_55_types_of_the_spec_and_sluice_s_own() {
        assert_eq!(EVENT_TYPES.len(), 56);
        let names: HashSet<_> = EVENT_TYPES.iter().map(|t| t.name).collect();
        assert_eq!(names.len(), 56, "duplicate names");
        assert!(names.contains("event_destination_dead_letters_replayed.v0"));
        assert!(EVENT_TYPES.iter().all(|t| t.name.ends_with(".v0")));
        let traffic: Vec<_> = EVENT_TYPES
            .iter()
            .filter(|t| t.class == EventClass::Traffic)
            .map(|t| t.name)
            .collect();
        assert_eq!(
            traffic,
            ["http_request_complete.v0", "tcp_connection_closed.v0"]
        );
    }

    #[test]
    fn only_the_conn_address_fields_are_filterable() {
        for t in EVENT_TYPES
            .iter()
            .filter(|t| t.class == EventClass::Traffic)
        {
            let filterable: Vec<_> = t
                .fields
                .iter()
                .filter(|f| f.filterable)
                .map(|f| f.path)
                .collect();
            assert_eq!(
                filterable,
                [
                    "conn.client_ip",
                    "conn.server_ip",
                    "conn.server_name",
                    "conn.server_port"
                ],
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn field_paths_are_unique_and_no_path_is_a_prefix_of_another() {
        for t in EVENT_TYPES {
            let paths: Vec<_> = t.fields.iter().map(|f| f.path).collect();
            for (i, a) in paths.iter().enumerate() {
                for (j, b) in paths.iter().enumerate() {
                    if i != j {
                        assert_ne!(a, b);
                        assert!(!b.starts_with(&format!("{a}.")), "{a} is a prefix of {b}");
                    }
                }
            }
        }
    }
}
