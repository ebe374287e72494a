//! A venue kiosk in thirty lines: watch the stream a ticket names (or the one on the local
//! network), print where to point the screen's browser, follow what happens, stop on Ctrl-C.
//!
//! `cargo run -p shoal --example kiosk -- shoal1…` (no ticket: looks on the LAN).

use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ticket: shoal::Ticket = match std::env::args().nth(1) {
        Some(text) => text.parse()?,
        None => shoal::Viewer::find_on_lan(None, Duration::from_secs(10)).await?,
    };
    let viewer = shoal::Viewer::builder(ticket)
        .http(Some("127.0.0.1:8080".parse()?))
        .upload_kbps(Some(2000))
        .start()
        .await?;
    println!("kiosk: open {} full screen", viewer.page_url().expect("served"));
    let mut events = viewer.events();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = events.next() => match event {
                Some(shoal::ViewerEvent::SegmentPublished { .. }) => {}
                Some(event) => println!("kiosk: {event:?}"),
                None => break,
            },
        }
    }
    viewer.shutdown().await;
    Ok(())
}
