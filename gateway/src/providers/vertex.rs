//! Google Vertex AI: Gemini's `generateContent` bodies (translated by [`Gemini`]) sent to a
//! project's and region's publisher model URLs, authenticated by OAuth access tokens obtained
//! for a service account with a JWT bearer grant (RFC 7523) signed RS256 by its private key.
//!
//! A token is kept until [`REFRESH_MARGIN`] before it expires; then the next request renews it
//! while the others wait for that one renewal (one grant at a time, never one per request).

use crate::providers::gemini::Gemini;
use crate::providers::http;
use crate::providers::redact::Redactor;
use crate::providers::secret::{self, SecretError};
use crate::upstream::{
    ErrorClass, Provider, SendFuture, UpstreamError, UpstreamRequest, UpstreamResponse,
};
use ::http::header::{AUTHORIZATION, CONTENT_TYPE};
use ::http::{HeaderValue, Uri};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use llmgw_engine::input::Endpoint;
use llmgw_engine::model;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long before its expiry an access token is renewed.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// The OAuth scope asked for: every Google Cloud API the service account may call.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The `grant_type` of a JWT bearer grant (RFC 7523).
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// How long a signed assertion is valid (Google accepts at most an hour).
const ASSERTION_SECS: u64 = 3600;

/// A token's lifetime when the token endpoint does not say (`expires_in`).
const DEFAULT_TOKEN_SECS: u64 = 3600;

/// Where Google issues tokens when the key names no `token_uri`.
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// A Vertex AI provider. The deployment's `upstream_model` is the publisher model id.
pub struct Vertex {
    gemini: Gemini,
    /// `…/v1/projects/{project}/locations/{region}/publishers/google/models`.
    models_url: String,
    /// The policy's reference to the key, the only name errors give it.
    reference: String,
    account: Result<ServiceAccount, AccountError>,
    /// The token endpoint that replaces the key's `token_uri`.
    token_url: Option<String>,
    /// The access token in use; its lock is held by the one request renewing it.
    current: tokio::sync::Mutex<Option<Arc<AccessToken>>>,
}

/// Why a provider's service account cannot be used or cannot obtain a token. Names the
/// reference, never the key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AccountError {
    /// The reference does not resolve.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The provider has no `vertex` settings (the schema requires them).
    #[error("the provider has no `vertex` settings")]
    NoSettings,
    /// The referenced text is not a service account key.
    #[error(
        "the service account key `{0}` is not a JSON key with `client_email` and `private_key`"
    )]
    NotAKey(String),
    /// The key's `private_key` is not an RSA private key in PEM.
    #[error("the private key of the service account `{0}` is not an RSA key in PEM ({1})")]
    BadPrivateKey(String, String),
    /// The token endpoint refused or could not be reached.
    #[error("cannot obtain an access token for the service account `{reference}`: {reason}")]
    Token {
        /// The key's reference.
        reference: String,
        /// What went wrong, without the key, the assertion or any token.
        reason: String,
    },
}

impl From<AccountError> for UpstreamError {
    fn from(e: AccountError) -> Self {
        UpstreamError::new(ErrorClass::Auth, e.to_string())
    }
}

/// The fields of a service account's JSON key that are read.
#[derive(Deserialize)]
struct KeyFile {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

/// A loaded service account.
struct ServiceAccount {
    email: String,
    key_id: Option<String>,
    key: RsaKeyPair,
    token_uri: String,
    /// Removes the private key from provider text.
    redactor: Redactor,
}

impl ServiceAccount {
    /// The service account of a JSON key, read from the text `reference` resolves to.
    fn load(reference: &str) -> Result<ServiceAccount, AccountError> {
        let text = secret::resolve(reference)?;
        // serde's message may quote the text: only say what is missing.
        let file: KeyFile = serde_json::from_str(text.expose())
            .map_err(|_| AccountError::NotAKey(reference.to_owned()))?;
        let bad = |why: &str| AccountError::BadPrivateKey(reference.to_owned(), why.to_owned());
        let pem = pem::parse(&file.private_key).map_err(|_| bad("no PEM block"))?;
        let key = match pem.tag() {
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(pem.contents()),
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(pem.contents()),
            _ => return Err(bad("not a PRIVATE KEY block")),
        }
        .map_err(|e| bad(&e.to_string()))?;
        let body: String = file
            .private_key
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        Ok(ServiceAccount {
            redactor: Redactor::for_keys([body.as_str()]),
            email: file.client_email,
            key_id: file.private_key_id,
            key,
            token_uri: file
                .token_uri
                .unwrap_or_else(|| GOOGLE_TOKEN_URI.to_owned()),
        })
    }

