//! The Kubernetes manifests in `deploy/k8s/` agree with the edge they deploy: the
//! ConfigMap's `edge.toml` is a valid edge config whose files sit where the Deployment
//! mounts them, the ports match, the probes hit a route the edge serves, and the
//! autoscaler's metric is made from a series the edge exports. (Schema validity is
//! checked separately in CI by kubernetes-validate.) Plain text scanning: no YAML
//! parser for a handful of known keys.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use splitstream_tail::batcher::BatchKey;
use splitstream_tail::config::EdgeConfig;
use splitstream_tail::metrics::{EdgeMetrics, Health, MetricsServer};

fn manifest(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/k8s")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The block under `key: |` in a YAML text, de-indented.
fn literal_block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let header = lines.next().expect("block key present");
    let outer = header.len() - header.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > outer)
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    body.iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `mountPath:` value in a manifest.
fn mount_paths(yaml: &str) -> Vec<PathBuf> {
    yaml.lines()
        .filter_map(|l| l.trim().strip_prefix("mountPath:"))
        .map(|p| PathBuf::from(p.trim()))
        .collect()
}

#[test]
fn the_configmap_is_an_edge_config_whose_files_are_mounted() {
    let toml = literal_block(&manifest("configmap.yaml"), "edge.toml");
    let cfg = EdgeConfig::parse(&toml, Path::new("edge.toml"), Path::new("/etc/splitstream"))
        .expect("the ConfigMap's edge.toml parses");
    cfg.validate().expect("and is complete");
    let deployment = manifest("deployment.yaml");
    let mounts = mount_paths(&deployment);
    let mounted = |p: &Path| mounts.iter().any(|m| p.starts_with(m));
    let tokens = cfg.tokens_file.as_deref().expect("tokens_file set");
    assert!(mounted(tokens), "{} is not mounted", tokens.display());
    for p in [&cfg.tls.cert, &cfg.tls.key] {
        let p = p
            .as_deref()
            .expect("a fleet shares one certificate: cert and key set");
        assert!(mounted(p), "{} is not mounted", p.display());
    }
    for m in &cfg.models {
        assert!(
            mounted(&m.weights),
            "{} is not mounted",
            m.weights.display()
        );
    }
    assert!(
        deployment.contains(r#"args: ["--config", "/etc/splitstream/edge.toml"]"#)
            && mounts.contains(&PathBuf::from("/etc/splitstream/edge.toml")),
        "the edge is started with the mounted config"
    );

    // Ports: QUIC in the container and the Services, metrics in probes and annotations.
    assert_eq!(cfg.listen.port(), 4433);
    assert!(deployment.contains("containerPort: 4433\n              protocol: UDP"));
    assert!(cfg.metrics.enabled);
    assert!(
        cfg.metrics.listen.ip().is_unspecified(),
        "metrics must listen beyond loopback for the kubelet and Prometheus"
    );
    assert_eq!(cfg.metrics.listen.port(), 9464);
    assert!(deployment.contains("containerPort: 9464"));
    assert!(deployment.contains(r#"prometheus.io/port: "9464""#));
    let service = manifest("service.yaml");
    assert_eq!(service.matches("protocol: UDP").count(), 2);
    assert!(!service.contains("9464"), "metrics are not for devices");
}

/// The value after `key:` on each line that has it.
fn values<'a>(yaml: &'a str, key: &str) -> Vec<&'a str> {
    yaml.lines()
        .filter_map(|l| l.trim().strip_prefix(key))
        .map(|v| v.trim().trim_matches('"'))
        .collect()
}

/// GET `path` from an HTTP/1.1 server: the status code.
async fn get_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.expect("read");
    let text = String::from_utf8_lossy(&resp);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"))
}

#[tokio::test]
async fn probes_and_scrapes_hit_routes_the_edge_serves() {
    let deployment = manifest("deployment.yaml");
    let mut paths: Vec<&str> = values(&deployment, "path:");
    paths.extend(values(&deployment, "prometheus.io/path:"));
    assert!(
        paths.contains(&"/healthz") && paths.contains(&"/metrics"),
        "{paths:?}"
    );
    let health = Health::new();
    let server = MetricsServer::bind(
        "127.0.0.1:0".parse().expect("address"),
        Arc::new(EdgeMetrics::new()),
        health.clone(),
    )
    .await
    .expect("bind");
    let addr = server.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    for path in &paths {
        assert_eq!(get_status(addr, path).await, 200, "GET {path}");
    }
    // Draining takes the pod out of the Services: the readiness path must say so.
    health.set_draining();
    assert_eq!(get_status(addr, "/healthz").await, 503);
    let _ = stop.send(());
    let _ = task.await;
}

#[test]
fn the_autoscaler_metric_is_built_from_a_series_the_edge_exports() {
    let metrics = EdgeMetrics::new();
    metrics.queue_delay(&BatchKey::new("vit-tiny", 4), Duration::from_millis(3));
    let exported = metrics.encode();
    let rules = manifest("adapter/prometheus-adapter-rules.yaml");
    for series in [
        "splitstream_queue_seconds_sum",
        "splitstream_queue_seconds_count",
    ] {
        assert!(
            exported.contains(series),
            "the edge does not export {series}"
        );
        assert!(
            rules.contains(series),
            "the adapter rule does not read {series}"
        );
    }
    assert!(rules.contains(r#"as: "splitstream_queue_delay_seconds""#));
    let hpa = manifest("hpa.yaml");
    assert!(hpa.contains("name: splitstream_queue_delay_seconds"));
    assert!(hpa.contains("name: splitstream-edge"));
}
