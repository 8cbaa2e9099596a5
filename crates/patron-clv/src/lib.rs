//! patron-clv
