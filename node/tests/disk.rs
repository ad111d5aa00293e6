//! Disk faults: a full disk and failing fsyncs. Writes fail with a clear, retryable error
//! and are never acknowledged; nothing acknowledged is lost; the member recovers by itself
//! when space returns or fsyncs work again, and after a restart.
//!
//! The full-disk test needs root (it mounts a small tmpfs as the member's data directory).
//! Without root it says so and passes, unless `DYNAMO_REQUIRE_ROOT_TESTS=1` (set by
//! scripts/test.sh) makes that a failure. The fsync test needs only a C compiler.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{Cluster, Options};

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a tmpfs at {}", path.display());
        Tmpfs(path.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("running mount");
        assert!(status.success(), "resizing the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// 128 KiB that do not compress (the engine compresses blocks).
fn value_of(i: usize) -> Bytes {
    let mut v = format!("value-{i}-").into_bytes();
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    while v.len() < 128 << 10 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_writes_and_recovers() {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .expect("running id -u");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        assert!(
            std::env::var("DYNAMO_REQUIRE_ROOT_TESTS").is_err(),
            "this test needs root to mount a tmpfs"
        );
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    }
    let mut cluster = Cluster::spawn(
        0,
        Options {
            n: 1,
            r: 1,
            w: 1,
            ..Options::default()
        },
    );
    let i = cluster.new_member();
    let disk = Tmpfs::mount(&cluster.dir.path().join("disk"), "24m");
    cluster.members[i].dir = disk.0.join("data");
    cluster.start_member(i);
    cluster.wait_healthy_all().await;
    let c = cluster.app_client(0);

    // Fill the disk: 128 KiB values, at most 400 (50 MiB, twice the disk).
    let mut acked = Vec::new();
    let mut refused = 0;
    for k in 0..400 {
        let reply = c
            .put(&format!("k{k}"), value_of(k), None, "")
            .await
            .unwrap();
        match reply.status.as_u16() {
            204 => acked.push(k),
            503 => {
                let body = reply.json().unwrap();
                assert_eq!(body["code"], "storage_error", "{body}");
                assert_eq!(reply.headers.get("retry-after").unwrap(), "1");
                refused += 1;
                if refused >= 5 {
                    break;
                }
            }
            other => panic!("write {k} answered {other}: {}", reply.text()),
        }
    }
    eprintln!("{} writes acknowledged, {refused} refused", acked.len());
    assert!(refused >= 5, "the disk never filled up");
    assert!(!acked.is_empty(), "nothing fitted on the disk");

    // Space returns: the member takes writes again by itself.
    // Each attempt writes a fresh key: a blind retry of one key after an attempt that failed
    // but reached the journal would rightly leave two siblings.
    disk.resize("256m");
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    let after_space = std::sync::Mutex::new(String::new());
    cluster
        .wait_for(
            "writes to succeed once space returned",
            Duration::from_secs(60),
            || async {
                let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let key = format!("after-space-{n}");
                let ok = c
                    .put(&key, Bytes::from_static(b"back"), None, "")
                    .await
                    .is_ok_and(|r| r.status.as_u16() == 204);
                if ok {
                    *after_space.lock().unwrap() = key;
                }
                ok
            },
        )
        .await;
    let after_space = after_space.into_inner().unwrap();

    // Every acknowledged write is there, before and after a crash and restart.
    for round in ["live", "after kill -9 and restart"] {
        for &k in &acked {
            let r = c.get(&format!("k{k}"), "").await.unwrap();
            assert_eq!(r.status.as_u16(), 200, "k{k} ({round})");
            assert!(r.body == value_of(k), "k{k} has the wrong value ({round})");
        }
        let r = c.get(&after_space, "").await.unwrap();
        assert_eq!(r.body, Bytes::from_static(b"back"), "{round}");
        if round == "live" {
            cluster.kill9(i);
            cluster.restart(i).await;
            let (c2, key) = (c.clone(), after_space.clone());
            cluster
                .wait_for("the member to serve reads", Duration::from_secs(30), || {
                    let (c, key) = (c2.clone(), key.clone());
                    async move {
                        c.get(&key, "")
                            .await
                            .is_ok_and(|r| r.status.as_u16() == 200)
                    }
                })
                .await;
        }
    }
    cluster.stop(i);
    drop(disk);
}

/// Builds tests/support/fail_fsync.c into an LD_PRELOAD library.
fn build_fail_fsync_shim(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/fail_fsync.c");
    let out = dir.join("libfail_fsync.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("running cc (scripts/setup.sh installs it)");
    assert!(status.success(), "building {}", source.display());
    out
}

/// fsync errors in the real engine, injected at the libc boundary of the real member
/// process (an LD_PRELOAD shim makes every fsync/fdatasync fail with EIO while a flag file
/// exists): no write is acknowledged while fsyncs fail, the process stays up, writes resume
/// by themselves when fsyncs work again, and every acknowledged write survives kill -9.
/// A refused write may or may not be there afterwards, but never half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_errors_are_never_acknowledged_and_the_member_recovers() {
    let mut cluster = Cluster::spawn(
        0,
        Options {
            n: 1,
            r: 1,
            w: 1,
            ..Options::default()
        },
    );
    let shim = build_fail_fsync_shim(cluster.dir.path());
    let flag = cluster.dir.path().join("fail-fsync");
    let count = cluster.dir.path().join("fail-fsync.count");
    let i = cluster.new_member();
    cluster.members[i].env = vec![
        ("LD_PRELOAD".into(), shim.display().to_string()),
        ("DYNAMO_FAIL_FSYNC_FLAG".into(), flag.display().to_string()),
    ];
    cluster.start_member(i);
    cluster.wait_healthy_all().await;
    let c = cluster.app_client(0);
    let value = |k: &str| Bytes::from(format!("{k}-").repeat(64));

    let mut acked = Vec::new();
    for k in 0..20 {
        let key = format!("before-{k}");
        let r = c.put(&key, value(&key), None, "").await.unwrap();
        assert_eq!(r.status.as_u16(), 204, "{key}: {}", r.text());
        acked.push(key);
    }

    // The disk starts failing fsyncs: every write is refused, retryably.
    std::fs::write(&flag, b"").unwrap();
    let mut refused = Vec::new();
    for k in 0..10 {
        let key = format!("during-{k}");
        let r = c.put(&key, value(&key), None, "").await.unwrap();
        assert_ne!(
            r.status.as_u16(),
            204,
            "{key} acknowledged while fsync fails"
        );
        assert_eq!(r.status.as_u16(), 503, "{key}: {}", r.text());
        assert_eq!(r.json().unwrap()["code"], "storage_error", "{key}");
        refused.push(key);
    }
    let failed_fsyncs = std::fs::metadata(&count).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "{} writes refused, {failed_fsyncs} fsyncs failed",
        refused.len()
    );
    assert!(failed_fsyncs > 0, "the shim never failed an fsync");
    assert!(
        cluster.members[i]
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "the member exited on fsync errors"
    );

    // fsyncs work again: writes resume without a restart (fresh keys, see above).
    std::fs::remove_file(&flag).unwrap();
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    let resumed = std::sync::Mutex::new(String::new());
    cluster
        .wait_for(
            "writes to succeed once fsyncs work",
            Duration::from_secs(60),
            || async {
                let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let key = format!("after-{n}");
                let ok = c
                    .put(&key, value(&key), None, "")
                    .await
                    .is_ok_and(|r| r.status.as_u16() == 204);
                if ok {
                    *resumed.lock().unwrap() = key;
                }
                ok
            },
        )
        .await;
    acked.push(resumed.into_inner().unwrap());

    for round in ["live", "after kill -9 and restart"] {
        for key in &acked {
            let r = c.get(key, "").await.unwrap();
            assert_eq!(r.status.as_u16(), 200, "{key} ({round})");
            assert_eq!(r.body, value(key), "{key} ({round})");
        }
        for key in &refused {
            let r = c.get(key, "").await.unwrap();
            match r.status.as_u16() {
                404 => {}
                200 => assert_eq!(r.body, value(key), "{key} half-written ({round})"),
                other => panic!("{key} ({round}): {other} {}", r.text()),
            }
        }
        if round == "live" {
            cluster.kill9(i);
            cluster.restart(i).await;
            let (c2, key) = (c.clone(), acked[0].clone());
            cluster
                .wait_for("the member to serve reads", Duration::from_secs(30), || {
                    let (c, key) = (c2.clone(), key.clone());
                    async move {
                        c.get(&key, "")
                            .await
                            .is_ok_and(|r| r.status.as_u16() == 200)
                    }
                })
                .await;
        }
    }
    cluster.stop(i);
}
