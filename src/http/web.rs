//! The web client's files, embedded so the server serves them from any working directory.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// Every file of `web/` the page loads: its name and its content. A new module of the client
/// goes here (and in the browser tests' routing, `tests/browser/harness.mjs`).
const FILES: &[(&str, &str)] = &[
    ("index.html", include_str!("../../web/index.html")),
    ("style.css", include_str!("../../web/style.css")),
    ("app.js", include_str!("../../web/app.js")),
    ("chat.js", include_str!("../../web/chat.js")),
    ("chatpanel.js", include_str!("../../web/chatpanel.js")),
    ("controls.js", include_str!("../../web/controls.js")),
    ("layout.js", include_str!("../../web/layout.js")),
    ("lobby.js", include_str!("../../web/lobby.js")),
    ("localmedia.js", include_str!("../../web/localmedia.js")),
    ("media.js", include_str!("../../web/media.js")),
    ("peers.js", include_str!("../../web/peers.js")),
    ("people.js", include_str!("../../web/people.js")),
    ("session.js", include_str!("../../web/session.js")),
    ("signaling.js", include_str!("../../web/signaling.js")),
    ("stage.js", include_str!("../../web/stage.js")),
    ("state.js", include_str!("../../web/state.js")),
    ("stats.js", include_str!("../../web/stats.js")),
    ("tiles.js", include_str!("../../web/tiles.js")),
    ("ui.js", include_str!("../../web/ui.js")),
    ("views.js", include_str!("../../web/views.js")),
];

/// `GET /`: the page.
pub async fn index() -> Response {
    file("index.html")
}

/// `GET /{file}`: one of the client's files, or 404.
pub async fn asset(Path(name): Path<String>) -> Response {
    file(&name)
}

fn file(name: &str) -> Response {
    let Some((_, body)) = FILES.iter().find(|(file, _)| *file == name) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let content_type = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "text/javascript; charset=utf-8",
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        *body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every module the client imports is served: a file left out of [`FILES`] would break
    /// the page only in a browser.
    #[test]
    fn every_import_of_the_client_is_served() {
        let served: Vec<&str> = FILES.iter().map(|(name, _)| *name).collect();
        for (name, body) in FILES.iter().filter(|(name, _)| name.ends_with(".js")) {
            for line in body
                .lines()
                .filter(|l| l.trim_start().starts_with("import "))
            {
                let Some(target) = line.split('\'').nth(1).or_else(|| line.split('"').nth(1))
                else {
                    continue;
                };
                let target = target.trim_start_matches("./");
                assert!(
                    served.contains(&target),
                    "{name} imports {target}, which is not served"
                );
            }
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".js") || name.ends_with(".css") || name.ends_with(".html") {
                assert!(served.contains(&name.as_str()), "web/{name} is not served");
            }
        }
    }
}
