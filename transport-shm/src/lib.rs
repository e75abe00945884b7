//! orcwire-shm: the shared-memory transport for orcwire.
#![deny(missing_docs)]
