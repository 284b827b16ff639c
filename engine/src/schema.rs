//! The JSON Schemas of the policy kinds, embedded, and validation against them.
//!
//! The schemas in `schemas/` are the single source of truth for the shape of a document: the
//! loader validates every file with them before anything else reads it, and a schema error
//! points at the offending YAML node.

use crate::diag::{at, Diagnostic};
use crate::yaml::Node;
use jsonschema::error::ValidationErrorKind;
use jsonschema::Validator;
use std::sync::{Arc, LazyLock};

/// The schema every document must satisfy first (`apiVersion` and `kind`).
pub const DOCUMENT: &str = include_str!("../../schemas/document.schema.json");
/// The declaration of the CEL environment.
pub const CEL_ENVIRONMENT: &str = include_str!("../../schemas/cel-environment.schema.json");

/// The kinds with their schema text, in the order they are documented.
pub const KINDS: &[(&str, &str)] = &[
    (
        "Providers",
        include_str!("../../schemas/providers.schema.json"),
    ),
    ("Models", include_str!("../../schemas/models.schema.json")),
    ("Routing", include_str!("../../schemas/routing.schema.json")),
    ("Budgets", include_str!("../../schemas/budgets.schema.json")),
    (
        "RateLimits",
        include_str!("../../schemas/ratelimits.schema.json"),
    ),
    (
        "Downgrades",
        include_str!("../../schemas/downgrades.schema.json"),
    ),
    (
        "Canaries",
        include_str!("../../schemas/canaries.schema.json"),
    ),
    ("Cache", include_str!("../../schemas/cache.schema.json")),
    (
        "PolicyTests",
        include_str!("../../schemas/policy-tests.schema.json"),
    ),
];

fn compile(text: &str) -> Validator {
    let schema: serde_json::Value =
        serde_json::from_str(text).expect("embedded schemas are valid JSON (tested)");
    jsonschema::draft202012::new(&schema).expect("embedded schemas compile (tested)")
}

static DOCUMENT_VALIDATOR: LazyLock<Validator> = LazyLock::new(|| compile(DOCUMENT));
static KIND_VALIDATORS: LazyLock<Vec<(&'static str, Validator)>> = LazyLock::new(|| {
    KINDS
        .iter()
        .map(|(kind, text)| (*kind, compile(text)))
        .collect()
});

/// Validates a parsed document; returns its kind when it is valid.
pub fn validate(
    file: &Arc<str>,
    root: &Node,
    json: &serde_json::Value,
) -> Result<String, Vec<Diagnostic>> {
    let errors = report(file, root, json, &DOCUMENT_VALIDATOR);
    if !errors.is_empty() {
        return Err(errors);
    }
    let kind = json["kind"].as_str().unwrap_or_default();
    let Some((_, validator)) = KIND_VALIDATORS.iter().find(|(k, _)| *k == kind) else {
        return Err(vec![Diagnostic::error(
            "schema/kind",
            format!("unknown kind `{kind}`"),
            Some(at(file, root.line, root.column)),
        )]);
    };
    let errors = report(file, root, json, validator);
    if errors.is_empty() {
        Ok(kind.to_owned())
    } else {
        Err(errors)
    }
}

fn report(
    file: &Arc<str>,
    root: &Node,
    json: &serde_json::Value,
    validator: &Validator,
) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::new();
    for error in validator.iter_errors(json) {
        let pointer = error.instance_path().as_str().to_owned();
        let node = root.pointer(&pointer).unwrap_or(root);
        let (code, message, target) = match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let key = unexpected.first().cloned().unwrap_or_default();
                let target = root.key_at(&pointer, &key).unwrap_or(node);
                let names = unexpected
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                (
                    "schema/unknown-field",
                    format!("unknown field {names}{}", place(&pointer)),
                    target,
                )
            }
            ValidationErrorKind::Required { property } => (
                "schema/missing-field",
                format!("missing required field {property}{}", place(&pointer)),
                node,
            ),
            ValidationErrorKind::Type { .. } => {
                ("schema/type", format!("{error}{}", place(&pointer)), node)
            }
            ValidationErrorKind::Enum { .. } | ValidationErrorKind::Constant { .. } => {
                ("schema/enum", format!("{error}{}", place(&pointer)), node)
            }
            ValidationErrorKind::Minimum { .. }
            | ValidationErrorKind::Maximum { .. }
            | ValidationErrorKind::ExclusiveMinimum { .. }
            | ValidationErrorKind::ExclusiveMaximum { .. } => {
                ("schema/range", format!("{error}{}", place(&pointer)), node)
            }
            ValidationErrorKind::Pattern { .. } => (
                "schema/pattern",
                format!("{error}{}", place(&pointer)),
                node,
            ),
            _ => (
                "schema/invalid",
                format!("{error}{}", place(&pointer)),
                node,
            ),
        };
        // A value that looks like a secret is reported by `secret/literal`, redacted; it is
        // never quoted here.
        let message = match node.as_str() {
            Some(text) if crate::secrets::looks_like_secret(text).is_some() => {
                message.replace(text, &crate::secrets::redact(text))
            }
            _ => message,
        };
        let diag = Diagnostic::error(code, message, Some(at(file, target.line, target.column)))
            .with_len(target.len);
        if !out.contains(&diag) {
            out.push(diag);
        }
    }
    out
}

fn place(pointer: &str) -> String {
    if pointer.is_empty() {
        String::new()
    } else {
        format!(" at `{pointer}`")
    }
}
