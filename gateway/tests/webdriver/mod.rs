//! A small W3C WebDriver client for the dashboard test: Debian's `chromedriver` driving
//! headless `chromium`, spoken to as HTTP JSON with the tests' hyper client.

use crate::common::send;
use base64::Engine as _;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The browser binary and its driver (Debian's `chromium` and `chromium-driver`).
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The viewport every page is checked and photographed at.
pub const WIDTH: u32 = 1280;
/// See [`WIDTH`].
pub const HEIGHT: u32 = 800;

/// A running chromedriver with one headless Chromium session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where an answer of WebDriver failed: its `error` and `message`.
fn failure(what: &str, status: u16, body: &Value) -> String {
    format!(
        "WebDriver {what}: {status} {} {}",
        body["value"]["error"], body["value"]["message"]
    )
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless Chromium window of
    /// [`WIDTH`]×[`HEIGHT`]. Fails with the install command when either is missing.
    pub async fn start() -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: `apt-get install chromium chromium-driver` (.ci/run does)"
            );
        }
        let mut driver = Command::new(CHROMEDRIVER)
            .args(["--port=0", "--allowed-ips=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let stdout = driver.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut port = None;
        for _ in 0..10 {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            // "ChromeDriver was started successfully on port 33039."
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                port = rest.trim().trim_end_matches('.').parse::<u16>().ok();
                break;
            }
        }
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        let Some(port) = port else {
            let _ = driver.kill();
            panic!("chromedriver did not say which port it listens on");
        };
        let base = format!("http://127.0.0.1:{port}");
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
                        format!("--window-size={WIDTH},{HEIGHT}"),
                    ],
                },
            }},
        });
        let answer = send(
            "POST",
            &format!("{base}/session"),
            Some(&caps.to_string()),
            &[],
        )
        .await;
        let body: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        assert_eq!(
            answer.status,
            200,
            "{}",
            failure("new session", answer.status, &body)
        );
        let session = body["value"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        let browser = Browser {
            driver,
            base,
            session,
        };
        // The window's frame takes some of --window-size: grow it so that the page itself
        // (what people read, and the screenshots) is WIDTH×HEIGHT.
        let frame = browser
            .run(
                "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight];",
                json!([]),
            )
            .await;
        let (dx, dy) = (
            frame[0].as_u64().unwrap_or(0),
            frame[1].as_u64().unwrap_or(0),
        );
        browser
            .call(
                "POST",
                "/window/rect",
                Some(json!({ "width": u64::from(WIDTH) + dx, "height": u64::from(HEIGHT) + dy })),
            )
            .await
            .expect("sizes the window");
        browser
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let text = body.map(|b| b.to_string());
        let answer = send(
            method,
            &url,
            text.as_deref().or(Some("{}")).filter(|_| method != "GET"),
            &[],
        )
        .await;
        let body: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        if answer.status == 200 {
            Ok(body["value"].clone())
        } else {
            Err(failure(path, answer.status, &body))
        }
    }

    /// Opens `url` and waits for the document to load.
    pub async fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })))
            .await
            .expect("navigates");
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\nscript: {script}"))
    }

    /// Waits at most `limit` for an element matching `css` to be in the page (the browser
    /// looks each time the page changes: WebDriver's implicit wait); fails loudly with the
    /// page's text when none comes.
    pub async fn wait_for(&self, css: &str, limit: Duration) {
        self.call(
            "POST",
            "/timeouts",
            Some(json!({ "implicit": limit.as_millis() as u64 })),
        )
        .await
        .expect("sets the wait");
        let found = self
            .call(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        if let Err(e) = found {
            let text = self.text("body").await;
            panic!("no `{css}` within {limit:?}: {e}\npage text:\n{text}");
        }
    }

    /// The rendered text of the first element matching `css` (empty when none does).
    pub async fn text(&self, css: &str) -> String {
        self.run(
            "const e = document.querySelector(arguments[0]); return e ? (e.innerText ?? e.textContent) : '';",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// The rendered texts of every element matching `css`.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let v = self
            .run(
                "return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText ?? e.textContent);",
                json!([css]),
            )
            .await;
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("texts of `{css}`: {e}: {v}"))
    }

    /// Clicks the first element matching `css` (which must exist).
    pub async fn click(&self, css: &str) {
        let clicked = self
            .run(
                "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e;",
                json!([css]),
            )
            .await;
        assert_eq!(clicked, json!(true), "nothing to click at `{css}`");
    }

    /// Sets the input `css` to `text` as typing does (an `input` event).
    pub async fn type_into(&self, css: &str, text: &str) {
        self.run(
            "const e = document.querySelector(arguments[0]); e.value = arguments[1]; e.dispatchEvent(new Event('input'));",
            json!([css, text]),
        )
        .await;
    }

    /// Types `text` into the input `css` and submits its form.
    pub async fn fill_and_submit(&self, css: &str, text: &str) {
        self.run(
            "const e = document.querySelector(arguments[0]); e.value = arguments[1]; e.form.requestSubmit();",
            json!([css, text]),
        )
        .await;
    }

    /// Saves a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let data = self
            .call("GET", "/screenshot", None)
            .await
            .expect("a screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Ends the session (the driver stops when dropped).
    pub async fn quit(self) {
        let _ = self.call("DELETE", "", None).await;
    }
}
