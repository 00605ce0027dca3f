//! certkeeper library
