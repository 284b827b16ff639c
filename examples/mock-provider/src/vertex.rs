//! Google Vertex AI's side of the mock: an OAuth token endpoint that grants access tokens to
//! one test service account for a JWT bearer assertion (RFC 7523) whose RS256 signature and
//! claims it verifies, and the publisher model paths
//! `/v1/projects/{project}/locations/{region}/publishers/google/models/{model}:generateContent`
//! (and `:streamGenerateContent?alt=sse`), which speak Gemini's protocol to a request carrying
//! an unexpired token it granted and answer 401 `UNAUTHENTICATED` to any other.
//!
//! The service account's private key is a test-only key committed beside the mock
//! (`testdata/TEST-ONLY-vertex-service-account-key.pem`); it protects nothing.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{KeyPair, RsaKeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The path of the token endpoint.
pub const TOKEN_PATH: &str = "/token";

/// The test service account.
pub const CLIENT_EMAIL: &str = "llmgw-test@llmgw-test-project.iam.gserviceaccount.com";

/// The scope an assertion must ask for.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The test service account's private key (test-only, committed on purpose).
const TEST_ONLY_PRIVATE_KEY: &str =
    include_str!("../testdata/TEST-ONLY-vertex-service-account-key.pem");

/// The test service account's JSON key, as Google Cloud downloads one, with its tokens
/// obtained from `token_uri`.
pub fn service_account_key(token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "llmgw-test-project",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": TEST_ONLY_PRIVATE_KEY,
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "token_uri": token_uri,
    })
    .to_string()
}

/// The model path after `…/publishers/google/models/` of a Vertex AI request path, when it
/// names a project and a location.
pub fn models_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/projects/")?;
    let (project, rest) = rest.split_once("/locations/")?;
    let (region, model) = rest.split_once("/publishers/google/models/")?;
    let name_ok = |s: &str| !s.is_empty() && !s.contains('/');
    (name_ok(project) && name_ok(region)).then_some(model)
}

/// Google's error body.
pub fn error(code: u16, status: &str, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message, "status": status } })
}

/// The 401 of a request without a valid access token.
pub fn unauthenticated() -> Value {
    error(
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login \
         cookie or other valid authentication credential.",
    )
}

/// The token endpoint's state: tokens granted, with their expiry, and how it answers.
#[derive(Debug)]
pub struct Vertex {
    /// The test service account's public key (PKCS#1 DER).
    public_key: Vec<u8>,
    expires_in: AtomicU64,
    /// `0`, or the status every grant request is answered with.
    outage: AtomicU16,
    grants: AtomicU64,
    /// Granted token → when it expires.
    tokens: Mutex<HashMap<String, Instant>>,
}

impl Default for Vertex {
    fn default() -> Self {
        let pem = pem::parse(TEST_ONLY_PRIVATE_KEY).expect("the test key is PEM");
        let key = RsaKeyPair::from_pkcs8(pem.contents()).expect("the test key is PKCS#8 RSA");
        Vertex {
            public_key: key.public_key().as_ref().to_vec(),
            expires_in: AtomicU64::new(3600),
            outage: AtomicU16::new(0),
            grants: AtomicU64::new(0),
            tokens: Mutex::default(),
        }
    }
}

impl Vertex {
    /// The `expires_in`, in seconds, of the tokens granted from now on (3600 by default).
    pub fn set_expires_in(&self, secs: u64) {
        self.expires_in.store(secs, Ordering::SeqCst);
    }

