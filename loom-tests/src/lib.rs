//! Loom model checks of orcwire's concurrency protocols. The models live in
//! `tests/` and only build with `RUSTFLAGS="--cfg orcwire_loom"`.
