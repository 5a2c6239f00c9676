//! Tests of `tug-core` through its public interface: properties that must
//! hold for every input, not only for the examples the unit tests pick.

mod no_panics;
