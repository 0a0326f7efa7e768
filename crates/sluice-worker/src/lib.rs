//! sluice-worker