    /// The signed JWT that asks `audience` (the token endpoint) for a token, issued at `iat`
    /// (seconds since the Unix epoch).
    fn assertion(&self, audience: &str, iat: u64) -> Result<String, String> {
        let mut header = json!({ "alg": "RS256", "typ": "JWT" });
        if let Some(kid) = &self.key_id {
            header["kid"] = Value::from(kid.as_str());
        }
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims(&self.email, audience, iat).to_string())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signed.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "the private key cannot sign".to_owned())?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// The claims of the assertion of service account `email` to the token endpoint `audience`,
/// issued at `iat` (seconds since the Unix epoch) and valid for an hour.
pub fn claims(email: &str, audience: &str, iat: u64) -> Value {
    json!({
        "iss": email,
        "scope": SCOPE,
        "aud": audience,
        "iat": iat,
        "exp": iat + ASSERTION_SECS,
    })
}

/// An access token and what goes with it.
struct AccessToken {
    /// `Bearer …`, marked sensitive.
    header: HeaderValue,
    /// Removes the token from provider text.
    redactor: Redactor,
    obtained: Instant,
    lifetime: Duration,
}

/// Whether a token can be used as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// Further than [`REFRESH_MARGIN`] from its expiry.
    Fresh,
    /// Within the margin but not expired: renew it, and use it if renewing fails.
    Renew,
    /// Expired.
    Expired,
}

/// The state of a token `age` after it was obtained with a lifetime of `lifetime`
/// (`expires_in`). A token whose lifetime is shorter than the margin serves the request that
/// obtained it and is renewed by the next one.
pub fn token_state(age: Duration, lifetime: Duration) -> TokenState {
    if age >= lifetime {
        TokenState::Expired
    } else if age + REFRESH_MARGIN >= lifetime {
        TokenState::Renew
    } else {
        TokenState::Fresh
    }
}

/// The publisher models URL of a project and region: `{host}/v1/projects/{project}/locations/
/// {region}/publishers/google/models`, where the host is `base_url` if given, else the region's
/// Vertex AI host (`aiplatform.googleapis.com` for `global`).
pub fn models_url(base_url: Option<&str>, project: &str, region: &str) -> String {
    let host = match base_url {
        Some(base) => base.to_owned(),
        None if region == "global" => "https://aiplatform.googleapis.com".to_owned(),
        None => format!("https://{region}-aiplatform.googleapis.com"),
    };
    http::join(
        &host,
        &format!("v1/projects/{project}/locations/{region}/publishers/google/models"),
    )
}

/// The grant a token endpoint answers.
#[derive(Deserialize)]
struct Grant {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Vertex {
    /// The adapter of a policy provider of type `vertex`; its service account key is read now.
    pub fn new(provider: &model::Provider) -> Self {
        let settings = provider.vertex.as_ref();
        let reference = settings
            .map(|s| s.service_account.clone())
            .unwrap_or_default();
        Vertex {
            gemini: Gemini::new(provider, None),
            models_url: settings
                .map(|s| models_url(provider.base_url.as_deref(), &s.project, &s.region))
                .unwrap_or_default(),
            account: settings
                .ok_or(AccountError::NoSettings)
                .and_then(|_| ServiceAccount::load(&reference)),
            reference,
            token_url: settings.and_then(|s| s.token_url.clone()),
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// Removes the service account's private key from provider text.
    pub fn redactor(&self) -> Redactor {
        self.account
            .as_ref()
            .map(|a| a.redactor.clone())
            .unwrap_or_default()
    }

    /// An access token that is not expired: the one in use, or a new one when it is due for
    /// renewal. Callers wait for one renewal at a time, so a token is obtained once however many
    /// requests need it.
    async fn token(&self) -> Result<Arc<AccessToken>, UpstreamError> {
        let account = self.account.as_ref().map_err(|e| e.clone())?;
        let mut current = self.current.lock().await;
        let state = current
            .as_ref()
            .map(|t| token_state(t.obtained.elapsed(), t.lifetime));
        if let (Some(t), Some(TokenState::Fresh)) = (current.as_ref(), state) {
            return Ok(t.clone());
        }
        match self.grant(account).await {
            Ok(token) => {
                let token = Arc::new(token);
                *current = Some(token.clone());
                Ok(token)
            }
            Err(e) => match (current.as_ref(), state) {
                (Some(t), Some(TokenState::Renew)) => {
                    tracing::warn!(error = %e, "access token renewal failed; the current token is used until it expires");
                    Ok(t.clone())
                }
                _ => Err(e.into()),
            },
        }
    }

    /// Forgets `token` if it is still the one in use (the API refused it).
    async fn forget(&self, token: &Arc<AccessToken>) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|t| Arc::ptr_eq(t, token)) {
            *current = None;
        }
    }

