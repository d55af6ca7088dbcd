//! The inorder engine (work in progress: see the engine issue).
#![warn(missing_docs)]
