//! The HTTP surface: web client, health, metrics, TLS.

mod common;

use std::sync::Arc;

use common::*;
use switchboard::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn serves_the_web_client_health_and_metrics() {
    let server = start_server().await;
    let base = server.http_url();
    let (status, body) = get(&format!("{base}/")).await;
    assert_eq!(status, 200);
    assert!(body.contains("<title>switchboard</title>"));
    assert!(body.contains("/app.js"));
    for asset in ["/app.js", "/signaling.js", "/style.css"] {
        let (status, body) = get(&format!("{base}{asset}")).await;
        assert_eq!(status, 200, "{asset}");
        assert!(body.len() > 500, "{asset} has content");
    }
    let (status, body) = get(&format!("{base}/healthz")).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, body) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    for name in [
        "switchboard_rooms ",
        "switchboard_participants ",
        "switchboard_published_tracks ",
        "switchboard_packets_out_total ",
        "switchboard_bytes_out_total ",
    ] {
        assert!(body.contains(name), "metrics lack {name}");
    }
    let (status, _) = get(&format!("{base}/nope")).await;
    assert_eq!(status, 404);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_admin_token_guards_the_rooms_api() {
    let mut config = Config::ephemeral();
    config.admin_token = Some("admin".into());
    let server = start_server_with(config).await;
    let (status, _) = get(&format!("{}/api/rooms", server.http_url())).await;
    assert_eq!(status, 401);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn refuses_to_listen_off_loopback_without_tls() {
    let mut config = Config::ephemeral();
    config.listen = "0.0.0.0:0".parse().unwrap();
    let err = Server::start(config).await.err().expect("refused");
    assert!(err.to_string().contains("--tls-cert"), "{err}");
}

#[tokio::test]
async fn serves_https_with_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut config = Config::ephemeral();
    config.tls_cert = Some(cert_path);
    config.tls_key = Some(key_path);
    let server = start_server_with(config).await;
    assert!(server.ws_url().starts_with("wss://"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");
    server.shutdown().await.unwrap();
}
