//! AWS Bedrock's side of the mock: the Converse and ConverseStream paths, AWS Signature
//! Version 4 checked by an implementation of its own (written from AWS's description of the
//! algorithm: canonical request, string to sign, derived signing key), Bedrock's error shapes
//! and the binary event-stream framing of streamed answers.
//!
//! The mock knows two key pairs: [`ACCESS_KEY_ID`] (long-term) and [`TEMP_ACCESS_KEY_ID`]
//! (temporary: its requests must carry [`SESSION_TOKEN`] as `x-amz-security-token`). A request
//! with no signature, an unknown key, a missing or wrong session token or a signature that does
//! not match is refused with 403 and Bedrock's exception, before it is counted.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The long-term access key id the mock accepts.
pub const ACCESS_KEY_ID: &str = "AKIAMOCKLONGTERM0001";
/// The secret access key of [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "mockSecretKey/LongTerm+0123456789abcdefEXAMPLE";
/// The temporary access key id the mock accepts, with [`SESSION_TOKEN`] only.
pub const TEMP_ACCESS_KEY_ID: &str = "ASIAMOCKTEMPORARY001";
/// The secret access key of [`TEMP_ACCESS_KEY_ID`].
pub const TEMP_SECRET_ACCESS_KEY: &str = "mockSecretKey/Temporary+9876543210fedcbaEXAMPLE";
/// The session token of [`TEMP_ACCESS_KEY_ID`].
pub const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEMockSessionToken0123456789/abcdefghij+klmnop==";

/// The signing service of the Bedrock runtime.
const SERVICE: &str = "bedrock";

/// `(model id, stream)` of a `/model/{modelId}/converse` or `/converse-stream` path; the id
/// is percent-decoded.
pub fn target(path: &str) -> Option<(String, bool)> {
    let rest = path.strip_prefix("/model/")?;
    let (model, action) = rest.rsplit_once('/')?;
    let stream = match action {
        "converse" => false,
        "converse-stream" => true,
        _ => return None,
    };
    let model = decode(model)?;
    (!model.is_empty()).then_some((model, stream))
}

/// A percent-decoded path segment; `None` when it is not valid UTF-8 or a `%` is malformed.
fn decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// SigV4's URI encoding: every byte but the unreserved characters (and `/` when
/// `keep_slash`) as `%XX` in upper-case hex.
fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical URI of a path as received: dot segments removed, then every segment
/// URI-encoded once more (services other than S3 sign the encoded path encoded again).
fn canonical_uri(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for s in path.split('/').skip(1) {
        match s {
            "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    uri_encode(&format!("/{}", segments.join("/")), true)
}

/// The canonical query string: parameters sorted by encoded name, then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let enc = |s: &str| uri_encode(&decode(s).unwrap_or_else(|| s.to_owned()), false);
            (enc(k), enc(v))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a SigV4 signature covers, as received.
#[derive(Debug, Clone)]
pub struct Signed<'a> {
    /// The HTTP method.
    pub method: &'a str,
    /// The path, as received (percent-encoded).
    pub path: &'a str,
    /// The query string, as received.
    pub query: &'a str,
    /// Every header of the request, names in any case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: &'a [u8],
}

impl Signed<'_> {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The canonical request over `signed_headers` (lower-case, sorted, `;`-separated).
    pub fn canonical_request(&self, signed_headers: &str) -> String {
        let mut canonical_headers = String::new();
        for name in signed_headers.split(';') {
            let values: Vec<String> = self
                .header(name)
                .iter()
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
        }
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.method,
            canonical_uri(self.path),
            canonical_query(self.query),
            canonical_headers,
            signed_headers,
            hex(&Sha256::digest(self.body)),
        )
    }
}

/// The signature of `request` with `secret` at `amz_date` (`YYYYMMDDTHHMMSSZ`) in
/// `scope` (`YYYYMMDD/REGION/SERVICE/aws4_request`).
pub fn signature(
    request: &Signed<'_>,
    signed_headers: &str,
    secret: &str,
    amz_date: &str,
    scope: &str,
) -> String {
    let hashed = hex(&Sha256::digest(request.canonical_request(signed_headers)));
    let to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashed}");
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in scope.split('/') {
        key = hmac(&key, part.as_bytes());
    }
    hex(&hmac(&key, to_sign.as_bytes()))
}

