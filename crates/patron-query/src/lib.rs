//! patron-query