    /// Makes the token endpoint answer every grant request with `status` (`None`: grant).
    pub fn set_outage(&self, status: Option<u16>) {
        self.outage.store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// How many tokens were granted.
    pub fn grants(&self) -> u64 {
        self.grants.load(Ordering::SeqCst)
    }

    /// Every token granted so far.
    pub fn granted(&self) -> Vec<String> {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Whether an `Authorization` header carries a granted token that has not expired.
    pub fn authorized(&self, authorization: Option<&str>) -> bool {
        let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
            return false;
        };
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .is_some_and(|expiry| Instant::now() < *expiry)
    }

    /// The answer to a grant request with the form `body`, sent to the endpoint `audience`
    /// (its URL): a token, or OAuth's `invalid_request` / `invalid_grant` refusal.
    pub fn grant(&self, body: &[u8], audience: &str) -> (u16, Value) {
        let outage = self.outage.load(Ordering::SeqCst);
        if outage != 0 {
            return (
                outage,
                json!({ "error": "temporarily_unavailable", "error_description": "The token endpoint is down." }),
            );
        }
        let form: HashMap<String, String> = form_pairs(body);
        if form.get("grant_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        {
            return refusal("invalid_request", "Invalid grant_type.");
        }
        let Some(assertion) = form.get("assertion") else {
            return refusal("invalid_request", "Missing required parameter: assertion");
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if let Err(why) = self.verify(assertion, audience, now) {
            return refusal("invalid_grant", why);
        }
        let n = self.grants.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("ya29.mock-access-token-{n}-c0ffee7e57a11ce5");
        let expires_in = self.expires_in.load(Ordering::SeqCst);
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                token.clone(),
                Instant::now() + Duration::from_secs(expires_in),
            );
        (
            200,
            json!({ "access_token": token, "expires_in": expires_in, "token_type": "Bearer" }),
        )
    }

    /// Checks an assertion's signature by the test service account and its claims, at `now`
    /// (seconds since the Unix epoch); the reason when they are wrong.
    pub fn verify(&self, assertion: &str, audience: &str, now: u64) -> Result<(), &'static str> {
        let mut parts = assertion.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("Invalid JWT: not three parts.");
        };
        let json_of = |part: &str| -> Option<Value> {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
        };
        let (Some(h), Some(c)) = (json_of(header), json_of(claims)) else {
            return Err("Invalid JWT: not base64url JSON.");
        };
        if h["alg"] != "RS256" {
            return Err("Invalid JWT: the algorithm must be RS256.");
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| "Invalid JWT Signature.")?;
        let signed = &assertion[..header.len() + 1 + claims.len()];
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.public_key)
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| "Invalid JWT Signature.")?;
        if c["iss"] != CLIENT_EMAIL {
            return Err("Invalid JWT: unknown issuer.");
        }
        if c["scope"] != SCOPE {
            return Err("Invalid JWT: the scope must be cloud-platform.");
        }
        if c["aud"] != audience {
            return Err("Invalid JWT: the audience must be the token endpoint.");
        }
        let (Some(iat), Some(exp)) = (c["iat"].as_u64(), c["exp"].as_u64()) else {
            return Err("Invalid JWT: iat and exp are required.");
        };
        if iat > now + 300 || exp <= now || exp <= iat || exp - iat > 3600 {
            return Err(
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.",
            );
        }
        Ok(())
    }
}

/// An OAuth refusal.
fn refusal(error: &str, description: &str) -> (u16, Value) {
    (
        400,
        json!({ "error": error, "error_description": description }),
    )
}

/// The pairs of an `application/x-www-form-urlencoded` body.
fn form_pairs(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::RSA_PKCS1_SHA256;

    const AUD: &str = "http://127.0.0.1:9/token";

    fn assertion(header: Value, claims: Value) -> String {
        let pem = pem::parse(TEST_ONLY_PRIVATE_KEY).expect("pem");
        let key = RsaKeyPair::from_pkcs8(pem.contents()).expect("key");
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0; key.public().modulus_len()];
        key.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            signed.as_bytes(),
            &mut sig,
        )
        .expect("sign");
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn claims(iat: u64) -> Value {
        json!({ "iss": CLIENT_EMAIL, "scope": SCOPE, "aud": AUD, "iat": iat, "exp": iat + 3600 })
    }

    #[test]
    fn verifies_the_signature_and_the_claims() {
        let v = Vertex::default();
        let rs256 = json!({ "alg": "RS256", "typ": "JWT" });
        let good = assertion(rs256.clone(), claims(1000));
        assert_eq!(v.verify(&good, AUD, 1000), Ok(()));
        assert!(v.verify(&good, "http://elsewhere/token", 1000).is_err());
        assert!(v.verify(&good, AUD, 4600).is_err(), "expired");
        let mut forged = good.clone();
        forged.replace_range(forged.len() - 6.., "AAAAAA");
        assert_eq!(v.verify(&forged, AUD, 1000), Err("Invalid JWT Signature."));
        let mut other = claims(1000);
        other["iss"] = Value::from("someone@else.iam.gserviceaccount.com");
        assert!(v
            .verify(&assertion(rs256.clone(), other), AUD, 1000)
            .is_err());
        let mut long = claims(1000);
        long["exp"] = Value::from(1000 + 7200);
        assert!(v.verify(&assertion(rs256, long), AUD, 1000).is_err());
        let none = assertion(json!({ "alg": "none" }), claims(1000));
        assert!(v.verify(&none, AUD, 1000).is_err());
    }

    #[test]
    fn grants_tokens_that_authorize_requests() {
        let v = Vertex::default();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
            .append_pair(
                "assertion",
                &assertion(json!({ "alg": "RS256" }), claims(now)),
            )
            .finish();
        let (status, answer) = v.grant(body.as_bytes(), AUD);
        assert_eq!(status, 200, "{answer}");
        let token = answer["access_token"].as_str().expect("a token");
        assert!(v.authorized(Some(&format!("Bearer {token}"))));
        assert!(!v.authorized(Some("Bearer ya29.unknown")) && !v.authorized(None));
        assert_eq!(v.grants(), 1);
        v.set_outage(Some(503));
        assert_eq!(v.grant(body.as_bytes(), AUD).0, 503);
        assert_eq!(
            models_path(
                "/v1/projects/p-1/locations/global/publishers/google/models/g:generateContent"
            ),
            Some("g:generateContent")
        );
        assert_eq!(
            models_path("/v1/projects//locations/us/publishers/google/models/g"),
            None
        );
    }
}
