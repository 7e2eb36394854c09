//! twill-shared: what every Twill component agrees on.
//!
//! - [`selector`]: Calico's label selector language.
//! - [`resource`]: every resource kind, its validation, and parsing files of documents.
//! - [`convert`]: Kubernetes NetworkPolicy to the one internal policy form.
//!
//! Layers: everything outside `datastore::{sqlite, etcd}` and `syncer::driver` is pure (no
//! sockets, files, clocks or tasks) and builds with `--no-default-features`; the backends and
//! the async syncer driver sit behind the `runtime` feature.

pub mod convert;
pub mod resource;
pub mod selector;
