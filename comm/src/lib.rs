//! frugal-comm
