//! twill-shared: what every Twill component agrees on.
//!
//! - [`selector`]: Calico's label selector language.
//! - [`resource`]: every resource kind, its validation, and parsing files of documents.
//! - [`convert`]: Kubernetes NetworkPolicy to the one internal policy form.
//! - [`datastore`]: the datastore trait, its revision semantics, and the SQLite and etcd
//!   backends.
//! - [`syncer`]: list + watch with resync, emitting synthetic deletes.
//! - [`client`]: typed, all-or-nothing apply/create/replace/delete of resources.
//!
//! Layers: everything outside `datastore::{sqlite, etcd}` and `syncer::driver` is pure (no
//! sockets, files, clocks or tasks) and builds with `--no-default-features`; the backends and
//! the async syncer driver sit behind the `runtime` feature.

#[cfg(feature = "runtime")]
pub mod client;
pub mod convert;
pub mod datastore;
pub mod kubernetes;
pub mod resource;
pub mod selector;
pub mod syncer;
