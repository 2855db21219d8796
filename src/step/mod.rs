//! Running one step's action: a shell script ([`shell`]) or a typed action ([`typed`]).

pub mod shell;
pub mod topology;
pub mod typed;
