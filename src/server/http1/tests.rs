//! Tests of the connection driver.
