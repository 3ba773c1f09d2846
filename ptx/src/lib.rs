//! frugal-ptx
