//! patron-store
