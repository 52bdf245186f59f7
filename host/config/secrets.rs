//! Which settings are secrets, and URLs with their passwords hidden: the one
//! rule every report and log masks by.

/// What, in a setting's or a librdkafka property's name, marks its value as a
/// secret: `sasl.password`, `ssl.key.password`, `ssl.key.pem`, `sasl.jaas.config`
/// (which holds a password), `admin.token`… Over-masking costs a `***` in a
/// report; under-masking prints a credential.
const SECRET_MARKERS: [&str; 10] =
    ["password", "passwd", "secret", "token", "psk", "credential", "jaas", "ssl.key", ".pem", "oauthbearer.config"];

/// Whether the value of the setting or Kafka property `key` is a secret, never
/// to be printed or logged. The one list `config check` and the Kafka
/// transport's logs both mask by.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_MARKERS.iter().any(|marker| key.contains(marker))
}

/// A URL with its password replaced by `***`, for logs and reports (the AMQP,
/// PostgreSQL and any other URL alike).
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => "<unparseable url>".into(),
    }
}
