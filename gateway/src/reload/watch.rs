//! The config file watch. The directory is watched, not the file, so editors that write a new
//! file and rename it over the old one (vim, `sed -i`) and Kubernetes ConfigMap updates (a
//! `..data` symlink swapped beside the file) are seen too.
//!
//! On Linux the watch asks inotify only for the events that finish a change: a file closed
//! after writing, renamed in, created, or its attributes changed (`touch`). Not every `write`
//! or `open`: a file kept open and written beside the config (an access log in the same
//! directory) would otherwise wake the watcher on every write, and a config file would be read
//! while still half written. Elsewhere the `notify` crate watches with its fixed set of events.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};

use super::Reloader;

/// Watches the config file and reloads it after `debounce` of quiet.
pub(crate) async fn watch_file(reloader: Arc<Reloader>, debounce: Duration) {
    let path = reloader.path().to_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(OsStr::to_owned).unwrap_or_default();
    let events = match changes(&dir, name) {
        Ok(events) => events,
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot watch the config directory; reload with SIGHUP or the admin API");
            return;
        }
    };
    let mut events = std::pin::pin!(events);
    tracing::info!(file = %path.display(), debounce_ms = debounce.as_millis() as u64, "watching the config file");
    while events.next().await.is_some() {
        // Wait for `debounce` without another event: an editor's several writes become one.
        loop {
            match tokio::time::timeout(debounce, events.next()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let _ = reloader.reload_file("file").await;
    }
}

/// Whether a change to `changed` in the config's directory may have changed the config file
/// `file`: the file itself, or Kubernetes' `..data` symlink and the `..<timestamp>` directories
/// it points to.
fn concerns(changed: &OsStr, file: &OsStr) -> bool {
    changed == file || changed.as_encoded_bytes().starts_with(b"..")
}

/// A stream with an item for each change in `dir` that [`concerns`] the file `name`.
fn changes(dir: &Path, name: OsString) -> std::io::Result<impl Stream<Item = ()>> {
    Ok(events(dir)?.filter_map(move |changed| {
        let ours = changed.is_empty() || concerns(&changed, &name);
        std::future::ready(ours.then_some(()))
    }))
}

/// The names of the files changed in `dir`, as the events come (empty when unknown: the
/// kernel's queue overflowed and events were lost).
#[cfg(target_os = "linux")]
fn events(dir: &Path) -> std::io::Result<impl Stream<Item = OsString>> {
    use inotify::{EventMask, Inotify, WatchMask};
    let inotify = Inotify::init()?;
    inotify.watches().add(
        dir,
        WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::CREATE | WatchMask::ATTRIB,
    )?;
    let events = inotify.into_event_stream(vec![0u8; 4096])?;
    Ok(events.filter_map(|event| {
        let name = match event {
            Ok(e) if e.mask.contains(EventMask::Q_OVERFLOW) => Some(OsString::new()),
            Ok(e) => e.name,
            Err(e) => {
                tracing::warn!(error = %e, "reading the config directory's events");
                None
            }
        };
        std::future::ready(name)
    }))
}

/// The names of the files changed in `dir`, as the events come.
#[cfg(not(target_os = "linux"))]
fn events(dir: &Path) -> std::io::Result<impl Stream<Item = OsString>> {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<OsString>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        for name in event.paths.iter().filter_map(|p| p.file_name()) {
            let _ = tx.send(name.to_owned());
        }
    })
    .map_err(std::io::Error::other)?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(std::io::Error::other)?;
    Ok(futures_util::stream::poll_fn(move |cx| {
        let _watching = &watcher;
        rx.poll_recv(cx)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_and_kubernetes_swaps_concern_the_config() {
        let file = OsStr::new("gateway.toml");
        for changed in [
            "gateway.toml",
            "..data",
            "..data_tmp",
            "..2026_12_07_01_02_03.123",
        ] {
            assert!(concerns(OsStr::new(changed), file), "{changed}");
        }
        for changed in [
            "access.log",
            "gateway.toml.swp",
            ".gateway.toml.swp",
            "4913",
            ".",
        ] {
            assert!(!concerns(OsStr::new(changed), file), "{changed}");
        }
    }

    /// Writes to files kept open in the directory (the config itself, a log beside it) are no
    /// events; closing the config after writing it, renaming a file over it and a
    /// Kubernetes-style swap are.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn only_finished_changes_are_events() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("gw-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let _cleanup = Cleanup(dir.clone());
        let config = dir.join("gateway.toml");
        std::fs::write(&config, "a").expect("write");
        let mut log = std::fs::File::create(dir.join("access.log")).expect("log");
        let mut config_open = std::fs::OpenOptions::new()
            .append(true)
            .open(&config)
            .expect("open");
        let raw = events(&dir).expect("watch");
        let mut raw = std::pin::pin!(raw);
        let mut next = async || {
            let event = tokio::time::timeout(Duration::from_secs(10), raw.next()).await;
            event.expect("an event").expect("the stream goes on")
        };
        for _ in 0..100 {
            log.write_all(b"line\n").expect("write");
            config_open.write_all(b"#").expect("write");
        }
        std::fs::create_dir(dir.join("sentinel")).expect("mkdir");
        assert_eq!(
            next().await,
            "sentinel",
            "the writes before it were no events"
        );
        drop(config_open);
        assert_eq!(next().await, "gateway.toml");

        let changes = changes(&dir, "gateway.toml".into()).expect("watch");
        let mut changes = std::pin::pin!(changes);
        let mut next = async || {
            let change = tokio::time::timeout(Duration::from_secs(10), changes.next()).await;
            change.expect("a change").expect("the stream goes on")
        };
        std::fs::write(dir.join("new.toml"), "b").expect("write");
        std::fs::rename(dir.join("new.toml"), &config).expect("rename");
        next().await;
        std::os::unix::fs::symlink("..2026", dir.join("..data_tmp")).expect("symlink");
        next().await;
    }

    struct Cleanup(PathBuf);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
