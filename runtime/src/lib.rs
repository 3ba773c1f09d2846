//! frugal-runtime
