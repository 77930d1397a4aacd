//! Damaged store files: truncated, a range zeroed, bytes flipped at many offsets. Each copy is
//! either refused with an error, or served whole; never served smaller or changed, never a
//! panic, never a hang.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use store::{RedbStore, Store};

const KEYS: usize = 200;

fn value(i: usize) -> Bytes {
    Bytes::from(format!("value-{i:03}-{}", "x".repeat(300)))
}

/// What opening and listing a damaged copy gives.
enum Outcome {
    Refused(String),
    Whole,
    Smaller(usize),
    Changed(String),
}

fn try_copy(path: &Path) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = match RedbStore::open(path, 1 << 20) {
        Ok(s) => s,
        Err(e) => return Outcome::Refused(format!("open: {e}")),
    };
    rt.block_on(async {
        match store.list("/k/").await {
            Err(e) => Outcome::Refused(format!("list: {e}")),
            Ok((kvs, _)) if kvs.len() != KEYS => Outcome::Smaller(kvs.len()),
            Ok((kvs, _)) => {
                for (i, kv) in kvs.iter().enumerate() {
                    if kv.key != format!("/k/{i:03}") || kv.value != value(i) {
                        return Outcome::Changed(kv.key.clone());
                    }
                }
                Outcome::Whole
            }
        }
    })
}

/// Run `try_copy` on its own thread: a panic or a hang is a failure of the test.
fn judge(path: &Path, what: &str) -> Outcome {
    let p = path.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(|| try_copy(&p));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => panic!("{what}: the store panicked on a damaged file"),
        Err(_) => panic!("{what}: the store hung on a damaged file"),
    }
}

#[test]
fn damaged_files_are_refused_or_served_whole() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.redb");
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let s = RedbStore::open(&good, 1 << 20).unwrap();
        rt.block_on(async {
            for i in 0..KEYS {
                s.create(&format!("/k/{i:03}"), value(i)).await.unwrap();
            }
        });
    }
    let original = std::fs::read(&good).unwrap();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    cases.push((
        "truncated to half".into(),
        original[..original.len() / 2].to_vec(),
    ));
    cases.push((
        "last 4 KiB cut".into(),
        original[..original.len() - 4096].to_vec(),
    ));
    let mut zeroed = original.clone();
    let mid = original.len() / 2;
    zeroed[mid..(mid + 65536).min(original.len())].fill(0);
    cases.push(("64 KiB zeroed mid-file".into(), zeroed));
    for k in 0..60 {
        let at = (original.len() / 61) * (k + 1) + k * 7;
        let mut flipped = original.clone();
        flipped[at] ^= 0x5a;
        cases.push((format!("byte flipped at {at}"), flipped));
    }
    let mut tally = std::collections::BTreeMap::new();
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("copy-{i}.redb"));
        std::fs::write(&path, bytes).unwrap();
        let outcome = judge(&path, what);
        match &outcome {
            Outcome::Refused(why) => {
                assert!(why.len() > 10, "{what}: refused without saying why");
                *tally.entry("refused").or_insert(0) += 1
            }
            Outcome::Whole => *tally.entry("whole").or_insert(0) += 1,
            Outcome::Smaller(n) => panic!("{what}: served {n} of {KEYS} keys as if whole"),
            Outcome::Changed(key) => panic!("{what}: served {key} changed"),
        }
        let _ = std::fs::remove_file(&path);
    }
    eprintln!("damaged copies: {tally:?}");
}
