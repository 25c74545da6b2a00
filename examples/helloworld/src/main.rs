//! Knative's hello-world sample app: answers `Hello <TARGET>!` on `$PORT`
//! (default 8080). `K_REVISION`, when set, is added so a reader can see which
//! revision answered a split.

use std::net::SocketAddr;

use axum::Router;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
    let target = std::env::var("TARGET").unwrap_or_else(|_| "World".to_owned());
    let greeting = match std::env::var("K_REVISION") {
        Ok(revision) => format!("Hello {target}! ({revision})\n"),
        Err(_) => format!("Hello {target}!\n"),
    };
    let app = Router::new().fallback(move || {
        let greeting = greeting.clone();
        async move { greeting }
    });
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    eprintln!("helloworld: listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
