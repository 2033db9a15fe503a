//! The registry fixture itself (`drover_tests::registry`): a real `docker-registry` over
//! plain HTTP and over TLS with basic auth serves what `skopeo` pushed from `umoci`
//! layouts, the proxy counts and cuts blob downloads as the resume tests need, image
//! indexes carry their platforms, and the sample-app image runs.

use std::io::Read as _;
use std::time::Duration;

use drover_tests::block_on;
use drover_tests::registry::image::{OCI_INDEX, OCI_MANIFEST, padding_bytes, sha256_digest};
use drover_tests::registry::{LayerOp, OciImage, Registry, SampleImage, TarLayer};

/// A two-layer image: files, a directory, a symlink and a hard link, then a layer that
/// deletes a file and empties a directory.
fn small_image() -> OciImage {
    let mut image = OciImage::new().expect("new image");
    image
        .layer(&[
            LayerOp::file("/etc/greeting", "hello\n"),
            LayerOp::dir("/srv/cache").owned_by(1000, 1000).with_mode(0o750),
            LayerOp::file("/srv/cache/old", "stale").owned_by(1000, 1000),
            LayerOp::executable("/usr/bin/tool", "#!/bin/sh\n").with_mode(0o4755),
            LayerOp::symlink("/usr/bin/tool-link", "tool"),
            LayerOp::hardlink("/usr/bin/tool-hard", "/usr/bin/tool"),
            LayerOp::file("/doomed", "gone soon"),
        ])
        .expect("first layer")
        .layer(&[LayerOp::remove("/doomed"), LayerOp::replace_dir("/srv/cache")])
        .expect("second layer");
    image
}

/// The entry names of a gzip-compressed layer tarball.
fn layer_entries(blob: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(blob));
    archive
        .entries()
        .expect("layer tarball")
        .map(|entry| String::from_utf8_lossy(&entry.expect("entry").path_bytes()).into_owned())
        .collect()
}

async fn get(
    client: &reqwest::Client,
    url: String,
    accept: &str,
    credentials: Option<(&str, &str)>,
) -> reqwest::Response {
    let mut request = client.get(url).header("accept", accept);
    if let Some((user, password)) = credentials {
        request = request.basic_auth(user, Some(password));
    }
    request.send().await.expect("request")
}

#[test]
fn plain_registry_serves_the_manifest_digest_skopeo_pushed() {
    let registry = Registry::start_plain().expect("registry");
    let image = small_image();
    let pushed = image.push(&registry, "drover/small:v1").expect("push");
    assert_eq!(pushed, image.manifest_digest().expect("local digest"));

    let client = registry.http_client();
    block_on(async {
        let url = format!("{}/v2/drover/small/manifests/v1", registry.base_url());
        let response = get(&client, url, OCI_MANIFEST, None).await;
        assert_eq!(response.status(), 200);
        let header = response.headers()["docker-content-digest"]
            .to_str()
            .expect("header")
            .to_owned();
        assert_eq!(header, pushed);
        let body = response.bytes().await.expect("body");
        assert_eq!(sha256_digest(&body), pushed);
        let manifest: serde_json::Value = serde_json::from_slice(&body).expect("manifest JSON");
        let layers: Vec<String> = manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|layer| layer["digest"].as_str().expect("digest").to_owned())
            .collect();
        assert_eq!(layers, image.layer_digests().expect("local layers"));
        assert_eq!(layers.len(), 2);

        // The second layer deletes with whiteouts, and the registry serves it as pushed.
        let url = format!("{}/v2/drover/small/blobs/{}", registry.base_url(), layers[1]);
        let blob = get(&client, url, "*/*", None).await.bytes().await.expect("blob");
        assert_eq!(sha256_digest(&blob), layers[1]);
        let entries = layer_entries(&blob);
        assert!(entries.iter().any(|name| name == ".wh.doomed"), "{entries:?}");
        assert!(entries.iter().any(|name| name == "srv/cache/.wh.old"), "{entries:?}");

        // A corrupted blob keeps its size but no longer matches its digest.
        registry.corrupt_blob(&layers[1]).expect("corrupt");
        let url = format!("{}/v2/drover/small/blobs/{}", registry.base_url(), layers[1]);
        let corrupted = get(&client, url, "*/*", None).await.bytes().await.expect("blob");
        assert_eq!(corrupted.len(), blob.len());
        assert_ne!(sha256_digest(&corrupted), layers[1]);
    });

    // The reference unpacking keeps modes, owners and links.
    let scratch = tempfile::tempdir().expect("scratch");
    let rootfs = image.unpack(&scratch.path().join("bundle")).expect("unpack");
    use std::os::unix::fs::MetadataExt as _;
    let tool = std::fs::metadata(rootfs.join("usr/bin/tool")).expect("tool");
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    let hard = std::fs::metadata(rootfs.join("usr/bin/tool-hard")).expect("hard link");
    assert_eq!((hard.ino(), hard.nlink()), (tool.ino(), 2));
    assert_eq!(
        std::fs::read_link(rootfs.join("usr/bin/tool-link")).expect("symlink"),
        std::path::Path::new("tool")
    );
    let cache = std::fs::metadata(rootfs.join("srv/cache")).expect("cache");
    assert_eq!((cache.uid(), cache.gid(), cache.mode() & 0o7777), (1000, 1000, 0o750));
    assert!(!rootfs.join("doomed").exists());
    assert!(!rootfs.join("srv/cache/old").exists());
}

