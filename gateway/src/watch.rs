//! When to look at the policy source again: a git repository is polled at an interval (and
//! fetched at once when a webhook notifies, see [`crate::webhook`]); a
//! directory is watched with notify (changes under `.git/`, other hidden entries and the state
//! directory, when it lies inside the policy directory, ignored),
//! debounced so that an editor's burst of writes makes one reload, with a slow poll behind it
//! in case an event is missed. Each look runs [`Reloader::poll`] on a blocking thread, one at
//! a time.

use crate::app::App;
use crate::policy_source::PolicyLocation;
use crate::reload::Reloader;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Quiet time after the last file event before a directory is read.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest wait for a burst of file events to end.
const DEBOUNCE_MAX: Duration = Duration::from_secs(2);

/// Parses a duration such as `500ms`, `1s`, `2m` or `1.5s` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (for example 500ms, 1s, 2m)"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("`{text}` has an unknown unit (ms, s or m)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("`{text}` must be more than zero"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Starts following the source of `reloader`: polls a repository every `interval`, watches a
/// directory (and polls it every `10 × interval`); the bundled policies never change. File
/// events under `state_dir` (the state store's directory, if any) are not policy changes.
pub fn spawn(
    app: Arc<App>,
    reloader: Reloader,
    interval: Duration,
    state_dir: Option<&Path>,
) -> Option<JoinHandle<()>> {
    match reloader.location().clone() {
        PolicyLocation::Embedded => None,
        PolicyLocation::Repo { .. } => Some(tokio::spawn(poll_loop(app, reloader, interval))),
        PolicyLocation::Dir(dir) => {
            let ignored = state_dir.map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.into()));
            Some(tokio::spawn(watch_loop(
                app, reloader, dir, ignored, interval,
            )))
        }
    }
}

/// Runs one poll on a blocking thread; gives the reloader back.
async fn poll_once(app: &Arc<App>, mut reloader: Reloader) -> Option<Reloader> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        reloader.poll(&*app);
        reloader
    })
    .await
    .ok()
}

/// Polls every `interval`, and at once when a webhook asks (`App::policy_fetch`).
async fn poll_loop(app: Arc<App>, mut reloader: Reloader, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let wake = app.policy_fetch.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = wake.notified() => tick.reset(),
        }
        match poll_once(&app, reloader).await {
            Some(r) => reloader = r,
            None => return,
        }
    }
}

/// Whether a file event concerns policy files (not `.git/`, other hidden entries or anything
/// under `ignored`).
fn relevant(root: &Path, ignored: Option<&Path>, event: &notify::Event) -> bool {
    if matches!(event.kind, notify::EventKind::Access(_)) {
        return false;
    }
    event.paths.iter().any(|p| {
        if ignored.is_some_and(|i| p.starts_with(i)) {
            return false;
        }
        let rel = p.strip_prefix(root).unwrap_or(p);
        !rel.components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
    })
}

async fn watch_loop(
    app: Arc<App>,
    mut reloader: Reloader,
    dir: std::path::PathBuf,
    ignored: Option<std::path::PathBuf>,
    interval: Duration,
) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let root = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
    let watcher = {
        let root = root.clone();
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                if relevant(&root, ignored.as_deref(), &event) {
                    let _ = tx.try_send(());
                }
            }
        })
    };
    let _watcher = match watcher {
        Ok(mut w) => {
            use notify::Watcher as _;
            match w.watch(&root, notify::RecursiveMode::Recursive) {
                Ok(()) => Some(w),
                Err(e) => {
                    tracing::warn!(target: "llmgw::policy", dir = %dir.display(), error = %e, "cannot watch the policy directory; polling it instead");
                    None
                }
            }
        }
        Err(e) => {
            tracing::warn!(target: "llmgw::policy", dir = %dir.display(), error = %e, "cannot watch the policy directory; polling it instead");
            None
        }
    };
    let fallback = if _watcher.is_some() {
        interval * 10
    } else {
        interval
    };
    let mut tick = tokio::time::interval(fallback);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            got = rx.recv() => {
                if got.is_none() {
                    return;
                }
                // Debounce: wait for a quiet moment (or the longest burst allowed).
                let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
                loop {
                    match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                        Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
                        _ => break,
                    }
                }
            }
            _ = tick.tick() => {}
        }
        match poll_once(&app, reloader).await {
            Some(r) => reloader = r,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn ignores_git_and_hidden_paths() {
        let root = Path::new("/p");
        let ev = |p: &str| {
            notify::Event::new(notify::EventKind::Modify(notify::event::ModifyKind::Any))
                .add_path(p.into())
        };
        assert!(relevant(root, None, &ev("/p/routing.yaml")));
        assert!(relevant(root, None, &ev("/p/sub/x.yaml")));
        assert!(!relevant(root, None, &ev("/p/.git/index")));
        assert!(!relevant(root, None, &ev("/p/.routing.yaml.swp")));
    }

    #[test]
    fn ignores_the_state_directory_inside_the_policy_directory() {
        let (root, state) = (Path::new("/p"), Some(Path::new("/p/state")));
        let ev = |p: &str| {
            notify::Event::new(notify::EventKind::Modify(notify::event::ModifyKind::Any))
                .add_path(p.into())
        };
        assert!(!relevant(root, state, &ev("/p/state/state.sqlite-wal")));
        assert!(!relevant(root, state, &ev("/p/state")));
        assert!(relevant(root, state, &ev("/p/routing.yaml")));
        assert!(relevant(root, state, &ev("/p/statements.yaml")));
    }
}
