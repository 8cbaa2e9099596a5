//! patron-synth
