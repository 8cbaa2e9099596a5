//! patron-core
