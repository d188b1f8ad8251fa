//! Integration tests live in `loopback/` (cargo test) and `e2e/` (root, .ci/run).
