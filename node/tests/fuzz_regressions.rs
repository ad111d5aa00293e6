//! Replays every input the fuzzers found a failure with (`node/fuzz/regressions/<target>/`)
//! and the seed corpora, through the same entry points the fuzz targets call. Runs on
//! stable, without libFuzzer, in the normal test suite.

#![cfg(feature = "fuzzing")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use dynamo::fuzzing;

fn target(name: &str) -> fn(&[u8]) {
    match name {
        "rpc_frame" => fuzzing::rpc_frame,
        "context" => fuzzing::context,
        "record" => fuzzing::record,
        "gossip" => fuzzing::gossip,
        "http_request" => fuzzing::http_request,
        other => panic!("no fuzz target {other}"),
    }
}

#[test]
fn seeds_are_valid_inputs() {
    let seeds = fuzzing::seed_inputs();
    for name in ["rpc_frame", "context", "record", "gossip", "http_request"] {
        assert!(
            seeds.iter().any(|(t, _)| *t == name),
            "no seed for the {name} target"
        );
    }
    for (name, input) in &seeds {
        match *name {
            "rpc_frame" => assert!(dynamo::rpc::frame::decode(input).is_ok()),
            "record" => assert!(dynamo::storage::decode_record(input).is_ok()),
            "context" => assert!(
                dynamo::api::context::ContextCodec::new(&[fuzzing::FUZZ_CLUSTER_TOKEN.to_vec()])
                    .decode(b"fuzzed-key", std::str::from_utf8(input).unwrap())
                    .is_ok()
            ),
            _ => {}
        }
        target(name)(input);
    }
}

#[test]
fn found_inputs_stay_fixed() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for dir in std::fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap();
        if !dir.file_type().unwrap().is_dir() {
            continue;
        }
        let run = target(&dir.file_name().to_string_lossy());
        for file in std::fs::read_dir(dir.path()).unwrap() {
            let path = file.unwrap().path();
            eprintln!("replaying {}", path.display());
            run(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    eprintln!("{replayed} regression inputs replayed");
}
