//! patron-stream
