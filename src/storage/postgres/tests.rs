//! Tests against a real PostgreSQL: faults, migrations, TLS, notifications.