#[test]
fn tls_registry_requires_basic_auth() {
    let registry = Registry::start_tls_basic("drover", "s3cret-pass").expect("registry");
    assert!(registry.host().starts_with("127.0.0.1:"));
    assert!(registry.ca_pem_path().expect("CA").is_file());
    assert_eq!(registry.credentials(), Some(("drover", "s3cret-pass")));
    let image = small_image();
    let pushed = image.push(&registry, "private/app:1").expect("push with credentials");
    let proxy = registry.counting_proxy().expect("proxy");

    let client = registry.http_client();
    block_on(async {
        let base = registry.base_url();
        assert!(base.starts_with("https://"));
        let anonymous = get(&client, format!("{base}/v2/"), "*/*", None).await;
        assert_eq!(anonymous.status(), 401);
        let challenge = anonymous.headers()["www-authenticate"].to_str().expect("challenge");
        assert!(challenge.starts_with("Basic "), "{challenge}");
        let wrong = get(&client, format!("{base}/v2/"), "*/*", Some(("drover", "wrong"))).await;
        assert_eq!(wrong.status(), 401);
        let right = get(&client, format!("{base}/v2/"), "*/*", registry.credentials()).await;
        assert_eq!(right.status(), 200);

        let url = format!("{base}/v2/private/app/manifests/1");
        assert_eq!(get(&client, url.clone(), OCI_MANIFEST, None).await.status(), 401);
        let response = get(&client, url, OCI_MANIFEST, registry.credentials()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["docker-content-digest"].to_str().expect("header"),
            pushed
        );

        // The proxy speaks TLS with a certificate from the same CA and passes auth through.
        let layer = image.layer_digests().expect("layers")[0].clone();
        let url = format!("https://{}/v2/private/app/blobs/{layer}", proxy.host());
        assert_eq!(get(&client, url.clone(), "*/*", None).await.status(), 401);
        let blob = get(&client, url, "*/*", registry.credentials())
            .await
            .bytes()
            .await
            .expect("blob");
        assert_eq!(sha256_digest(&blob), layer);
    });
    assert_eq!(proxy.blob_bytes(), image.layer_sizes().expect("sizes")[0]);
    let fetches = proxy.fetches();
    assert_eq!(fetches.len(), 2, "{fetches:?}");
    assert_eq!((fetches[0].status, fetches[1].status), (401, 200));
    assert!(fetches[1].complete && !fetches[1].dropped);
}

