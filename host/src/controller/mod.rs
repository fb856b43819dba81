//! The control loop: what should run (machines in our Contexts), what does run (agents
//! the engines list), and the queue of machines whose two differ.

pub mod queue;
pub mod reconciler;
