//! The admin server: /ready, /config_dump, /clusters, /stats/prometheus.