#[test]
fn faulty_proxy_cuts_the_first_download_of_a_blob_and_a_range_request_completes_it() {
    const CUT: u64 = 64 * 1024;
    let registry = Registry::start_plain().expect("registry");
    let mut image = OciImage::new().expect("image");
    image
        .layer(&[LayerOp::file("/big.bin", padding_bytes(1 << 20, 7, 0))])
        .expect("layer");
    image.push(&registry, "drover/big:1").expect("push");
    let layer = image.layer_digests().expect("layers")[0].clone();
    let size = image.layer_sizes().expect("sizes")[0];
    assert!(size > 2 * CUT, "the layer is {size} bytes");
    let proxy = registry.proxy_dropping_after(CUT).expect("proxy");
    let url = format!("http://{}/v2/drover/big/blobs/{layer}", proxy.host());

    let client = registry.http_client();
    block_on(async {
        let mut response = get(&client, url.clone(), "*/*", None).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.content_length(), Some(size));
        let mut received = Vec::new();
        let cut = loop {
            match tokio::time::timeout(Duration::from_secs(30), response.chunk()).await {
                Err(_) => panic!("the proxy neither sent nor cut within 30 s"),
                Ok(Ok(Some(chunk))) => received.extend_from_slice(&chunk),
                Ok(Ok(None)) => break false,
                Ok(Err(_)) => break true,
            }
        };
        assert!(cut, "the first download must be cut");
        assert_eq!(received.len() as u64, CUT);

        let response = client
            .get(url.clone())
            .header("range", format!("bytes={CUT}-"))
            .send()
            .await
            .expect("ranged request");
        assert_eq!(response.status(), 206);
        received.extend_from_slice(&response.bytes().await.expect("rest"));
        assert_eq!(sha256_digest(&received), layer);

        // Later whole downloads pass untouched.
        let again = get(&client, url.clone(), "*/*", None)
            .await
            .bytes()
            .await
            .expect("again");
        assert_eq!(sha256_digest(&again), layer);
    });

    let fetches = proxy.fetches();
    assert_eq!(fetches.len(), 3, "{fetches:?}");
    assert!(fetches[0].dropped && !fetches[0].complete && fetches[0].bytes == CUT);
    assert_eq!(fetches[1].range.as_deref(), Some(format!("bytes={CUT}-").as_str()));
    assert!(
        fetches[1].complete && !fetches[1].dropped && fetches[1].bytes == size - CUT,
        "{fetches:?} size {size}"
    );
    assert!(fetches[2].complete && fetches[2].bytes == size);
    assert_eq!(proxy.blob_bytes(), 2 * size);
    proxy.reset_counts();
    assert_eq!(proxy.blob_bytes(), 0);
}

#[test]
fn an_index_carries_the_platforms_of_its_images() {
    let registry = Registry::start_plain().expect("registry");
    let mut amd64 = OciImage::new().expect("image");
    amd64.layer(&[LayerOp::file("/arch", "amd64")]).expect("layer");
    let mut arm64 = OciImage::new().expect("image");
    arm64
        .layer(&[LayerOp::file("/arch", "arm64")])
        .expect("layer")
        .set_platform("linux", "arm64")
        .expect("platform");
    let index = OciImage::push_index(&registry, "drover/multi:1", &[&amd64, &arm64]).expect("push index");
    let foreign = OciImage::push_index_as(
        &registry,
        "drover/multi:no-amd64",
        &[(&arm64, "linux/arm64/v8"), (&amd64, "linux/s390x")],
    )
    .expect("push an index without linux/amd64");
    assert_ne!(index, foreign);

    let client = registry.http_client();
    block_on(async {
        let base = registry.base_url();
        let accept = format!("{OCI_INDEX}, {OCI_MANIFEST}");
        let response = get(&client, format!("{base}/v2/drover/multi/manifests/1"), &accept, None).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], OCI_INDEX);
        assert_eq!(
            response.headers()["docker-content-digest"].to_str().expect("header"),
            index
        );
        let body: serde_json::Value = response.json().await.expect("index JSON");
        let platforms: Vec<(String, String)> = body["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .map(|entry| {
                (
                    entry["platform"]["architecture"]
                        .as_str()
                        .expect("architecture")
                        .to_owned(),
                    entry["digest"].as_str().expect("digest").to_owned(),
                )
            })
            .collect();
        assert_eq!(
            platforms,
            vec![
                ("amd64".to_owned(), amd64.manifest_digest().expect("digest")),
                ("arm64".to_owned(), arm64.manifest_digest().expect("digest")),
            ]
        );
        for (_, digest) in &platforms {
            let url = format!("{base}/v2/drover/multi/manifests/{digest}");
            assert_eq!(get(&client, url, OCI_MANIFEST, None).await.status(), 200);
        }

        let response = get(
            &client,
            format!("{base}/v2/drover/multi/manifests/no-amd64"),
            &accept,
            None,
        )
        .await;
        let body: serde_json::Value = response.json().await.expect("index JSON");
        let platforms: Vec<String> = body["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .map(|entry| {
                let platform = &entry["platform"];
                let mut text = format!("{}/{}", platform["os"].as_str().expect("os"), platform["architecture"]);
                if let Some(variant) = platform["variant"].as_str() {
                    text.push('/');
                    text.push_str(variant);
                }
                text.replace('"', "")
            })
            .collect();
        assert_eq!(platforms, vec!["linux/arm64/v8", "linux/s390x"]);
    });
}

