//! discovery:// targets and balancing for tonic.
