//! Live reads: long-poll and Server-Sent Events over real sockets.

use std::time::Duration;

use base64::Engine as _;

use crate::helpers::*;

fn long_poll_url(app: &TestApp, name: &str, from: &str) -> String {
    format!("{}?offset={from}&live=long-poll", app.url(name))
}

fn sse_url(app: &TestApp, name: &str, from: &str) -> String {
    format!("{}?offset={from}&live=sse", app.url(name))
}

fn assert_cursor(value: &str) {
    assert!(
        !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()),
        "cursor {value:?}"
    );
}

/// A config whose long-polls never time out during a test.
fn patient_config() -> durable_streams_server::Config {
    let mut config = test_config();
    config.transport.connection.long_poll_timeout_secs = 300;
    config
}

// ---------------------------------------------------------------- long-poll

#[tokio::test]
async fn long_poll_at_the_tail_times_out_with_204() {
    let app = spawn_app(test_config()).await;
    app.create("lp", "text/plain").await;
    let tail = app.append("lp", "text/plain", "abc").await;
    for from in [tail.as_str(), "now"] {
        let response = app
            .client
            .get(long_poll_url(&app, "lp", from))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "{from}");
        assert_eq!(header(&response, "stream-next-offset"), tail);
        assert_eq!(header(&response, "stream-up-to-date"), "true");
        assert_eq!(maybe_header(&response, "stream-closed"), None);
        assert_cursor(&header(&response, "stream-cursor"));
        assert_security_headers(&response);
        assert!(response.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn long_poll_with_data_answers_at_once_with_a_cursor() {
    let app = spawn_app(patient_config()).await;
    app.create("lpd", "text/plain").await;
    app.append("lpd", "text/plain", "hello").await;
    let response = app
        .client
        .get(long_poll_url(&app, "lpd", "-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "stream-next-offset"), offset(5));
    assert_eq!(header(&response, "stream-up-to-date"), "true");
    assert!(maybe_header(&response, "etag").is_some());
    let cursor = header(&response, "stream-cursor");
    assert_cursor(&cursor);
    assert_eq!(response.text().await.unwrap(), "hello");

    // Echoing the current cursor yields a strictly greater one.
    let again = app
        .client
        .get(format!(
            "{}&cursor={cursor}",
            long_poll_url(&app, "lpd", "-1")
        ))
        .send()
        .await
        .unwrap();
    let next: u64 = header(&again, "stream-cursor").parse().unwrap();
    assert!(next > cursor.parse::<u64>().unwrap(), "{next} vs {cursor}");
}

#[tokio::test]
async fn long_poll_wakes_on_an_append() {
    let app = spawn_app(patient_config()).await;
    app.create("wake", "text/plain").await;
    let tail = app.append("wake", "text/plain", "old").await;
    let poll = tokio::spawn(app.client.get(long_poll_url(&app, "wake", &tail)).send());
    // Whether the poll is already waiting or not, data after `tail` must be
    // what it answers with.
    app.append("wake", "text/plain", "new").await;
    let response = tokio::time::timeout(HANG_GUARD, poll)
        .await
        .expect("long-poll hung")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "stream-next-offset"), offset(6));
    assert_eq!(header(&response, "stream-up-to-date"), "true");
    assert_cursor(&header(&response, "stream-cursor"));
    assert_eq!(response.text().await.unwrap(), "new");
}

#[tokio::test]
async fn long_poll_on_a_closed_stream_returns_eof_at_once() {
    let app = spawn_app(patient_config()).await;
    app.create("lpc", "text/plain").await;
    let tail = app.append("lpc", "text/plain", "x").await;
    let close = app
        .client
        .post(app.url("lpc"))
        .header("stream-closed", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(close.status(), 204);
    for from in [tail.as_str(), "now"] {
        let response = tokio::time::timeout(
            HANG_GUARD,
            app.client.get(long_poll_url(&app, "lpc", from)).send(),
        )
        .await
        .expect("a closed stream must not make a long-poll wait")
        .unwrap();
        assert_eq!(response.status(), 204);
        assert_eq!(header(&response, "stream-closed"), "true");
        assert_eq!(header(&response, "stream-up-to-date"), "true");
        assert_eq!(header(&response, "stream-next-offset"), tail);
    }
}

#[tokio::test]
async fn long_poll_is_released_by_a_close() {
    let app = spawn_app(patient_config()).await;
    app.create("rel", "text/plain").await;
    let tail = app.append("rel", "text/plain", "x").await;
    let poll = tokio::spawn(app.client.get(long_poll_url(&app, "rel", &tail)).send());
    let close = app
        .client
        .post(app.url("rel"))
        .header("stream-closed", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(close.status(), 204);
    let response = tokio::time::timeout(HANG_GUARD, poll)
        .await
        .expect("long-poll not released by the close")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(header(&response, "stream-closed"), "true");
    assert_eq!(header(&response, "stream-next-offset"), tail);
}

#[tokio::test]
async fn long_poll_gets_the_final_data_of_an_append_and_close() {
    let app = spawn_app(patient_config()).await;
    app.create("fin", "text/plain").await;
    let tail = app.append("fin", "text/plain", "a").await;
    let poll = tokio::spawn(app.client.get(long_poll_url(&app, "fin", &tail)).send());
    let last = app
        .client
        .post(app.url("fin"))
        .header("content-type", "text/plain")
        .header("stream-closed", "true")
        .body("z")
        .send()
        .await
        .unwrap();
    assert_eq!(last.status(), 204);
    let response = tokio::time::timeout(HANG_GUARD, poll)
        .await
        .expect("long-poll hung")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "stream-closed"), "true");
    assert_eq!(response.text().await.unwrap(), "z");
}

#[tokio::test]
async fn long_poll_is_released_by_a_delete() {
    let app = spawn_app(patient_config()).await;
    app.create("del", "text/plain").await;
    let poll = tokio::spawn(app.client.get(long_poll_url(&app, "del", "now")).send());
    let deleted = app.client.delete(app.url("del")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let response = tokio::time::timeout(HANG_GUARD, poll)
        .await
        .expect("long-poll not released by the delete")
        .unwrap()
        .unwrap();
    assert_eq!(expect_problem(response, 404).await, "STREAM_NOT_FOUND");
}

#[tokio::test]
async fn live_reads_of_missing_streams_are_404() {
    let app = spawn_app(test_config()).await;
    for url in [
        long_poll_url(&app, "ghost", "-1"),
        sse_url(&app, "ghost", "-1"),
    ] {
        let response = app.client.get(url).send().await.unwrap();
        assert_eq!(expect_problem(response, 404).await, "STREAM_NOT_FOUND");
    }
}

// ---------------------------------------------------------------------- SSE

#[tokio::test]
async fn sse_response_head() {
    let app = spawn_app(test_config()).await;
    app.create("head", "text/plain").await;
    let response = app
        .client
        .get(sse_url(&app, "head", "-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "text/event-stream");
    assert!(header(&response, "cache-control").contains("no-cache"));
    assert_eq!(maybe_header(&response, "content-length"), None);
    assert_eq!(maybe_header(&response, "stream-sse-data-encoding"), None);
    assert_security_headers(&response);
    // An empty stream still reports its position at once.
    let mut sse = SseReader::new(response);
    let first = sse.next_event().await.unwrap();
    let control = first.control();
    assert_eq!(control["streamNextOffset"], ZERO_OFFSET);
    assert_eq!(control["upToDate"], true);
    assert_cursor(control["streamCursor"].as_str().unwrap());
    assert!(control.get("streamClosed").is_none());
}

#[tokio::test]
async fn sse_sends_a_backlog_as_one_data_event_and_its_control() {
    let app = spawn_app(test_config()).await;
    app.create("pairs", "text/plain").await;
    for part in ["a", "bb", "ccc"] {
        app.append("pairs", "text/plain", part).await;
    }
    let mut sse = open_sse(&app.client, &sse_url(&app, "pairs", "-1")).await;
    let events = sse.take(2).await;
    assert_eq!(events[0].event, "data", "{events:?}");
    assert_eq!(events[0].data(), "abbccc");
    let control = events[1].control();
    assert_eq!(control["streamNextOffset"], offset(6));
    assert_eq!(control["upToDate"], true, "{control}");
    assert_cursor(control["streamCursor"].as_str().unwrap());

    // Live: new data arrives as one more data + control pair.
    app.append("pairs", "text/plain", "dd").await;
    let live = sse.take(2).await;
    assert_eq!(live[0].event, "data");
    assert_eq!(live[0].data(), "dd");
    assert_eq!(live[1].control()["streamNextOffset"], offset(8));
    assert_eq!(live[1].control()["upToDate"], true);

    // From a mid-stream offset only the rest is sent.
    let mut tail_reader = open_sse(&app.client, &sse_url(&app, "pairs", &offset(3))).await;
    let events = tail_reader.take(2).await;
    assert_eq!(events[0].data(), "cccdd");
    assert_eq!(events[1].control()["streamNextOffset"], offset(8));
}

#[tokio::test]
async fn sse_offset_now_starts_at_the_tail() {
    let app = spawn_app(test_config()).await;
    app.create("nowsse", "text/plain").await;
    app.append("nowsse", "text/plain", "history").await;
    let mut sse = open_sse(&app.client, &sse_url(&app, "nowsse", "now")).await;
    let first = sse.next_event().await.unwrap();
    assert_eq!(first.control()["streamNextOffset"], offset(7));
    assert_eq!(first.control()["upToDate"], true);
    app.append("nowsse", "text/plain", "new").await;
    let events = sse.take(2).await;
    assert_eq!(events[0].data(), "new");
}

#[tokio::test]
async fn sse_splits_payload_lines_on_cr_lf_and_crlf() {
    let app = spawn_app(test_config()).await;
    app.create("lines", "text/plain").await;
    let payload = "line1\r\nevent: control\rdata: {\"streamClosed\":true}\n\nline5";
    app.append("lines", "text/plain", payload).await;
    let mut sse = open_sse(&app.client, &sse_url(&app, "lines", "-1")).await;
    let events = sse.take(2).await;
    // Nothing in the payload could start a field or an event of its own.
    assert_eq!(events[0].event, "data");
    assert_eq!(
        events[0].data_lines,
        [
            "line1",
            "event: control",
            "data: {\"streamClosed\":true}",
            "",
            "line5"
        ]
    );
    assert_eq!(events[1].event, "control");
    assert!(!events[1].is_closing_control());
    let raw = String::from_utf8(sse.raw.clone()).unwrap();
    assert!(
        raw.contains("data:line1\ndata:event: control\ndata:data: {"),
        "{raw:?}"
    );
    assert!(!raw.contains('\r'), "{raw:?}");
}

#[tokio::test]
async fn sse_base64_encodes_binary_streams() {
    let app = spawn_app(test_config()).await;
    app.create("bin", "application/octet-stream").await;
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    app.append("bin", "application/octet-stream", all_bytes.clone())
        .await;
    app.append("bin", "application/octet-stream", b"\r\n\n\r".to_vec())
        .await;
    app.append("bin", "application/octet-stream", vec![0xffu8])
        .await;

    let response = app
        .client
        .get(sse_url(&app, "bin", "-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "stream-sse-data-encoding"), "base64");
    let mut sse = SseReader::new(response);
    // The backlog is one data event: complete, padded base64 of all of it.
    let events = sse.take(2).await;
    assert_eq!(events[0].event, "data");
    assert_eq!(events[1].event, "control");
    let text: String = events[0].data_lines.concat();
    assert_eq!(text.len() % 4, 0, "{text}");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&text)
        .expect("standard base64");
    let mut expected = all_bytes;
    expected.extend_from_slice(b"\r\n\n\r\xff");
    assert_eq!(decoded, expected);
    // Control events are never encoded.
    assert_eq!(events[1].control()["streamNextOffset"], offset(261));
}

#[tokio::test]
async fn sse_text_like_types_are_not_encoded() {
    let app = spawn_app(test_config()).await;
    for (name, content_type) in [
        ("csv", "text/csv"),
        ("json", "application/json; charset=utf-8"),
    ] {
        app.create(name, content_type).await;
        let response = app
            .client
            .get(sse_url(&app, name, "-1"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            maybe_header(&response, "stream-sse-data-encoding"),
            None,
            "{content_type}"
        );
    }
}

#[tokio::test]
async fn sse_json_data_events_are_arrays() {
    let app = spawn_app(test_config()).await;
    app.create("js", "application/json").await;
    app.append("js", "application/json", r#"[{"a":1},{"b":"x\ny"}]"#)
        .await;
    app.append("js", "application/json", r#"{"c":3}"#).await;
    let mut sse = open_sse(&app.client, &sse_url(&app, "js", "-1")).await;
    // The backlog of both appends is one array.
    let events = sse.take(2).await;
    assert_eq!(events[0].event, "data");
    let value: serde_json::Value = serde_json::from_str(&events[0].data()).unwrap();
    assert_eq!(value, serde_json::json!([{"a":1},{"b":"x\ny"},{"c":3}]));
    assert_eq!(events[1].event, "control");
    assert_eq!(events[1].control()["upToDate"], true);

    // A live append is an array of its own.
    app.append("js", "application/json", r#"{"d":4}"#).await;
    let events = sse.take(2).await;
    let value: serde_json::Value = serde_json::from_str(&events[0].data()).unwrap();
    assert_eq!(value, serde_json::json!([{"d":4}]));
}

#[tokio::test]
async fn sse_delivers_final_data_then_closing_control_then_ends() {
    let app = spawn_app(test_config()).await;
    app.create("close", "text/plain").await;
    let mut sse = open_sse(&app.client, &sse_url(&app, "close", "-1")).await;
    let first = sse.next_event().await.unwrap();
    assert_eq!(first.control()["upToDate"], true);

    let last = app
        .client
        .post(app.url("close"))
        .header("content-type", "text/plain")
        .header("stream-closed", "true")
        .body("bye")
        .send()
        .await
        .unwrap();
    assert_eq!(last.status(), 204);
    let events = sse.rest().await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].data(), "bye");
    let control = events[1].control();
    assert_eq!(control["streamClosed"], true);
    assert_eq!(control["streamNextOffset"], offset(3));
    assert!(control.get("streamCursor").is_none(), "{control}");
}

#[tokio::test]
async fn sse_on_a_closed_stream_at_its_end_is_a_single_closing_control() {
    let app = spawn_app(test_config()).await;
    app.create("shut", "text/plain").await;
    let tail = app.append("shut", "text/plain", "x").await;
    let close = app
        .client
        .post(app.url("shut"))
        .header("stream-closed", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(close.status(), 204);
    for from in [tail.as_str(), "now"] {
        let mut sse = open_sse(&app.client, &sse_url(&app, "shut", from)).await;
        let events = sse.rest().await;
        assert_eq!(events.len(), 1, "{events:?}");
        let control = events[0].control();
        assert_eq!(control["streamClosed"], true);
        assert_eq!(control["upToDate"], true);
        assert_eq!(control["streamNextOffset"], tail);
    }
    // From the start: the data, then the closing control.
    let mut sse = open_sse(&app.client, &sse_url(&app, "shut", "-1")).await;
    let events = sse.rest().await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].data(), "x");
    assert!(events[1].is_closing_control());
}

#[tokio::test]
async fn sse_cursor_moves_past_an_echoed_one() {
    let app = spawn_app(test_config()).await;
    app.create("cur", "text/plain").await;
    let mut sse = open_sse(&app.client, &sse_url(&app, "cur", "-1")).await;
    let cursor: u64 = sse.next_event().await.unwrap().control()["streamCursor"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut again = open_sse(
        &app.client,
        &format!("{}&cursor={cursor}", sse_url(&app, "cur", "-1")),
    )
    .await;
    let next: u64 = again.next_event().await.unwrap().control()["streamCursor"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(next > cursor, "{next} vs {cursor}");
}

#[tokio::test]
async fn sse_ends_after_the_reconnect_interval_without_closing() {
    let mut config = test_config();
    config.transport.connection.sse_reconnect_interval_secs = 1;
    let app = spawn_app(config).await;
    app.create("cdn", "text/plain").await;
    app.append("cdn", "text/plain", "x").await;
    let mut sse = open_sse(&app.client, &sse_url(&app, "cdn", "-1")).await;
    let events = sse.rest().await;
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| !e.is_closing_control()), "{events:?}");
    assert_eq!(events[0].data(), "x");
    // The stream itself goes on.
    let head = app.client.head(app.url("cdn")).send().await.unwrap();
    assert_eq!(maybe_header(&head, "stream-closed"), None);
}

#[tokio::test(start_paused = true)]
async fn sse_sends_keep_alive_controls_while_idle() {
    // Paused time: the runtime jumps to the next timer whenever every task
    // waits, so the 15 s keep-alive arrives without a real 15 s wait. (The
    // reader is a raw socket: reqwest's body channel does not make progress
    // under a paused clock.)
    let mut config = test_config();
    config.transport.connection.sse_reconnect_interval_secs = 0;
    let app = spawn_app(config).await;
    app.create("idle", "text/plain").await;
    let tail = app.append("idle", "text/plain", "x").await;
    let target = format!("{}?offset=now&live=sse", app.path("idle"));
    let mut sse = open_sse_raw(app.addr, &target)
        .await
        .with_guard(Duration::from_secs(120));
    let first = sse.next_event().await.unwrap();
    assert_eq!(first.control()["streamNextOffset"], tail);
    let started = tokio::time::Instant::now();
    for _ in 0..2 {
        let keep_alive = sse.next_event().await.expect("connection stays open");
        let control = keep_alive.control();
        assert_eq!(control["streamNextOffset"], tail);
        assert_eq!(control["upToDate"], true);
        assert!(control.get("streamClosed").is_none());
        assert_cursor(control["streamCursor"].as_str().unwrap());
    }
    assert!(started.elapsed() >= Duration::from_secs(15));
    // The connection is still live for data.
    app.append("idle", "text/plain", "y").await;
    let events = sse.take(2).await;
    assert_eq!(events[0].data(), "y");
}

#[tokio::test]
async fn sse_ends_when_the_stream_is_deleted() {
    let app = spawn_app(test_config()).await;
    app.create("gone", "text/plain").await;
    let mut sse = open_sse(&app.client, &sse_url(&app, "gone", "-1")).await;
    sse.next_event().await.unwrap();
    let deleted = app.client.delete(app.url("gone")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let events = sse.rest().await;
    assert!(
        events.iter().all(|e| !e.is_closing_control()),
        "a deleted stream is not a closed one: {events:?}"
    );
}

#[tokio::test]
async fn drain_releases_live_readers_without_claiming_closure() {
    // The listener keeps accepting for a moment, as in production, so the
    // long-poll below reaches the server however the scheduler runs.
    let drain = durable_streams_server::server::DrainTiming {
        delay: Duration::from_secs(5),
        timeout: Duration::from_secs(10),
    };
    let mut app = spawn_app_full(patient_config(), None, drain).await;
    app.create("drain", "text/plain").await;
    let tail = app.append("drain", "text/plain", "x").await;
    let mut sse = open_sse(&app.client, &sse_url(&app, "drain", "-1")).await;
    sse.take(2).await;
    let poll = tokio::spawn(app.client.get(long_poll_url(&app, "drain", &tail)).send());

    app.begin_shutdown();
    let events = sse.rest().await;
    let last = events.last().expect("a last control before the end");
    let control = last.control();
    assert_eq!(control["streamNextOffset"], tail);
    assert!(control.get("streamClosed").is_none(), "{control}");

    let response = tokio::time::timeout(HANG_GUARD, poll)
        .await
        .expect("long-poll not released by the drain")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(maybe_header(&response, "stream-closed"), None);
    assert_eq!(header(&response, "stream-next-offset"), tail);
    app.stopped().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_of_a_busy_stream_gets_every_message_once_and_in_order() {
    // Hundreds of subscribers on one stream, appended to while they are
    // being written to (on a multi-thread runtime the server writes live
    // responses on threads of their own): a subscriber woken late reads
    // everything since in one go, and none may miss, repeat or reorder a
    // message.
    const SUBSCRIBERS: usize = 300;
    const MESSAGES: usize = 200;
    // No reconnect interval: on a loaded machine the whole run may outlast
    // any interval, and a response ended by it is not a missed message.
    let mut config = test_config();
    config.transport.connection.sse_reconnect_interval_secs = 0;
    let app = spawn_app(config).await;
    app.create("busy", "text/plain").await;
    let target = format!("{}?offset=now&live=sse", app.path("busy"));
    let mut collectors = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let mut sse = open_sse_raw(app.addr, &target).await;
        let first = sse.next_event().await.expect("the first control event");
        assert_eq!(first.event, "control");
        collectors.push(tokio::spawn(async move {
            // A data event holds every message since the last one sent.
            let mut received = String::with_capacity(MESSAGES * 5);
            while received.len() < MESSAGES * 5 {
                let event = sse.next_event().await.expect("the response stays open");
                if event.event == "data" {
                    received.push_str(&event.data());
                }
            }
            received
        }));
    }
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("m{i:04}")).collect();
    for message in &expected {
        app.append("busy", "text/plain", message.clone()).await;
    }
    let expected = expected.concat();
    for collector in collectors {
        assert_eq!(collector.await.expect("collector"), expected);
    }
}