#[test]
fn raw_layers_keep_opaque_markers_and_hostile_names() {
    let registry = Registry::start_plain().expect("registry");
    let mut image = OciImage::new().expect("image");
    image.layer(&[LayerOp::file("/app/old", "old")]).expect("layer");
    let tarball = TarLayer::new()
        .dir("app", 0o755)
        .opaque("app")
        .file("app/new", b"new", 0o644)
        .whiteout("/etc/gone")
        .raw(tar::EntryType::Regular, b"../escape", None, b"out")
        .raw(tar::EntryType::Symlink, b"app/up", Some(b"/../../etc"), b"")
        .into_bytes();
    image.raw_layer(&tarball).expect("raw layer");
    image.push(&registry, "drover/hostile:1").expect("push");
    let layer = image.layer_digests().expect("layers")[1].clone();
    let client = registry.http_client();
    let blob = block_on(async {
        let url = format!("{}/v2/drover/hostile/blobs/{layer}", registry.base_url());
        get(&client, url, "*/*", None).await.bytes().await.expect("blob")
    });
    assert_eq!(
        layer_entries(&blob),
        [
            "app",
            "app/.wh..wh..opq",
            "app/new",
            "etc/.wh.gone",
            "../escape",
            "app/up"
        ]
    );
}

#[test]
fn sample_images_share_unchanged_layers_and_run() {
    let registry = Registry::start_plain().expect("registry");
    let port = drover_tests::e2e::free_port();
    let mut first = SampleImage::new("1.0.0", port);
    first.padding = [256 * 1024, 0, 4096];
    let v1 = first.build().expect("v1");
    let second = SampleImage {
        data: "changed".to_owned(),
        env: vec!["APP_VERSION=2.0.0".to_owned()],
        ..first.clone()
    };
    let v2 = second.build().expect("v2");
    let (layers1, layers2) = (v1.layer_digests().expect("v1"), v2.layer_digests().expect("v2"));
    assert_eq!(layers1.len(), 3);
    assert_eq!(layers1[..2], layers2[..2], "base and app layers are reproducible");
    assert_ne!(layers1[2], layers2[2]);

    let config = v1.config().expect("config");
    assert_eq!(config["config"]["User"], "app");
    assert_eq!(config["config"]["WorkingDir"], "/app");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/app/bin/drover-sample-app"])
    );
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["--listen", format!("127.0.0.1:{port}")])
    );
    let env = config["config"]["Env"].as_array().expect("env");
    assert!(env.iter().any(|entry| entry == "APP_STAGE=image"), "{env:?}");

    // A client that has v1 downloads only the changed layer of v2.
    v1.push(&registry, "drover/sample:1").expect("push v1");
    v2.push(&registry, "drover/sample:2").expect("push v2");
    let proxy = registry.counting_proxy().expect("proxy");
    let client = registry.http_client();
    block_on(async {
        for digest in layers2.iter().filter(|digest| !layers1.contains(digest)) {
            let url = format!("http://{}/v2/drover/sample/blobs/{digest}", proxy.host());
            let blob = get(&client, url, "*/*", None).await.bytes().await.expect("blob");
            assert_eq!(&sha256_digest(&blob), digest);
        }
    });
    assert_eq!(proxy.blob_bytes(), v2.layer_sizes().expect("sizes")[2]);

    // The image's root filesystem runs the app as user app (1000), libraries and all.
    let scratch = tempfile::tempdir().expect("scratch");
    let rootfs = v1.unpack(&scratch.path().join("bundle")).expect("unpack");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("passwd");
    assert!(passwd.contains("app:x:1000:1000:"));
    let mut app = std::process::Command::new("chroot")
        .args(["--userspec=1000:1000"])
        .arg(&rootfs)
        .args(["/app/bin/drover-sample-app", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--version-text", "1.0.0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("chroot");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut answer = None;
    while std::time::Instant::now() < deadline && answer.is_none() {
        if let Ok(Some(status)) = app.try_wait() {
            let mut stderr = String::new();
            let _ = app.stderr.take().expect("stderr").read_to_string(&mut stderr);
            panic!("the sample app exited ({status}): {stderr}");
        }
        answer = drover_tests::e2e::AgentHost::get(port, "/healthz");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = app.kill();
    let _ = app.wait();
    assert_eq!(answer.as_deref(), Some("ok"));
}
