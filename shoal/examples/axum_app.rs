//! An application with a page of its own that shows the stream: the viewer serves no HTTP of
//! its own; its player page, playlist and stats are mounted under the app's server at `/tv`.
//!
//! `cargo run -p shoal --example axum_app -- shoal1… [127.0.0.1:3000]`, then open
//! http://127.0.0.1:3000/.

use axum::Router;
use axum::response::Html;
use axum::routing::get;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let ticket: shoal::Ticket = args.next().ok_or_else(|| anyhow::anyhow!("give a ticket"))?.parse()?;
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:3000".to_string());
    let viewer = shoal::Viewer::builder(ticket).http(None).start().await?;
    let name = viewer.name().to_string();
    let app = Router::new()
        .route(
            "/",
            get(move || async move {
                Html(format!(
                    "<h1>Our festival app</h1><p>Now streaming: {name}</p>\
                     <iframe src=\"/tv\" width=\"800\" height=\"600\"></iframe>"
                ))
            }),
        )
        .nest("/tv", viewer.router());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("open http://{}/", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    viewer.shutdown().await;
    Ok(())
}
