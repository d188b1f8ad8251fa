//! A registry hive as `image show` reads it from an image's NTFS (the SOFTWARE
//! hive's Windows version): any bytes give a version, none or an error, in bounded
//! time and memory, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(v)) = images::hive::windows_version(std::io::Cursor::new(data)) {
        let _ = v.describe();
    }
});
