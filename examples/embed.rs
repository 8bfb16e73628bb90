//! Mounts the Durable Streams router inside an existing axum application.
//!
//! The application keeps its own routes (`/` and `/api/hello`); the protocol
//! lives under `/streams`, so a stream is at `/streams/v1/stream/<name>` and
//! the health endpoints at `/streams/healthz` and `/streams/readyz`.
//!
//! ```text
//! cargo run --example embed                      # listens on 127.0.0.1:3000
//! EMBED_BIND_ADDRESS=0.0.0.0:8080 cargo run --example embed
//! ```
//!
//! Ctrl-C fires the [`ShutdownToken`], so open long-polls and SSE
//! connections end at once instead of holding the graceful shutdown open.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use durable_streams_server::{Config, InMemoryStorage, ShutdownToken, build_router_with_ready};
use tracing_subscriber::EnvFilter;

const DEFAULT_BIND_ADDRESS: &str = "127.0.0.1:3000";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        ))
        .init();

    // The defaults: in-memory storage, streams under `/v1/stream`. Use
    // `Config::from_env()` instead to honour the `DS_*` variables.
    let config = Config::default();
    let storage = Arc::new(InMemoryStorage::new(config.limits.max_memory_bytes));
    let shutdown = ShutdownToken::new();
    let (streams, readiness) = build_router_with_ready(storage, &config, shutdown.clone());

    let app = Router::new()
        .route(
            "/",
            get(|| async { "embedding app: streams are under /streams\n" }),
        )
        .route("/api/hello", get(|| async { "hello from the host app\n" }))
        .nest("/streams", streams);

    let address =
        std::env::var("EMBED_BIND_ADDRESS").unwrap_or_else(|_| DEFAULT_BIND_ADDRESS.into());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    // `/streams/readyz` answers 503 until this is set.
    readiness.set_ready(true);

    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            if let Err(error) = tokio::signal::ctrl_c().await {
                // Without a signal handler we would stop at once; keep serving.
                tracing::warn!(%error, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
            tracing::info!("shutting down");
            readiness.set_ready(false);
            // Releases every live reader; in-flight requests then finish.
            shutdown.cancel();
        })
        .await?;
    Ok(())
}
