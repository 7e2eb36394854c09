//! The I/O edges of `twill-bgpd`: sockets ([`socket`]), the control socket ([`control`]) and
//! the driver loop ([`daemon`]) that feeds the sans-IO [`crate::speaker::Speaker`].
//!
//! Task topology: one listener task per listen address and one reader and one writer task
//! per connection send [`daemon::Event`]s to the driver; the driver alone touches the
//! speaker, carries out its actions and sleeps until its next timer.

pub mod control;
pub mod daemon;
pub mod kernel;
pub mod socket;
