//! sluice-telemetry