/// Why a request is refused: status, exception name and message, as Bedrock says them.
pub type Refusal = (u16, &'static str, String);

/// Checks a request's SigV4 signature; the refusal Bedrock would answer when it fails.
pub fn verify(request: &Signed<'_>) -> Result<(), Refusal> {
    let refuse = |name, message: &str| Err((403, name, message.to_owned()));
    let [auth] = request.header("authorization")[..] else {
        return refuse(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        );
    };
    let Some(fields) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return refuse(
            "IncompleteSignatureException",
            "Authorization header requires the AWS4-HMAC-SHA256 algorithm.",
        );
    };
    let field = |name: &str| {
        fields
            .split(',')
            .map(str::trim)
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
    };
    let (Some(credential), Some(signed_headers), Some(given)) = (
        field("Credential"),
        field("SignedHeaders"),
        field("Signature"),
    ) else {
        return refuse(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature'.",
        );
    };
    let Some((key_id, scope)) = credential.split_once('/') else {
        return refuse("IncompleteSignatureException", "Malformed credential.");
    };
    let amz_date = match request.header("x-amz-date")[..] {
        [d] if d.len() == 16 => d,
        _ => {
            return refuse(
                "IncompleteSignatureException",
                "Authorization header requires an X-Amz-Date header.",
            )
        }
    };
    let parts: Vec<&str> = scope.split('/').collect();
    let scope_ok = matches!(parts[..], [day, region, service, "aws4_request"]
        if amz_date.starts_with(day) && !region.is_empty() && service == SERVICE);
    if !scope_ok {
        return refuse(
            "InvalidSignatureException",
            &format!(
                "Credential should be scoped to a valid date, region and the service '{SERVICE}'."
            ),
        );
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted != names
        || names.iter().any(|n| n.to_ascii_lowercase() != *n)
        || !names.contains(&"host")
        || !names.contains(&"x-amz-date")
    {
        return refuse(
            "InvalidSignatureException",
            "SignedHeaders must be sorted lower-case names including host and x-amz-date.",
        );
    }
    let token = request.header("x-amz-security-token");
    let secret = match (key_id, &token[..]) {
        (ACCESS_KEY_ID, []) => SECRET_ACCESS_KEY,
        (TEMP_ACCESS_KEY_ID, [t]) if *t == SESSION_TOKEN => TEMP_SECRET_ACCESS_KEY,
        _ => {
            return refuse(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        }
    };
    if signature(request, signed_headers, secret, amz_date, scope) != given {
        return refuse(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details.",
        );
    }
    Ok(())
}

/// A Converse request in the OpenAI shape the rest of the mock reads: each message's text
/// (tool results' text included), `maxTokens` as `max_tokens`.
pub fn to_openai(request: &Value, model: &str, stream: bool) -> Value {
    let text = |content: &Value| -> String {
        content
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .flat_map(|b| {
                let own = b["text"].as_str().map(str::to_owned);
                let results = b["toolResult"]["content"].as_array().map(|c| {
                    c.iter()
                        .filter_map(|c| c["text"].as_str())
                        .collect::<String>()
                });
                own.into_iter().chain(results)
            })
            .collect()
    };
    let messages: Vec<Value> = request["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|m| json!({ "role": m["role"], "content": text(&m["content"]) }))
        .collect();
    let mut out = json!({ "model": model, "stream": stream, "messages": messages });
    if let Some(n) = request["inferenceConfig"]["maxTokens"].as_u64() {
        out["max_tokens"] = Value::from(n);
    }
    out
}

/// The first tool a Converse request declares, unless its last message carries a tool result.
pub fn tool_to_call(request: &Value) -> Option<String> {
    let answered = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .is_some_and(|c| c.iter().any(|b| b.get("toolResult").is_some()));
    request["toolConfig"]["tools"][0]["toolSpec"]["name"]
        .as_str()
        .filter(|_| !answered)
        .map(str::to_owned)
}

/// The exception name Bedrock answers a status with.
pub fn exception_name(status: u16) -> &'static str {
    match status {
        400 => "ValidationException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

/// Bedrock's error body.
pub fn error_body(message: &str) -> Value {
    json!({ "message": message })
}

/// The `x-amzn-ErrorType` header value of an exception.
pub fn error_type(name: &str) -> String {
    format!("{name}:http://internal.amazon.com/coral/com.amazon.bedrock/")
}

/// A whole Converse answer.
pub fn answer(content: Vec<Value>, stop: &str, input: u64, output: u64) -> Value {
    json!({
        "output": { "message": { "role": "assistant", "content": content } },
        "stopReason": stop,
        "usage": { "inputTokens": input, "outputTokens": output, "totalTokens": input + output },
        "metrics": { "latencyMs": 1 },
    })
}

/// One event-stream message: the prelude (total and headers length) and its CRC, string
/// headers, the payload and the CRC of all that.
pub fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let mut encoded = Vec::new();
    for (name, value) in headers {
        encoded.push(name.len() as u8);
        encoded.extend_from_slice(name.as_bytes());
        encoded.push(7);
        encoded.extend_from_slice(&(value.len() as u16).to_be_bytes());
        encoded.extend_from_slice(value.as_bytes());
    }
    let total = 12 + encoded.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&encoded);
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    Bytes::from(out)
}

/// A ConverseStream event of `kind`, with the padding field `p` Bedrock adds.
pub fn event(kind: &str, mut payload: Value) -> Bytes {
    payload["p"] = Value::from("abcdefghij");
    frame(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

/// An in-band exception of a stream (`throttlingException`, `modelStreamErrorException`…).
pub fn exception_event(status: u16, message: &str) -> Bytes {
    let name = match status {
        429 => "throttlingException",
        503 => "serviceUnavailableException",
        400 => "validationException",
        _ => "modelStreamErrorException",
    };
    frame(
        &[
            (":exception-type", name),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        error_body(message).to_string().as_bytes(),
    )
}

/// The events of a whole streamed answer's usage: `metadata`.
pub fn metadata(input: u64, output: u64) -> Bytes {
    event(
        "metadata",
        json!({
            "usage": { "inputTokens": input, "outputTokens": output, "totalTokens": input + output },
            "metrics": { "latencyMs": 1 },
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published `get-vanilla` example of the SigV4 test suite.
    #[test]
    fn signs_the_published_example() {
        let request = Signed {
            method: "GET",
            path: "/",
            query: "",
            headers: vec![
                ("Host".into(), "example.amazonaws.com".into()),
                ("X-Amz-Date".into(), "20150830T123600Z".into()),
            ],
            body: b"",
        };
        assert_eq!(
            signature(
                &request,
                "host;x-amz-date",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                "20150830T123600Z",
                "20150830/us-east-1/service/aws4_request",
            ),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn model_ids_are_decoded_and_paths_encoded_twice() {
        assert_eq!(
            target("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream"),
            Some(("anthropic.claude-3-haiku-20240307-v1:0".into(), true))
        );
        assert_eq!(target("/model/m/invoke"), None);
        assert_eq!(
            target("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fp/converse"),
            Some((
                "arn:aws:bedrock:us-east-1:1:inference-profile/p".into(),
                false
            ))
        );
        assert_eq!(
            canonical_uri("/model/a%3A0/./converse"),
            "/model/a%253A0/converse"
        );
        assert_eq!(canonical_query("b=2&a=x%20y"), "a=x%20y&b=2");
    }

    #[test]
    fn frames_carry_both_checksums() {
        let f = frame(&[(":event-type", "messageStop")], b"{}");
        assert_eq!(
            u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize,
            f.len()
        );
        assert_eq!(
            u32::from_be_bytes([f[8], f[9], f[10], f[11]]),
            crc32fast::hash(&f[..8])
        );
        let n = f.len();
        assert_eq!(
            u32::from_be_bytes([f[n - 4], f[n - 3], f[n - 2], f[n - 1]]),
            crc32fast::hash(&f[..n - 4])
        );
    }
}