    /// Obtains a token from the token endpoint.
    async fn grant(&self, account: &ServiceAccount) -> Result<AccessToken, AccountError> {
        let fail = |reason: String| AccountError::Token {
            reference: self.reference.clone(),
            reason,
        };
        let url = self.token_url.as_deref().unwrap_or(&account.token_uri);
        if url.parse::<Uri>().is_err() {
            return Err(fail("the token URL is not a valid URL".to_owned()));
        }
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let assertion = account.assertion(url, iat).map_err(fail)?;
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", GRANT_TYPE)
            .append_pair("assertion", &assertion)
            .finish();
        let headers = vec![(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        )];
        let timeouts = &self.gemini.connection().timeouts;
        let obtained = Instant::now();
        let resp = http::post(
            &self.gemini.connection().client,
            url,
            headers,
            body.into_bytes(),
            Duration::from_millis(timeouts.first_token_ms),
        )
        .await
        .map_err(|e| fail(format!("the token endpoint: {}", e.message)))?;
        let status = resp.status();
        let bytes = http::read_body(resp, Duration::from_millis(timeouts.total_ms))
            .await
            .map_err(|e| fail(format!("the token endpoint: {}", e.message)))?;
        if !status.is_success() {
            return Err(fail(format!(
                "the token endpoint answered {}{}",
                status.as_u16(),
                oauth_error(&bytes)
                    .map(|code| format!(" `{code}`"))
                    .unwrap_or_default()
            )));
        }
        let grant: Grant = serde_json::from_slice(&bytes)
            .map_err(|_| fail("the token endpoint's answer has no `access_token`".to_owned()))?;
        let header = http::sensitive(&format!("Bearer {}", grant.access_token))
            .filter(|_| !grant.access_token.is_empty())
            .ok_or_else(|| fail("the token endpoint's `access_token` is not a token".to_owned()))?;
        Ok(AccessToken {
            header,
            redactor: Redactor::for_key(&grant.access_token),
            obtained,
            lifetime: Duration::from_secs(grant.expires_in.unwrap_or(DEFAULT_TOKEN_SECS)),
        })
    }
}

/// The OAuth `error` code of a token endpoint's refusal (`invalid_grant`), when it is one: a
/// short lowercase word, nothing the endpoint could have copied from the request.
fn oauth_error(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let code = v["error"].as_str()?;
    (code.len() <= 40 && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .then(|| code.to_owned())
}

impl Provider for Vertex {
    fn send<'a>(&'a self, req: UpstreamRequest<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            if req.endpoint == Endpoint::Embeddings {
                return Err(UpstreamError::new(
                    ErrorClass::Unsupported,
                    "a `vertex` provider serves chat only, not embeddings",
                ));
            }
            let token = self.token().await?;
            let headers = vec![(AUTHORIZATION, token.header.clone())];
            match self.gemini.exchange(&self.models_url, headers, &req).await {
                Ok(UpstreamResponse::Stream(s)) => {
                    Ok(UpstreamResponse::Stream(s.scrubbed(token.redactor.clone())))
                }
                Ok(full) => Ok(full),
                Err(e) => {
                    if e.class == ErrorClass::Auth {
                        self.forget(&token).await;
                    }
                    Err(e.scrubbed(&token.redactor))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_renewed_within_the_margin_and_not_used_once_expired() {
        let s = Duration::from_secs;
        assert_eq!(token_state(s(0), s(3600)), TokenState::Fresh);
        assert_eq!(token_state(s(3299), s(3600)), TokenState::Fresh);
        assert_eq!(token_state(s(3300), s(3600)), TokenState::Renew);
        assert_eq!(token_state(s(3599), s(3600)), TokenState::Renew);
        assert_eq!(token_state(s(3600), s(3600)), TokenState::Expired);
        // Shorter than the margin: renewed by the very next request.
        assert_eq!(token_state(Duration::ZERO, s(60)), TokenState::Renew);
        assert_eq!(token_state(s(1), s(0)), TokenState::Expired);
    }

    #[test]
    fn urls_of_regions_and_of_global() {
        assert_eq!(
            models_url(None, "my-project", "us-central1"),
            "https://us-central1-aiplatform.googleapis.com/v1/projects/my-project/locations/us-central1/publishers/google/models"
        );
        assert_eq!(
            models_url(None, "my-project", "global"),
            "https://aiplatform.googleapis.com/v1/projects/my-project/locations/global/publishers/google/models"
        );
        assert_eq!(
            models_url(Some("http://127.0.0.1:9/"), "p-1234", "europe-west4"),
            "http://127.0.0.1:9/v1/projects/p-1234/locations/europe-west4/publishers/google/models"
        );
    }

    #[test]
    fn claims_and_oauth_errors() {
        let c = claims("sa@p.iam.gserviceaccount.com", "https://t/token", 1000);
        assert_eq!(c["iss"], "sa@p.iam.gserviceaccount.com");
        assert_eq!(c["scope"], SCOPE);
        assert_eq!(c["aud"], "https://t/token");
        assert_eq!(c["exp"], 4600);
        assert_eq!(
            oauth_error(br#"{"error":"invalid_grant","error_description":"x"}"#).as_deref(),
            Some("invalid_grant")
        );
        assert_eq!(oauth_error(br#"{"error":"ya29.Secret-Token"}"#), None);
        assert_eq!(oauth_error(b"<html>"), None);
    }

    #[tokio::test]
    async fn a_token_endpoint_that_cannot_be_reached_is_an_auth_error_naming_the_reference() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sa.json");
        let pem = include_str!(
            "../../../examples/mock-provider/testdata/TEST-ONLY-vertex-service-account-key.pem"
        );
        // A port nothing listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let token_uri = format!("http://{}/token", closed.local_addr().expect("addr"));
        drop(closed);
        let key = json!({ "client_email": "sa@p.iam.gserviceaccount.com", "private_key": pem,
            "token_uri": token_uri });
        std::fs::write(&path, key.to_string()).expect("write");
        let reference = format!("file:{}", path.display());
        let provider: model::Provider = serde_json::from_value(json!({
            "name": "v", "type": "vertex",
            "vertex": { "project": "p-1234", "region": "global", "service_account": reference },
        }))
        .expect("a provider");
        let vertex = Vertex::new(&provider);
        let body = json!({ "messages": [{ "role": "user", "content": "hi" }] });
        let req = UpstreamRequest {
            endpoint: Endpoint::Chat,
            body: &body,
            upstream_model: "gemini-2.0-flash",
            prefill: None,
            stream: false,
            max_output_tokens: None,
            traceparent: None,
            quota: None,
        };
        let Err(e) = vertex.send(req).await else {
            panic!("no token, no request");
        };
        assert_eq!(e.class, ErrorClass::Auth);
        assert!(
            e.message.starts_with(&format!(
                "cannot obtain an access token for the service account `{reference}`: the token endpoint: cannot connect"
            )),
            "{e}"
        );
        let body_line = pem.lines().nth(1).expect("a body line");
        assert!(!e.to_string().contains(&body_line[..16]), "{e}");
    }

    #[test]
    fn an_unusable_key_is_named_by_its_reference_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sa.json");
        let secret = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7";
        std::fs::write(
            &path,
            format!(
                r#"{{"client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"}}"#
            ),
        )
        .expect("write");
        let reference = format!("file:{}", path.display());
        let Err(e) = ServiceAccount::load(&reference) else {
            panic!("a truncated key is refused");
        };
        assert!(matches!(e, AccountError::BadPrivateKey(..)), "{e}");
        assert!(e.to_string().contains(&reference) && !e.to_string().contains(secret));
        std::fs::write(&path, format!(r#"{{"private_key":"{secret}"}}"#)).expect("write");
        let Err(e) = ServiceAccount::load(&reference) else {
            panic!("a key without client_email is refused");
        };
        assert!(matches!(e, AccountError::NotAKey(_)) && !e.to_string().contains(secret));
    }
}
