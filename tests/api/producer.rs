//! Idempotent producers: `Producer-Id`, `Producer-Epoch`, `Producer-Seq`.

use crate::helpers::*;

struct Producer<'a> {
    app: &'a TestApp,
    stream: &'a str,
    id: &'a str,
}

impl Producer<'_> {
    async fn send(&self, epoch: &str, seq: &str, body: &'static str) -> reqwest::Response {
        self.app
            .client
            .post(self.app.url(self.stream))
            .header("content-type", "text/plain")
            .header("producer-id", self.id)
            .header("producer-epoch", epoch)
            .header("producer-seq", seq)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn close(&self, epoch: &str, seq: &str) -> reqwest::Response {
        self.app
            .client
            .post(self.app.url(self.stream))
            .header("stream-closed", "true")
            .header("producer-id", self.id)
            .header("producer-epoch", epoch)
            .header("producer-seq", seq)
            .send()
            .await
            .unwrap()
    }
}

async fn contents(app: &TestApp, name: &str) -> String {
    app.read(name, None).await.text().await.unwrap()
}

#[tokio::test]
async fn sequence_accepts_deduplicates_and_detects_gaps() {
    let app = spawn_app(test_config()).await;
    app.create("p", "text/plain").await;
    let producer = Producer {
        app: &app,
        stream: "p",
        id: "writer-1",
    };

    let first = producer.send("0", "0", "a").await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "producer-epoch"), "0");
    assert_eq!(header(&first, "producer-seq"), "0");
    assert_eq!(header(&first, "stream-next-offset"), offset(1));
    let second = producer.send("0", "1", "b").await;
    assert_eq!(second.status(), 200);
    assert_eq!(header(&second, "producer-seq"), "1");

    // Retries of accepted requests: 204, nothing written, the highest
    // accepted seq echoed.
    for seq in ["1", "0"] {
        let retry = producer.send("0", seq, "dup").await;
        assert_eq!(retry.status(), 204, "seq {seq}");
        assert_eq!(header(&retry, "producer-seq"), "1");
        assert_eq!(header(&retry, "producer-epoch"), "0");
    }

    let gap = producer.send("0", "3", "c").await;
    assert_eq!(header(&gap, "producer-expected-seq"), "2");
    assert_eq!(header(&gap, "producer-received-seq"), "3");
    assert_eq!(expect_problem(gap, 409).await, "PRODUCER_SEQ_GAP");

    assert_eq!(contents(&app, "p").await, "ab");
}

#[tokio::test]
async fn first_request_of_an_unknown_producer_must_be_seq_0() {
    let app = spawn_app(test_config()).await;
    app.create("p0", "text/plain").await;
    let producer = Producer {
        app: &app,
        stream: "p0",
        id: "late",
    };
    let response = producer.send("0", "5", "x").await;
    assert_eq!(header(&response, "producer-expected-seq"), "0");
    assert_eq!(header(&response, "producer-received-seq"), "5");
    assert_eq!(expect_problem(response, 409).await, "PRODUCER_SEQ_GAP");
}

#[tokio::test]
async fn epochs_fence_old_producers() {
    let app = spawn_app(test_config()).await;
    app.create("e", "text/plain").await;
    let producer = Producer {
        app: &app,
        stream: "e",
        id: "w",
    };
    assert_eq!(producer.send("1", "0", "a").await.status(), 200);
    assert_eq!(producer.send("1", "1", "b").await.status(), 200);

    let bad_start = producer.send("2", "1", "x").await;
    assert_eq!(expect_problem(bad_start, 400).await, "PRODUCER_EPOCH_SEQ");

    let bumped = producer.send("2", "0", "c").await;
    assert_eq!(bumped.status(), 200);
    assert_eq!(header(&bumped, "producer-epoch"), "2");

    let stale = producer.send("1", "2", "zombie").await;
    assert_eq!(header(&stale, "producer-epoch"), "2");
    assert_eq!(expect_problem(stale, 403).await, "PRODUCER_EPOCH_STALE");

    assert_eq!(contents(&app, "e").await, "abc");
}

#[tokio::test]
async fn producers_are_independent_and_checked_before_stream_seq() {
    let app = spawn_app(test_config()).await;
    app.create("multi", "text/plain").await;
    let a = Producer {
        app: &app,
        stream: "multi",
        id: "a",
    };
    let b = Producer {
        app: &app,
        stream: "multi",
        id: "b",
    };
    assert_eq!(a.send("0", "0", "1").await.status(), 200);
    assert_eq!(b.send("0", "0", "2").await.status(), 200);
    assert_eq!(a.send("0", "1", "3").await.status(), 200);

    let with_seq = |id: &'static str, seq: &'static str, stream_seq: &'static str| {
        app.client
            .post(app.url("multi"))
            .header("content-type", "text/plain")
            .header("producer-id", id)
            .header("producer-epoch", "0")
            .header("producer-seq", seq)
            .header("stream-seq", stream_seq)
            .body("s")
            .send()
    };
    assert_eq!(with_seq("a", "2", "5").await.unwrap().status(), 200);
    // A retry of that request is a duplicate (204) although its Stream-Seq
    // would now be a regression.
    assert_eq!(with_seq("a", "2", "5").await.unwrap().status(), 204);
    // A new request with a regressing Stream-Seq is refused.
    let regress = with_seq("b", "1", "4").await.unwrap();
    assert_eq!(expect_problem(regress, 409).await, "STREAM_SEQ_CONFLICT");
    assert_eq!(contents(&app, "multi").await, "123s");
}

