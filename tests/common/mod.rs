//! Shared harness for the cluster tests.
