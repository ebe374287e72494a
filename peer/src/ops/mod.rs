//! Running a node as a program: flags and config files (`cli`), the terminal's status line
//! (`status`) and log lines that do not tear it (`log`).

pub mod cli;
pub mod log;
pub mod status;
