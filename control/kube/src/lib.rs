//! Cluster mode: a Kubernetes controller (in progress).
