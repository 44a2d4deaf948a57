//! permessage-deflate (RFC 7692) against a real daemon on a real socket, on both I/O drivers.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{daemon, wait_until, Client};
use shardcast::protocol::deflate::{Compressor, Inflater};
use shardcast::protocol::frame::OpCode;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

both_drivers!(
    compressed_both_ways_and_plain_clients_get_plain,
    compressor_runs_once_for_1000_clients,
    rsv1_without_extension_is_1002,
    corrupt_deflate_gets_1007,
    inflated_size_is_bounded_1009,
    dedicated_mode_keeps_context,
    disabled_compression_declines_offer,
);

fn json(n: usize) -> String {
    let mut s = String::from("[");
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"user\":\"user-{i}\",\"x\":{},\"y\":{},\"color\":\"#ff8800\"}}",
            i * 3,
            i * 7
        ));
    }
    s.push(']');
    s
}

fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    Inflater::new(15)
        .inflate(payload, 1 << 24, true, &mut out)
        .expect("valid deflate");
    out.to_vec()
}

fn compressed_both_ways_and_plain_clients_get_plain(driver: &str) {
    let d = daemon(driver, "shards = 2\n");
    let (mut a, head) = Client::connect_with(d.local_addr(), "/ws/z", OFFER);
    assert!(
        head.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover"),
        "{head}"
    );
    let (mut b, head_b) = Client::connect_with(d.local_addr(), "/ws/z", "");
    assert!(!head_b.contains("Sec-WebSocket-Extensions"));
    wait_until(Duration::from_secs(5), "2 connections", || {
        d.stats().snapshot().connections == 2
    });

    // The client keeps its compression context between messages (no client_no_context_takeover
    // was agreed): the daemon must inflate with a per-connection context.
    let mut comp = Compressor::new(6, 15);
    let doc = json(40);
    for round in 0..2 {
        let mut z = Vec::new();
        comp.compress(doc.as_bytes(), false, &mut z);
        a.send_compressed(OpCode::Text, &z);
        let fa = a.recv().unwrap();
        assert!(
            fa.rsv1,
            "round {round}: deflate client gets the compressed variant"
        );
        assert!(fa.payload.len() < doc.len() / 2);
        assert_eq!(inflate(&fa.payload), doc.as_bytes());
        let fb = b.recv().unwrap();
        assert!(!fb.rsv1, "plain client gets plain frames");
        assert_eq!((fb.opcode, fb.payload.as_slice()), (0x1, doc.as_bytes()));
    }
    // Below the threshold: uncompressed frames, also for the deflate client.
    b.send_text("hi");
    let fa = a.recv().unwrap();
    assert!(!fa.rsv1);
    assert_eq!(fa.payload, b"hi");
    assert_eq!(b.recv().unwrap().payload, b"hi");
    let s = d.stats().snapshot();
    assert_eq!(s.inflations, 2);
    assert_eq!(s.compressions, 2);
    d.stop().unwrap();
}

fn compressor_runs_once_for_1000_clients(driver: &str) {
    common::raise_nofile();
    let d = daemon(driver, "shards = 2\n");
    let addr = d.local_addr();
    let mut clients: Vec<Client> = (0..1000)
        .map(|_| Client::connect_with(addr, "/ws/many", OFFER).0)
        .collect();
    wait_until(Duration::from_secs(10), "1000 connections", || {
        d.stats().snapshot().connections == 1000
    });
    let per_shard = d.stats().connections_per_shard();
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "clients on both shards: {per_shard:?}"
    );
    let doc = json(20); // about 1 KiB
    assert!((900..1300).contains(&doc.len()), "{}", doc.len());
    clients[0].send_text(&doc);
    for (i, c) in clients.iter_mut().enumerate() {
        let f = c.recv().unwrap();
        assert!(f.rsv1, "client {i}");
        assert_eq!(inflate(&f.payload), doc.as_bytes(), "client {i}");
    }
    assert_eq!(
        d.stats().snapshot().compressions,
        1,
        "one broadcast, one compressor run"
    );
    d.stop().unwrap();
}

fn rsv1_without_extension_is_1002(driver: &str) {
    let d = daemon(driver, "");
    let mut c = Client::connect(d.local_addr(), "/ws/r");
    c.send_compressed(OpCode::Text, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    assert_eq!(c.expect_close(), 1002);
    // RSV1 on a control frame is a protocol error even with the extension.
    let (mut c, _) = Client::connect_with(d.local_addr(), "/ws/r", OFFER);
    c.send_compressed(OpCode::Ping, &[]);
    assert_eq!(c.expect_close(), 1002);
    d.stop().unwrap();
}

fn corrupt_deflate_gets_1007(driver: &str) {
    let d = daemon(driver, "");
    let (mut c, _) = Client::connect_with(d.local_addr(), "/ws/r", OFFER);
    c.send_compressed(OpCode::Binary, &[0xff, 0xff, 0xff, 0x00, 0x13]);
    assert_eq!(c.expect_close(), 1007);
    // Valid deflate, but the text inside is not UTF-8.
    let (mut c, _) = Client::connect_with(d.local_addr(), "/ws/r", OFFER);
    let mut z = Vec::new();
    Compressor::new(1, 15).compress(&[0xce, 0xba, 0xff, 0xfe], true, &mut z);
    c.send_compressed(OpCode::Text, &z);
    assert_eq!(c.expect_close(), 1007);
    d.stop().unwrap();
}

fn inflated_size_is_bounded_1009(driver: &str) {
    let d = daemon(
        driver,
        "[limits]\nmax_message_bytes = 65536\nmax_frame_bytes = 65536\n",
    );
    let (mut c, _) = Client::connect_with(d.local_addr(), "/ws/r", OFFER);
    let mut z = Vec::new();
    Compressor::new(9, 15).compress(&vec![b'a'; 65537], true, &mut z);
    assert!(z.len() < 1024);
    c.send_compressed(OpCode::Text, &z);
    assert_eq!(c.expect_close(), 1009);
    d.stop().unwrap();
}

fn dedicated_mode_keeps_context(driver: &str) {
    let d = daemon(driver, "[compression]\nmode = \"dedicated\"\n");
    let (mut c, head) = Client::connect_with(d.local_addr(), "/ws/r", OFFER);
    assert!(
        head.contains("Sec-WebSocket-Extensions: permessage-deflate"),
        "{head}"
    );
    assert!(
        !head.contains("server_no_context_takeover"),
        "dedicated mode keeps its context: {head}"
    );
    let doc = json(20);
    let mut inf = Inflater::new(15);
    let mut sizes = Vec::new();
    for _ in 0..2 {
        c.send_text(&doc);
        let f = c.recv().unwrap();
        assert!(f.rsv1);
        sizes.push(f.payload.len());
        let mut out = BytesMut::new();
        inf.inflate(&f.payload, 1 << 20, false, &mut out).unwrap();
        assert_eq!(&out[..], doc.as_bytes());
    }
    assert!(
        sizes[1] < sizes[0] / 2,
        "the second copy refers back to the first: {sizes:?}"
    );
    d.stop().unwrap();
}

fn disabled_compression_declines_offer(driver: &str) {
    let d = daemon(driver, "[compression]\nenabled = false\n");
    let (mut c, head) = Client::connect_with(d.local_addr(), "/ws/r", OFFER);
    assert!(!head.contains("Sec-WebSocket-Extensions"), "{head}");
    c.send_text(&json(30));
    assert!(!c.recv().unwrap().rsv1);
    d.stop().unwrap();
}
