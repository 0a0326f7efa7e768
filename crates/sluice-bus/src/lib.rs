//! sluice-bus
