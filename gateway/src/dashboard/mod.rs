//! The web dashboard on the admin listener: `GET /ui` and its script and style sheet, built
//! into the binary (`gateway/ui/`), and the JSON the dashboard reads that no other admin
//! route has ([`history`], [`policy_diff`]).
//!
//! The page holds no data: it asks for a token (the admin token, or a tenant admin key),
//! keeps it in the tab's `sessionStorage` and sends it as a bearer token to the admin JSON
//! routes, which decide what it may see. No cookie is set. The files are served with a
//! content security policy that allows this origin only: no inline script, no other host.

pub mod history;
pub mod policy_diff;

use crate::body::GatewayBody;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");

/// The dashboard's content security policy.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether a path is one of the dashboard's files.
pub fn is_ui_path(path: &str) -> bool {
    file(path).is_some()
}

fn file(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/ui" | "/ui/" => Some((INDEX, "text/html; charset=utf-8")),
        "/ui/app.js" => Some((SCRIPT, "text/javascript; charset=utf-8")),
        "/ui/app.css" => Some((STYLE, "text/css; charset=utf-8")),
        _ => None,
    }
}

/// Serves a dashboard file (`GET` or `HEAD`; the caller checks the method).
pub fn serve(path: &str) -> Option<Response<GatewayBody>> {
    let (body, kind) = file(path)?;
    let mut resp = Response::new(GatewayBody::full(body));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_files_are_served_and_nothing_else() {
        for path in ["/ui", "/ui/", "/ui/app.js", "/ui/app.css"] {
            let resp = serve(path).expect(path);
            assert_eq!(resp.status(), StatusCode::OK);
            assert!(resp.headers()["content-security-policy"]
                .to_str()
                .expect("ascii")
                .contains("script-src 'self'"));
        }
        assert!(serve("/ui/../admin/status").is_none());
        assert!(serve("/ui/other.js").is_none());
    }

    #[test]
    fn the_page_loads_nothing_from_another_host() {
        for text in [INDEX, SCRIPT, STYLE] {
            // The SVG namespace is a name, not a fetch.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            for far in ["http:", "https:", "\"//", "'//", "(//", "@import"] {
                assert!(!text.contains(far), "`{far}` in a dashboard file");
            }
        }
    }
}