#[tokio::test]
async fn malformed_producer_headers_are_problems() {
    let app = spawn_app(test_config()).await;
    app.create("bad", "text/plain").await;
    let huge = "9".repeat(300);
    let cases: Vec<(Option<&str>, Option<&str>, Option<&str>)> = vec![
        (Some("p"), Some("0"), Some(huge.as_str())),
        (Some("p"), Some(huge.as_str()), Some("0")),
        (Some("p"), Some("0"), Some("9007199254740992")),
        (Some("p"), Some("0"), Some("1abc")),
        (Some("p"), Some("0xyz"), Some("0")),
        (Some("p"), Some("0"), Some("1e3")),
        (Some("p"), Some("0"), Some("-1")),
        (Some("p"), Some("0"), Some("")),
        (Some(""), Some("0"), Some("0")),
        (Some("p"), None, None),
        (None, Some("0"), Some("0")),
        (Some("p"), Some("0"), None),
    ];
    for (id, epoch, seq) in cases {
        let mut request = app
            .client
            .post(app.url("bad"))
            .header("content-type", "text/plain")
            .body("x");
        if let Some(id) = id {
            request = request.header("producer-id", id);
        }
        if let Some(epoch) = epoch {
            request = request.header("producer-epoch", epoch);
        }
        if let Some(seq) = seq {
            request = request.header("producer-seq", seq);
        }
        let response = request.send().await.unwrap();
        let label = format!(
            "{id:?} {:?} {:?}",
            epoch.map(|e| &e[..e.len().min(20)]),
            seq.map(|s| &s[..s.len().min(20)])
        );
        assert_eq!(
            expect_problem(response, 400).await,
            "INVALID_HEADER",
            "{label}"
        );
    }
    // The largest allowed number is fine.
    let max = app
        .client
        .post(app.url("bad"))
        .header("content-type", "text/plain")
        .header("producer-id", "p")
        .header("producer-epoch", "9007199254740991")
        .header("producer-seq", "0")
        .body("ok")
        .send()
        .await
        .unwrap();
    assert_eq!(max.status(), 200);
    assert_eq!(contents(&app, "bad").await, "ok");
}

#[tokio::test]
async fn non_utf8_producer_id_is_a_problem() {
    let app = spawn_app(test_config()).await;
    app.create("raw", "text/plain").await;
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: text/plain\r\n\
         Content-Length: 1\r\nProducer-Epoch: 0\r\nProducer-Seq: 0\r\nProducer-Id: ",
        app.path("raw"),
        app.addr
    )
    .into_bytes();
    request.extend_from_slice(&[0xfe, 0xff, 0xc0]);
    request.extend_from_slice(b"\r\n\r\nx");
    let response = raw_http(app.addr, &request).await;
    assert_eq!(response.expect_problem(400), "INVALID_HEADER");
    assert_eq!(contents(&app, "raw").await, "");
}

#[tokio::test]
async fn producer_close_and_its_retry() {
    let app = spawn_app(test_config()).await;
    app.create("pc", "text/plain").await;
    let producer = Producer {
        app: &app,
        stream: "pc",
        id: "closer",
    };
    assert_eq!(producer.send("0", "0", "a").await.status(), 200);
    let close = producer.close("0", "1").await;
    assert_eq!(close.status(), 204);
    assert_eq!(header(&close, "stream-closed"), "true");
    assert_eq!(header(&close, "producer-seq"), "1");

    // The same tuple again: a duplicate of the close.
    let retry = producer.close("0", "1").await;
    assert_eq!(retry.status(), 204);
    assert_eq!(header(&retry, "stream-closed"), "true");

    // Anything else on the closed stream is refused.
    let other = producer.send("0", "2", "late").await;
    assert_eq!(header(&other, "stream-closed"), "true");
    assert_eq!(expect_problem(other, 409).await, "STREAM_CLOSED");
    assert_eq!(contents(&app, "pc").await, "a");
}

#[tokio::test]
async fn producer_retry_of_append_and_close_keeps_the_original() {
    let app = spawn_app(test_config()).await;
    app.create("pac", "text/plain").await;
    let send = |body: &'static str| {
        app.client
            .post(app.url("pac"))
            .header("content-type", "text/plain")
            .header("stream-closed", "true")
            .header("producer-id", "w")
            .header("producer-epoch", "0")
            .header("producer-seq", "0")
            .body(body)
            .send()
    };
    let first = send("original").await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "stream-closed"), "true");
    let retry = send("different").await.unwrap();
    assert_eq!(retry.status(), 204);
    assert_eq!(header(&retry, "stream-closed"), "true");
    assert_eq!(contents(&app, "pac").await, "original");
}

#[tokio::test]
async fn concurrent_producer_requests_write_each_seq_once() {
    let app = spawn_app(test_config()).await;
    app.create("race", "text/plain").await;
    let first = app
        .client
        .post(app.url("race"))
        .header("content-type", "text/plain")
        .header("producer-id", "w")
        .header("producer-epoch", "0")
        .header("producer-seq", "0")
        .body("0,")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    // Every seq sent twice at once: exactly one of each pair writes, the
    // other is answered as a duplicate.
    for seq in 1..=20u32 {
        let send = || {
            app.client
                .post(app.url("race"))
                .header("content-type", "text/plain")
                .header("producer-id", "w")
                .header("producer-epoch", "0")
                .header("producer-seq", seq.to_string())
                .body(format!("{seq},"))
                .send()
        };
        let (a, b) = tokio::join!(send(), send());
        let mut statuses = [a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 204], "seq {seq}");
    }
    let expected: String = (0..=20).map(|n| format!("{n},")).collect();
    assert_eq!(contents(&app, "race").await, expected);
}
