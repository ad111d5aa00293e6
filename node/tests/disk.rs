//! A full disk: writes fail with a clear, retryable error and are never acknowledged;
//! nothing acknowledged is lost; the member recovers by itself when space returns and
//! after a restart.
//!
//! Needs root (it mounts a small tmpfs as the member's data directory). Without root it
//! says so and passes, unless `DYNAMO_REQUIRE_ROOT_TESTS=1` (set by scripts/test.sh) makes
//! that a failure.

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
