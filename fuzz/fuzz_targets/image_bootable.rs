//! The image catalog's boot probe over any bytes: an uploaded image's
//! partition tables and FAT file system, fed in chunks of any size as an
//! upload streams. It must answer, never panic or hang, and leave no
//! scratch file behind.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let spool = std::env::temp_dir().join(format!("slipway-fuzz-esp-{}", std::process::id()));
    let mut probe = images::bootable::Probe::new(spool.clone());
    // The first byte picks the chunk size, as network reads would.
    let step = 1 + usize::from(data.first().copied().unwrap_or(0)) * 97;
    for chunk in data.chunks(step) {
        probe.feed(chunk).expect("the scratch file takes the ESP's bytes");
    }
    let _ = probe.finish();
    assert!(!spool.exists(), "the ESP's scratch file is removed");
});
